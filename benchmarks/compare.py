"""Print the speed comparison table (ours vs VisualBERT, utilisation, retrieval, data) in one command.

.venv/bin/python -m benchmarks.compare            # BERT-base sizes (minutes on a 2-core CPU)
.venv/bin/python -m benchmarks.compare --quick    # tiny sizes (seconds): checks the code, not the speed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.speed import Sizes, run_all, tiny_sizes, to_markdown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (2 layers, hidden 64, 6 regions)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--reps", type=int, default=3, help="timed steps per setting, interleaved across settings"
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--json", default=None, help="also write the raw report here")
    args = ap.parse_args(argv)
    sizes = tiny_sizes(args.batch_size) if args.quick else Sizes(batch=args.batch_size)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    report = run_all(sizes, reps=args.reps, warmup=args.warmup, precisions=precisions,
                     retrieval_reps=1 if args.quick else 2, store_records=20 if args.quick else 100)  # fmt: skip
    print(to_markdown(report), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
