"""Errors a user can act on: each names the file, the record and what was expected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class GenrecError(Exception):
    """An error the CLI prints as one line and exits non-zero on."""


class DataError(GenrecError):
    """Bad input data: carries the file, the record and the expectation."""

    def __init__(self, path: str | Path | None, record: str | int | None, expected: str):
        self.path = str(path) if path is not None else None
        self.record = record
        self.expected = expected
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if record is not None:
            parts.append(f"record {record}" if isinstance(record, int) else str(record))
        parts.append(expected)
        super().__init__(": ".join(parts))


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a file that does not parse is a :class:`DataError` naming its line."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", f"invalid JSON ({e.msg})") from None
