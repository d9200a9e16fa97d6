"""Generic CSV / TSV / Parquet: an interactions table (user, item, timestamp; optional rating,
review) and an optional item table (item id plus text columns).

Default file names are ``interactions.{csv,tsv,parquet}`` and ``items.{csv,tsv,parquet}``;
options ``interactions``, ``items``, ``user_col``, ``item_col``, ``time_col`` change them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.raw import RawData, items_frame, numeric_column
from genrec.errors import DataError

FORMAT = "tabular"
_EXTS = (".csv", ".tsv", ".parquet")


def _find(folder: Path, stem: str) -> Path | None:
    for ext in _EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def detect(folder: Path) -> bool:
    return _find(folder, "interactions") is not None


def _read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """Read a table as strings (CSV/TSV) or typed (Parquet); return it and the first data line number."""
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path), 0
        sep = "\t" if path.suffix == ".tsv" else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8"), 2
    except pd.errors.ParserError as e:
        raise DataError(path, None, f"malformed table ({e})") from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "line 1", "expected a header line naming the columns") from None
    except (OSError, ValueError) as e:
        raise DataError(path, None, f"could not read the table ({e})") from None


def _require(df: pd.DataFrame, path: Path, cols: tuple[str, ...]) -> None:
    for col in cols:
        if col not in df.columns:
            raise DataError(path, "header", f"expected a column {col!r}; found {', '.join(map(str, df.columns))}")


def _timestamps(col: pd.Series, recs: pd.Series, path: Path, describe) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        return (col.astype("datetime64[ns]").astype("int64") / 1e9).to_numpy(dtype=np.float64)
    return numeric_column(col, recs, path, "timestamp", describe)


def load(
    path: Path,
    interactions: str | None = None,
    items: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    **_: object,
) -> RawData:
    folder = path if path.is_dir() else path.parent
    if interactions:
        inter_path = folder / interactions
    elif path.is_file():
        inter_path = path
    else:
        inter_path = _find(folder, "interactions")
    if inter_path is None or not inter_path.is_file():
        raise DataError(folder, None, "expected an interactions table interactions.csv, .tsv or .parquet")
    df, first = _read_table(inter_path)
    _require(df, inter_path, (user_col, item_col, time_col))
    if first:
        recs = pd.Series(np.arange(first, first + len(df)))
        describe = lambda r: f"line {r}"  # noqa: E731
    else:
        recs = pd.Series(np.arange(len(df)))
        describe = lambda r: f"row {r}"  # noqa: E731
    inter = pd.DataFrame(
        {
            "user_id": df[user_col].astype(str).to_numpy(),
            "item_id": df[item_col].astype(str).to_numpy(),
            "timestamp": _timestamps(df[time_col], recs, inter_path, describe),
            "_rec": recs.to_numpy(),
        }
    )
    if "rating" in df.columns:
        inter["rating"] = numeric_column(df["rating"], recs, inter_path, "rating", describe)
    if "review" in df.columns:
        inter["review"] = df["review"].fillna("").astype(str).to_numpy()
    files = [str(inter_path)]
    items_df, items_path = None, None
    item_path = folder / items if items else _find(folder, "items")
    if item_path is not None:
        if not item_path.is_file():
            raise DataError(item_path, None, "no such item table")
        idf, _ = _read_table(item_path)
        _require(idf, item_path, (item_col,))
        idf = idf.rename(columns={item_col: "item_id"})
        items_df = items_frame(idf.to_dict("records"), item_path)
        items_path = str(item_path)
        files.append(str(item_path))
    return RawData(
        interactions=inter,
        items=items_df,
        format=FORMAT,
        interactions_path=str(inter_path),
        items_path=items_path,
        record_kind="line" if first else "row",
        files=files,
    )
