"""RecBole atomic files: ``X.inter`` and optional ``X.item``, tab-separated, typed header
(``user_id:token  item_id:token  rating:float  timestamp:float``)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from genrec.data.raw import RawData, items_frame, numeric_column
from genrec.errors import DataError

FORMAT = "recbole"

_TITLE = ("title", "movie_title", "item_name", "name")
_CATEGORIES = ("categories", "category", "class", "genre", "genres")
_DESCRIPTION = ("description", "desc")


def _find(folder: Path, suffix: str) -> Path | None:
    found = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())
    return found[0] if found else None


def detect(folder: Path) -> bool:
    inter = _find(folder, ".inter")
    if inter is None:
        return False
    with open(inter, encoding="utf-8", errors="replace") as f:
        return ":" in f.readline()


def _read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read an atomic file into strings; return the frame and {field: type}."""
    try:
        df = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8"
        )
    except pd.errors.ParserError as e:
        raise DataError(path, None, f"malformed tab-separated file ({e})") from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "line 1", "expected a typed header such as 'user_id:token'") from None
    types = {}
    for col in df.columns:
        name, _, typ = col.partition(":")
        if not typ:
            raise DataError(path, "line 1", f"expected typed header fields 'name:type', found {col!r}")
        types[name] = typ
    df.columns = list(types)
    return df, types


def _require(df: pd.DataFrame, path: Path, cols: tuple[str, ...]) -> None:
    for col in cols:
        if col not in df.columns:
            raise DataError(path, "line 1 (header)", f"expected a column {col!r}; found {', '.join(df.columns)}")


def load(path: Path, **options) -> RawData:
    folder = path if path.is_dir() else path.parent
    inter_path = path if path.is_file() and path.suffix == ".inter" else _find(folder, ".inter")
    if inter_path is None:
        raise DataError(folder, None, "expected a RecBole file *.inter")
    df, _ = _read_atomic(inter_path)
    _require(df, inter_path, ("user_id", "item_id", "timestamp"))
    recs = pd.Series(range(2, len(df) + 2))  # line numbers; the header is line 1
    describe = lambda r: f"line {r}"  # noqa: E731
    inter = pd.DataFrame(
        {
            "user_id": df["user_id"].astype(str),
            "item_id": df["item_id"].astype(str),
            "timestamp": numeric_column(df["timestamp"], recs, inter_path, "timestamp", describe),
            "_rec": recs.to_numpy(),
        }
    )
    if "rating" in df.columns:
        inter["rating"] = numeric_column(df["rating"], recs, inter_path, "rating", describe)
    files = [str(inter_path)]
    items_df, items_path = None, None
    item_path = inter_path.with_suffix(".item")
    if item_path.is_file():
        idf, types = _read_atomic(item_path)
        _require(idf, item_path, ("item_id",))
        rows = []
        for rec in idf.to_dict("records"):
            row = {"item_id": rec["item_id"]}
            extra = []
            for k, v in rec.items():
                if k == "item_id":
                    continue
                if k in _TITLE and "title" not in row:
                    row["title"] = v
                elif k in _CATEGORIES and "categories" not in row:
                    row["categories"] = ",".join(v.split()) if types[k] == "token_seq" else v
                elif k in _DESCRIPTION and "description" not in row:
                    row["description"] = v
                elif k == "brand":
                    row["brand"] = v
                else:
                    row[k] = v
                    if v:
                        extra.append(f"{k.replace('_', ' ')}: {v}")
            if "description" not in row:
                row["description"] = "; ".join(extra)
            rows.append(row)
        items_df = items_frame(rows, item_path)
        items_path = str(item_path)
        files.append(str(item_path))
    return RawData(
        interactions=inter,
        items=items_df,
        format=FORMAT,
        interactions_path=str(inter_path),
        items_path=items_path,
        files=files,
    )
