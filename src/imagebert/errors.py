"""One error type for bad user input, so every reader reports the same three facts: where, which record, which field."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad input data. The message names the file, the line or record, and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike | None = None,
        record: int | str | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.record = record
        self.field = field
        self.reason = message
        where = []
        if self.path is not None:
            where.append(self.path)
        if record is not None:
            where.append(f"record {record}" if not isinstance(record, int) else f"line/record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
