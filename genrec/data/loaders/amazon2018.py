"""Amazon Reviews 2018 (and the older 2014 dumps): ``<Category>.json(.gz)`` plus ``meta_<Category>.json(.gz)``.

Both files hold one object per line. Reviews carry ``reviewerID``, ``asin``,
``unixReviewTime`` (seconds), ``overall`` and optionally ``summary`` / ``reviewText``. Metadata
carries ``asin``, ``title``, ``description``, ``brand`` and ``category`` (2018: a list of
strings) or ``categories`` (2014: a list of lists). The 2014 metadata is written as Python
literals, so a line that is not JSON is read with :func:`ast.literal_eval`.

The file-finding, line-parsing and text-cleaning helpers here are shared with
:mod:`genrec.data.loaders.amazon2023`.
"""

from __future__ import annotations

import ast
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.raw import RawData, items_frame, iter_lines, join_text, numeric_column
from genrec.errors import DataError

FORMAT = "amazon2018"

#: File endings of this format, most specific first.
SUFFIXES = (".json.gz", ".json")
#: Stems that belong to another format (LC-Rec style ``X.inter.json`` / ``X.item.json``).
FOREIGN_STEM_ENDINGS = (".inter", ".item")

_TAG = re.compile(r"</?[A-Za-z!][^<>]*>")
_SPACE = re.compile(r"\s+")


# ---------------------------------------------------------------- line parsing


def parse_object(line: str, path: Path, n: int) -> dict:
    """Parse one line as a JSON object, falling back to a Python literal; DataError otherwise."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(
                path,
                f"line {n}",
                f"expected one JSON object per line (not valid JSON: {err.msg} at column {err.colno}; "
                "the line may be truncated)",
            ) from None
    if not isinstance(obj, dict):
        raise DataError(
            path, f"line {n}", f"expected one JSON object per line (found a {type(obj).__name__})"
        )
    return obj


def read_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for every non-blank line of a (gzipped) file."""
    for n, line in iter_lines(path):
        yield n, parse_object(line, path, n)


def require(obj: dict, fields: tuple[str, ...], path: Path, n: int, what: str) -> None:
    """Raise a DataError naming the first of ``fields`` missing (or null) in ``obj``."""
    for name in fields:
        if obj.get(name) is None:
            raise DataError(path, f"line {n}", f"{what} is missing the required field {name!r}")


def first_object(path: Path, strict: bool = False) -> dict | None:
    """The first non-blank line of ``path`` as an object, or None if unreadable or not an object.

    With ``strict``, a first line that is not an object raises its DataError instead.
    """
    try:
        for n, line in iter_lines(path):
            return parse_object(line, path, n)
    except (OSError, EOFError, UnicodeDecodeError):
        return None
    except DataError:
        if strict:
            raise
        return None
    return None


# ---------------------------------------------------------------- text cleaning


def clean_text(value: object) -> str:
    """Flatten ``value`` to one string, drop HTML tags, unescape entities and collapse whitespace."""
    text = _TAG.sub(" ", join_text(value))
    return _SPACE.sub(" ", html.unescape(text)).strip()


def categories_text(value: object) -> str:
    """Categories as one comma-joined string: first list of a nested list, cleaned, de-duplicated."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], list | tuple):
            value = value[0]
        names = [clean_text(v) for v in value]
    else:
        names = [clean_text(value)]
    return ",".join(dict.fromkeys(n for n in names if n))


def review_text(title: object, body: object) -> str:
    """A review's headline and body joined with ". " (empty string when both are absent)."""
    return ". ".join(p for p in (join_text(title), join_text(body)) if p)


# ---------------------------------------------------------------- frames


def _describe_line(rec: object) -> str:
    return f"line {int(rec)}"  # type: ignore[call-overload]


