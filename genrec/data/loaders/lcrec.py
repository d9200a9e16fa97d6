"""LC-Rec JSON: ``X.inter.json`` ({user: [item, ...]} in chronological order) plus an optional
``X.item.json`` ({item: {title, description, brand, categories}}) or ``X.item2id``
(``ASIN<TAB>item index`` per line, ids only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.raw import RawData, items_frame, join_text
from genrec.errors import DataError

FORMAT = "lcrec"


def _find(folder: Path, suffix: str) -> Path | None:
    found = sorted(folder.glob(f"*{suffix}"))
    return found[0] if found else None


def detect(folder: Path) -> bool:
    return _find(folder, ".inter.json") is not None


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", f"invalid or truncated JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"expected UTF-8 text ({e.reason})") from None


def load(path: Path, **options) -> RawData:
    folder = path if path.is_dir() else path.parent
    inter_path = path if path.is_file() and path.name.endswith(".inter.json") else _find(folder, ".inter.json")
    if inter_path is None:
        raise DataError(folder, None, "expected an LC-Rec file *.inter.json")
    data = _read_json(inter_path)
    if not isinstance(data, dict):
        raise DataError(inter_path, None, "expected a JSON object {user: [item, ...]}")
    users, items, ts, recs = [], [], [], []
    for user, seq in data.items():
        if not isinstance(seq, list) or not all(isinstance(i, int | str) and not isinstance(i, bool) for i in seq):
            raise DataError(inter_path, f"user {user!r}", "expected a list of item ids")
        users.extend([str(user)] * len(seq))
        items.extend(str(i) for i in seq)
        ts.extend(range(len(seq)))
        recs.extend([str(user)] * len(seq))
    inter = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "item_id": pd.Series(items, dtype=object),
            "timestamp": np.asarray(ts, dtype=np.float64),
            "_rec": pd.Series(recs, dtype=object),
        }
    )
    files = [str(inter_path)]
    items_df, items_path = None, None
    stem = inter_path.name[: -len(".inter.json")]
    item_json = folder / f"{stem}.item.json"
    item2id = folder / f"{stem}.item2id"
    if item_json.is_file():
        meta = _read_json(item_json)
        if not isinstance(meta, dict):
            raise DataError(item_json, None, "expected a JSON object {item: {title, description, ...}}")
        rows = []
        for iid, fields in meta.items():
            if not isinstance(fields, dict):
                raise DataError(item_json, f"item {iid!r}", "expected an object with title/description fields")
            row = {"item_id": str(iid)}
            for k, v in fields.items():
                row[k] = join_text(v, "," if k == "categories" else " ")
            rows.append(row)
        items_df, items_path = items_frame(rows, item_json), str(item_json)
        files.append(str(item_json))
    elif item2id.is_file():
        rows = []
        with open(item2id, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise DataError(item2id, f"line {n}", "expected 'ASIN<TAB>item index'")
                rows.append({"item_id": parts[1].strip(), "asin": parts[0].strip()})
        items_df = items_frame(rows, item2id)
        # ids only: no text, so "no title" must not count as missing metadata
        items_df["title"] = ""
        items_path = str(item2id)
        files.append(str(item2id))
    return RawData(
        interactions=inter,
        items=items_df,
        format=FORMAT,
        interactions_path=str(inter_path),
        items_path=items_path,
        record_kind="user",
        files=files,
    )
