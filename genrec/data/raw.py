"""The common in-memory form every loader returns, and helpers loaders share.

A loader reads one on-disk format and returns :class:`RawData`: interactions in file order
with string ids and numeric timestamps, and an optional item table with text fields. All
filtering (k-core, de-duplication, missing items) happens later, in one place
(:mod:`genrec.data.preprocess`), so every format is treated the same.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.errors import DataError

#: Text fields every item table has (empty string when unknown). Extra columns are kept.
TEXT_FIELDS = ("title", "description", "brand", "categories")


@dataclass
class RawData:
    """Interactions and items as read from disk, before any filtering.

    ``interactions`` has columns ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float64),
    ``_rec`` (where the row came from, for error messages) and optionally ``rating`` (float64)
    and ``review`` (str). Rows are in file order; for formats without timestamps the
    timestamp is the position in the user's list, which is already chronological.
    ``items`` has ``item_id`` (str) and :data:`TEXT_FIELDS`, or is ``None`` when the format
    carries no item table.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame | None
    format: str
    interactions_path: str
    items_path: str | None = None
    record_kind: str = "line"  # how ``_rec`` values read: "line" -> "line 12", "user" -> "user '7'"
    files: list[str] = field(default_factory=list)

    def describe_record(self, rec: object) -> str:
        if self.record_kind == "line":
            return f"line {int(rec)}"  # type: ignore[call-overload]
        return f"{self.record_kind} {rec!r}"


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``.gz`` files."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, stripped line) for non-blank lines of a (gzipped) text file."""
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield n, line


def numeric_column(values: pd.Series, recs: pd.Series, path: str | Path, name: str, describe) -> np.ndarray:
    """Convert ``values`` to float64 or raise a DataError naming the first bad record."""
    num = pd.to_numeric(values, errors="coerce")
    bad = num.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(path, describe(recs.iloc[i]), f"{name} {values.iloc[i]!r} is not a number")
    return num.to_numpy(dtype=np.float64)


def join_text(value: object, sep: str = " ") -> str:
    """Flatten the shapes item text comes in (str, list, nested list, None) into one string."""
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple):
        parts = [join_text(v, sep) for v in value]
        return sep.join(p for p in parts if p)
    return str(value).strip()


def items_frame(rows: list[dict], path: str | Path) -> pd.DataFrame:
    """Build an item table from dicts holding ``item_id`` and any text fields: every text field
    present (empty when unknown), columns ordered item_id, text fields, extras; duplicate ids
    keep their first row."""
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(path, None, "expected at least one item in the item table, found none")
    for col in TEXT_FIELDS:
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].fillna("").astype(str)
    df["item_id"] = df["item_id"].astype(str)
    dup = df["item_id"].duplicated(keep="first")
    if dup.any():
        # Later duplicate metadata rows (seen in raw Amazon dumps) are dropped, first wins.
        df = df[~dup]
    rest = [c for c in df.columns if c not in ("item_id", *TEXT_FIELDS)]
    return df[["item_id", *TEXT_FIELDS, *rest]].reset_index(drop=True)
