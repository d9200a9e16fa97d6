"""Errors a user can act on: each names the file, the record and what was expected."""

from __future__ import annotations

from pathlib import Path


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
