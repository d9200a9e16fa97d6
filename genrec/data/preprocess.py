"""One preprocessing path for every format.

Order: attach item metadata (and act on items missing from the item table), sort each user's
interactions chronologically (file order breaks ties), drop repeated user-item pairs
(the first occurrence stays), iterative k-core, then renumber users and items contiguously.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from genrec.data.dataset import LONG_USER_THRESHOLD, Dataset
from genrec.data.loaders import load_raw
from genrec.data.raw import TEXT_FIELDS, RawData
from genrec.errors import DataError


class PrepareConfig(BaseModel):
    """How raw interactions become a dataset."""

    model_config = ConfigDict(extra="forbid")

    kcore: int = Field(5, ge=0, description="iterative k-core on users and items (0 or 1: off)")
    dedup: bool = Field(True, description="drop repeated user-item pairs, keeping the first")
    missing_items: Literal["error", "drop", "keep"] = Field(
        "error",
        description="items absent from the item table (or without a title): "
        "error, drop their interactions, or keep them with empty text",
    )
    max_history: int = Field(LONG_USER_THRESHOLD, ge=1, description="history cap models apply")


def kcore_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of rows that survive iterative k-core on both users and items."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        u, ui = np.unique(users[keep], return_inverse=True)
        i, ii = np.unique(items[keep], return_inverse=True)
        ucount = np.bincount(ui)
        icount = np.bincount(ii)
        ok = (ucount[ui] >= k) & (icount[ii] >= k)
        if ok.all():
            return keep
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False
        if not keep.any():
            return keep


def _check_items(raw: RawData, inter: pd.DataFrame, cfg: PrepareConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Align interactions with the item table according to ``cfg.missing_items``."""
    if raw.items is None:
        ids = pd.unique(inter["item_id"])
        items = pd.DataFrame({"item_id": ids})
        for col in TEXT_FIELDS:
            items[col] = ""
        return inter, items
    items = raw.items
    has_title = items["title"].str.len() > 0
    if cfg.missing_items == "drop" and has_title.any():
        known = set(items["item_id"][has_title])  # a table with text: an untitled item has no metadata
    else:
        known = set(items["item_id"])
    present = inter["item_id"].isin(known).to_numpy()
    if not present.all():
        if cfg.missing_items == "error":
            i = int(np.flatnonzero(~present)[0])
            row = inter.iloc[i]
            where = raw.items_path or "the item table"
            raise DataError(
                raw.interactions_path,
                raw.describe_record(row["_rec"]),
                f"item {row['item_id']!r} is absent from the item table {where} "
                f"({int((~present).sum())} interactions affected; use --missing-items drop or keep)",
            )
        if cfg.missing_items == "drop":
            inter = inter[present]
        else:  # keep: add empty metadata rows for unknown items
            extra = pd.DataFrame({"item_id": pd.unique(inter["item_id"][~present])})
            for col in TEXT_FIELDS:
                extra[col] = ""
            items = pd.concat([items, extra], ignore_index=True)
    return inter, items


def _sorted_ids(ids: np.ndarray) -> np.ndarray:
    """Sort ids numerically when they are all integers (so "10" follows "9"), else as strings."""
    if all(s.isdigit() for s in ids):
        return np.array(sorted(ids, key=int), dtype=str)
    return np.sort(ids)


def preprocess(raw: RawData, cfg: PrepareConfig | None = None) -> Dataset:
    """Turn :class:`RawData` into a :class:`Dataset`, or raise a DataError saying why not."""
    cfg = cfg or PrepareConfig()
    inter = raw.interactions
    if inter.empty:
        raise DataError(raw.interactions_path, None, "expected at least one interaction, found none")
    inter, items = _check_items(raw, inter, cfg)

    # chronological per user; a stable sort keeps file order for equal timestamps
    inter = inter.reset_index(drop=True)
    inter["_order"] = np.arange(len(inter))
    inter = inter.sort_values(["user_id", "timestamp", "_order"], kind="stable")
    if cfg.dedup:
        inter = inter.drop_duplicates(["user_id", "item_id"], keep="first")

    users = inter["user_id"].to_numpy()
    item_ids = inter["item_id"].to_numpy()
    keep = kcore_filter(users, item_ids, cfg.kcore)
    inter = inter[keep]
    if inter.empty:
        raise DataError(
            raw.interactions_path,
            None,
            f"no interactions remain after {cfg.kcore}-core filtering "
            f"({len(raw.interactions)} read); lower --kcore or check the input",
        )

    # contiguous ids: items in order of first appearance in the item table, users sorted
    used = pd.unique(inter["item_id"])
    items = items[items["item_id"].isin(set(used))].reset_index(drop=True)
    item_index = pd.Series(np.arange(len(items)), index=items["item_id"].to_numpy())
    user_ids = _sorted_ids(pd.unique(inter["user_id"]).astype(str))
    user_index = pd.Series(np.arange(len(user_ids)), index=user_ids)

    out = pd.DataFrame(
        {
            "user_idx": user_index.loc[inter["user_id"].to_numpy()].to_numpy(dtype=np.int32),
            "item_idx": item_index.loc[inter["item_id"].to_numpy()].to_numpy(dtype=np.int32),
            "timestamp": inter["timestamp"].to_numpy(dtype=np.float64),
        }
    )
    for col in ("rating", "review"):
        if col in inter.columns:
            out[col] = inter[col].to_numpy()
    out["_order"] = inter["_order"].to_numpy()
    out = out.sort_values(["user_idx", "timestamp", "_order"], kind="stable").drop(columns="_order")

    meta = {
        "source": {"format": raw.format, "files": raw.files or [raw.interactions_path]},
        "prepare": cfg.model_dump(),
        "max_history": cfg.max_history,
        "raw_interactions": int(len(raw.interactions)),
    }
    return Dataset(items, user_ids, out, meta)


def load_dataset(path: str | Path, format: str | None = None, prepare: PrepareConfig | None = None) -> Dataset:
    """A prepared dataset folder, or a raw folder prepared in memory with ``prepare``."""
    if Dataset.is_prepared(path):
        return Dataset.load(path)
    return preprocess(load_raw(path, format), prepare or PrepareConfig())