def interactions_frame(
    cols: dict[str, list], path: Path, time_field: str, rating_field: str, time_scale: float = 1.0
) -> pd.DataFrame:
    """Build the interaction table from column lists (``user_id``, ``item_id``, ``timestamp``,
    ``rating``, ``review``, ``_rec``), checking timestamps and ratings are numeric."""
    recs = pd.Series(cols["_rec"], dtype=np.int64)
    times = numeric_column(pd.Series(cols["timestamp"], dtype=object), recs, path, time_field, _describe_line)
    raw_ratings = pd.Series(cols["rating"], dtype=object)
    present = raw_ratings.notna().to_numpy()
    ratings = np.full(len(raw_ratings), np.nan)
    if present.any():
        ratings[present] = numeric_column(
            raw_ratings[present], recs[present], path, rating_field, _describe_line
        )
    return pd.DataFrame(
        {
            "user_id": pd.Series(cols["user_id"], dtype=object).astype(str),
            "item_id": pd.Series(cols["item_id"], dtype=object).astype(str),
            "timestamp": times / time_scale if time_scale != 1.0 else times,
            "rating": ratings,
            "review": pd.Series(cols["review"], dtype=object).astype(str),
            "_rec": recs,
        }
    )


# ---------------------------------------------------------------- finding files


def strip_suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    """``name`` without one of ``suffixes``, or None when it has none of them or is another format's."""
    for suffix in suffixes:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if not stem or stem.endswith(FOREIGN_STEM_ENDINGS):
                return None
            return stem
    return None


def review_category(path: Path, suffixes: tuple[str, ...]) -> tuple[str, bool]:
    """(category, is 5-core) of a reviews file name such as ``Beauty_5.json.gz`` or ``reviews_Beauty.json``."""
    stem = strip_suffix(path.name, suffixes) or path.name
    stem = stem.removeprefix("reviews_")
    if stem.endswith("_5"):
        return stem[:-2], True
    return stem, False


def meta_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``meta_*`` files with one of ``suffixes`` in ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.startswith("meta_") and strip_suffix(p.name, suffixes)
    )


def review_files(
    folder: Path, suffixes: tuple[str, ...], keys: tuple[str, ...], strict: bool = False
) -> list[Path]:
    """Files in ``folder`` with one of ``suffixes`` whose first line is an object holding all ``keys``.

    With ``strict``, a candidate whose first line does not parse raises that line's DataError.
    """
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("meta_") or strip_suffix(p.name, suffixes) is None:
            continue
        obj = first_object(p, strict)
        if obj is not None and all(k in obj for k in keys):
            found.append(p)
    return found


