"""Print the speed comparison (ours vs VisualBERT on the same work, utilisation, scoring, data) in one command.

Kept as the short name for `benchmarks.speed` (same arguments):

    .venv/bin/python -m benchmarks.compare            # BERT-base sizes (tens of minutes on a 2-core CPU)
    .venv/bin/python -m benchmarks.compare --quick    # tiny sizes (seconds): checks the code, not the speed
"""

from __future__ import annotations

from benchmarks.speed import main

if __name__ == "__main__":
    raise SystemExit(main())
