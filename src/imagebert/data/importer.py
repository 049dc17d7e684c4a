"""Import a feature source into a store: resumable (ids already stored by an earlier run are skipped), atomic (the
store reads as complete only after the last record), and strict by default (the first bad record stops the
import with an InputError; `skip_bad=True` counts each skip by reason and writes the bad records to `rejects`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebert.data.formats import iter_source
from imagebert.data.store import MAX_ID_BYTES, BoxSelection, FeatureStoreWriter, _err
from imagebert.errors import InputError


@dataclass
class ImportReport:
    added: int = 0
    already_present: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    rejects_path: str | None = None

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def import_features(
    fmt: str,
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    box_selection: BoxSelection | None = None,
    dtype: str = "float16",
    skip_bad: bool = False,
    rejects: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    limit: int | None = None,
    allow_empty: bool = False,
) -> ImportReport:
    """Read `sources` in `fmt` into the store at `out`. `limit` stops after that many new records (tests use it
    to simulate an interrupted import: the store is left incomplete).

    A source that yields no usable record is an InputError (the store stays incomplete) unless `allow_empty`.
    An id seen twice is the same error whether its first copy came in this run or an interrupted earlier one
    (ids skipped as already present are remembered for the run: about 100 bytes each)."""
    report = ImportReport(rejects_path=None if rejects is None else str(rejects))
    rejects_file = None
    if rejects is not None:
        Path(rejects).parent.mkdir(parents=True, exist_ok=True)
        rejects_file = open(rejects, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
    writer = FeatureStoreWriter(out, dtype=dtype, box_selection=box_selection)
    interrupted = False
    resumed: set[str] = set()  # ids found stored by an earlier run, seen once in this run's sources
    from imagebert.runtime.progress import Progress

    bar = Progress("features import", unit="records")
    try:
        for item in iter_source(fmt, sources, allow_pickle=allow_pickle, image_sizes=image_sizes):
            bar.update(1)
            try:
                iid = item.image_id
                if iid and len(iid.encode("utf-8")) <= MAX_ID_BYTES and iid in writer:
                    if writer.added_this_run(iid) or iid in resumed:
                        raise _err(
                            f"duplicate image id {iid!r}", item.path, item.record, "image_id", "duplicate_id"
                        )
                    resumed.add(iid)
                    report.already_present += 1
                    continue
                writer.add(item.parse(), path=item.path, where=item.record)
                report.added += 1
            except InputError as exc:
                if not skip_bad:
                    raise
                kind = getattr(exc, "kind", "bad_record")
                report.skipped[kind] += 1
                if rejects_file is not None:
                    entry: dict[str, Any] = {
                        "reason": kind, "path": str(item.path), "record": item.record, "field": exc.field,
                        "message": str(exc), "raw": item.raw,
                    }  # fmt: skip
                    rejects_file.write(json.dumps(entry) + "\n")
            if limit is not None and report.added >= limit:
                interrupted = True
                break
        if not interrupted and not allow_empty and int(writer.meta["stats"]["count"]) == 0:
            skipped = f" ({report.skipped_total} skipped as bad)" if report.skipped_total else ""
            raise InputError(
                f"no records to import{skipped}: the source is empty or holds no usable record; the store was "
                "not marked complete (pass --allow-empty to accept an empty store)",
                path=", ".join(str(s) for s in sources),
            )
    except BaseException:
        writer.close(complete=False)
        raise
    finally:
        bar.close()
        if rejects_file is not None:
            rejects_file.close()
    writer.close(complete=not interrupted)
    return report