def _given(folder: Path, name: str, role: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DataError(path, None, f"no such file (named as the {role} file)")
    return path


def pick_files(
    path: Path,
    reviews: str | None,
    meta: str | None,
    suffixes: tuple[str, ...],
    keys: tuple[str, ...],
    fmt: str,
) -> tuple[Path, Path | None]:
    """Choose the reviews file and the optional metadata file for ``path`` (a folder or one file).

    Explicit ``reviews`` / ``meta`` names (relative to the folder, or absolute) win. Otherwise the
    reviews file is the one whose first line holds ``keys``, the full file before a ``_5`` one,
    and the metadata file is ``meta_<same category>``, or the only ``meta_*`` file present.
    """
    folder = path
    if path.is_file():
        folder = path.parent
        if path.name.startswith("meta_"):
            meta = meta or str(path)
        else:
            reviews = reviews or str(path)
    given_meta = _given(folder, meta, "metadata") if meta is not None else None
    metas = meta_files(folder, suffixes)

    if reviews is not None:
        review_path = _given(folder, reviews, "reviews")
    else:
        found = review_files(folder, suffixes, keys)
        if not found:
            review_files(folder, suffixes, keys, strict=True)  # a broken first line says why
            raise DataError(
                folder,
                None,
                f"no {fmt} reviews file found (expected <Category>{suffixes[-1]} or <Category>{suffixes[0]} "
                f"with one object per line holding {', '.join(keys)})",
            )
        categories = {review_category(p, suffixes)[0] for p in found}
        if len(categories) > 1:
            hint = given_meta or (metas[0] if len(metas) == 1 else None)
            wanted = (strip_suffix(hint.name, suffixes) or "").removeprefix("meta_") if hint else None
            found = [p for p in found if review_category(p, suffixes)[0] == wanted]
            if not found:
                raise DataError(
                    folder,
                    None,
                    f"several reviews files for different categories ({', '.join(sorted(categories))}); "
                    "name one with the `reviews` option",
                )
        found.sort(key=lambda p: (review_category(p, suffixes)[1], p.name.endswith(".gz"), p.name))
        review_path = found[0]

    if given_meta is not None:
        return review_path, given_meta
    category = review_category(review_path, suffixes)[0]
    matching = [m for m in metas if strip_suffix(m.name, suffixes) == f"meta_{category}"]
    if matching:
        return review_path, sorted(matching, key=lambda p: (p.name.endswith(".gz"), p.name))[0]
    if len(metas) == 1:
        return review_path, metas[0]
    if metas:
        raise DataError(
            folder,
            None,
            f"several metadata files ({', '.join(m.name for m in metas)}) and none is meta_{category}; "
            "name one with the `meta` option",
        )
    return review_path, None


# ---------------------------------------------------------------- the format


def detect(folder: Path) -> bool:
    """True when ``folder`` holds a ``meta_*.json(.gz)`` file or a ``*.json(.gz)`` of reviews."""
    folder = Path(folder)
    return bool(meta_files(folder, SUFFIXES)) or bool(review_files(folder, SUFFIXES, ("reviewerID",)))


def _read_reviews(path: Path) -> pd.DataFrame:
    cols: dict[str, list] = {k: [] for k in ("user_id", "item_id", "timestamp", "rating", "review", "_rec")}
    for n, obj in read_objects(path):
        require(obj, ("reviewerID", "asin", "unixReviewTime"), path, n, "review")
        cols["user_id"].append(obj["reviewerID"])
        cols["item_id"].append(obj["asin"])
        cols["timestamp"].append(obj["unixReviewTime"])
        cols["rating"].append(obj.get("overall"))
        cols["review"].append(review_text(obj.get("summary"), obj.get("reviewText")))
        cols["_rec"].append(n)
    return interactions_frame(cols, path, "unixReviewTime", "overall")


def _read_meta(path: Path) -> pd.DataFrame:
    rows = []
    for n, obj in read_objects(path):
        require(obj, ("asin",), path, n, "metadata record")
        cats = obj.get("categories")
        rows.append(
            {
                "item_id": str(obj["asin"]),
                "title": clean_text(obj.get("title")),
                "description": clean_text(obj.get("description")),
                "brand": clean_text(obj.get("brand")),
                "categories": categories_text(cats if cats else obj.get("category")),
            }
        )
    return items_frame(rows, path)


def load_review_folder(path, reviews, meta, suffixes, keys, fmt, read_reviews, read_meta) -> RawData:
    """The shared body of the Amazon loaders: pick the files, read them, name them in the result."""
    review_path, meta_path = pick_files(Path(path), reviews, meta, suffixes, keys, fmt)
    interactions = read_reviews(review_path)
    items = read_meta(meta_path) if meta_path is not None else None
    files = [str(review_path)] + ([str(meta_path)] if meta_path is not None else [])
    return RawData(
        interactions=interactions,
        items=items,
        format=fmt,
        interactions_path=str(review_path),
        items_path=str(meta_path) if meta_path is not None else None,
        record_kind="line",
        files=files,
    )


def load(path: str | Path, reviews: str | None = None, meta: str | None = None) -> RawData:
    """Read an Amazon 2018/2014 folder (or reviews file); ``reviews`` / ``meta`` name the files explicitly."""
    return load_review_folder(path, reviews, meta, SUFFIXES, ("reviewerID",), FORMAT, _read_reviews, _read_meta)
