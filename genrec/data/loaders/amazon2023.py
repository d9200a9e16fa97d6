"""Amazon Reviews 2023: ``<Category>.jsonl(.gz)`` plus ``meta_<Category>.jsonl(.gz)``.

Reviews carry ``user_id``, ``parent_asin`` (the item id; ``asin`` names a variant and is
ignored), ``timestamp`` in milliseconds, ``rating`` and optionally ``title`` / ``text``.
Metadata carries ``parent_asin``, ``title``, ``description`` and ``features`` (lists),
``categories`` (a list), ``store`` (the brand) and ``main_category``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from genrec.data.loaders.amazon2018 import (
    categories_text,
    clean_text,
    first_object,
    interactions_frame,
    load_review_folder,
    read_objects,
    require,
    review_text,
    strip_suffix,
)
from genrec.data.raw import RawData, items_frame

FORMAT = "amazon2023"

#: File endings of this format, most specific first.
SUFFIXES = (".jsonl.gz", ".jsonl")
#: Keys the first line of a reviews file holds.
REVIEW_KEYS = ("user_id", "parent_asin")


def detect(folder: Path) -> bool:
    """True when ``folder`` holds a ``*.jsonl(.gz)`` file whose first line has ``parent_asin``."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for p in sorted(folder.iterdir()):
        if p.is_file() and strip_suffix(p.name, SUFFIXES) is not None:
            if "parent_asin" in (first_object(p) or {}):
                return True
    return False


def _read_reviews(path: Path) -> pd.DataFrame:
    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "timestamp", "rating", "review", "_rec")}
    for n, obj in read_objects(path):
        require(obj, ("user_id", "parent_asin", "timestamp"), path, n, "review")
        cols["user_id"].append(obj["user_id"])
        cols["item_id"].append(obj["parent_asin"])
        cols["timestamp"].append(obj["timestamp"])
        cols["rating"].append(obj.get("rating"))
        cols["review"].append(review_text(obj.get("title"), obj.get("text")))
        cols["_rec"].append(n)
    return interactions_frame(cols, path, "timestamp", "rating", time_scale=1000.0)


def _read_meta(path: Path) -> pd.DataFrame:
    rows = []
    for n, obj in read_objects(path):
        require(obj, ("parent_asin",), path, n, "metadata record")
        description = " ".join(
            t for t in (clean_text(obj.get("description")), clean_text(obj.get("features"))) if t
        )
        categories = categories_text(obj.get("categories")) or categories_text(obj.get("main_category"))
        rows.append(
            {
                "item_id": str(obj["parent_asin"]),
                "title": clean_text(obj.get("title")),
                "description": description,
                "brand": clean_text(obj.get("store")),
                "categories": categories,
            }
        )
    return items_frame(rows, path)


def load(path: str | Path, reviews: str | None = None, meta: str | None = None) -> RawData:
    """Read an Amazon 2023 folder (or reviews file); ``reviews`` / ``meta`` name the files explicitly."""
    return load_review_folder(path, reviews, meta, SUFFIXES, REVIEW_KEYS, FORMAT, _read_reviews, _read_meta)
