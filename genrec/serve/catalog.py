"""What the service knows about items and users: the index's items plus those added while serving.

New items get codes from the index's codebooks (no retraining; on an id-level index the cluster
codes, then a new own token past the trained ones), are persisted in the cache store, and join the
trie the next cache build decodes with.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from genrec.data.dataset import Dataset
from genrec.errors import DataError
from genrec.index.base import ItemIndex, codes_to_strings
from genrec.serve.store import CacheStore


class Catalog:
    def __init__(self, index_dir: str | Path, data_dir: str | Path, store: CacheStore, backbone: str | None = None):
        self.index_dir, self.data_dir, self.store = Path(index_dir), Path(data_dir), store
        self.index = ItemIndex.load(self.index_dir)
        ids_file = self.index_dir / "item_ids.json"
        if not ids_file.is_file():
            raise DataError(ids_file, None, "expected the item ids of a built index (`genrec index build`)")
        self.ids: list[str] = [str(i) for i in json.loads(ids_file.read_text())]
        self.ds = Dataset.load(data_dir)
        if self.ds.n_items != len(self.ids):
            raise DataError(data_dir, None, f"expected the dataset the index was built on ({len(self.ids)} items, found {self.ds.n_items})")
        self.n_catalogue = len(self.ids)
        self.backbone = backbone
        self.user_pos = {u: k for k, u in enumerate(self.ds.user_ids.tolist())}
        self.catalogue_pos = {i: k for k, i in enumerate(self.ids)}  # neighbours of new items come from here
        self.codes = [tuple(int(c) for c in row) for row in self.index.codes.tolist()] if self.index.codes is not None else []
        self.added: list[dict] = []
        self.pos: dict[str, int] = {}
        self._indexer = None
        self._embedder = None
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Read the items added to the store (also by other processes) since the last call."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        for rec in self.store.new_items()[len(self.added):]:  # the store's order is the order of record
            codes = tuple(rec["codes"])
            if self.index.id_level:  # the own code is the item's position, which the store's order fixes
                codes = (*codes[:-1], len(self.ids))
            self.added.append(rec)
            self.ids.append(rec["item_id"])
            self.codes.append(codes)
        self.pos = {i: k for k, i in enumerate(self.ids)}

    # lookups ----------------------------------------------------------------------------
    def item(self, item_id: str) -> dict | None:
        k = self.pos.get(item_id)
        if k is None:
            return None
        codes = list(self.codes[k]) if self.codes else None
        if k < self.n_catalogue:
            row = self.ds.items.iloc[k]
            out = {"item_id": item_id, "title": str(row.get("title", "") or ""), "source": "catalogue"}
        else:
            rec = self.added[k - self.n_catalogue]
            out = {"item_id": item_id, "title": rec.get("title", ""), "source": f"added ({rec['source']})",
                   "added_at": rec.get("added_at")}
        out["codes"] = codes
        out["tokens"] = codes_to_strings(np.array([codes]))[0] if codes else self.index.item_strings[k]
        return out

    def history(self, user_id: str) -> np.ndarray | None:
        """Everything the user interacted with, oldest first (what the cache decodes from)."""
        u = self.user_pos.get(user_id)
        return None if u is None else self.ds.sequences[u]

    def popular(self, n: int = 100) -> list[str]:
        counts = np.bincount(np.concatenate(self.ds.sequences), minlength=self.n_catalogue) if self.ds.n_users else np.zeros(0)
        return [self.ids[i] for i in np.argsort(-counts, kind="stable")[:n]]

    def extended_index(self) -> ItemIndex:
        """The index with the added items appended (:meth:`ItemIndex.extended`: the same code
        vocabulary; on an id-level index each added item's own token lies past it)."""
        if not self.added:
            return self.index
        return self.index.extended(np.array(self.codes))

    # new items --------------------------------------------------------------------------
    def _text_embed(self, items, manifest: dict) -> np.ndarray:
        """LLM embeddings of new items' text, as the index's text stage made the catalogue's; the
        embedder is loaded once."""
        from genrec.llm.backbone import TextEmbedder

        if self._embedder is None:
            cfg = manifest["config"]
            self._embedder = TextEmbedder(self.backbone or cfg.get("backbone"), cfg.get("text_layers"))
        return self._embedder(items)

    def add(self, row: dict) -> dict:
        """Codes for a new item from the codebooks, persisted in the store (on an id-level index:
        its cluster codes, then its own code, the item's position). Raises ValueError (bad item),
        KeyError (a duplicate) or GenrecError (an index that cannot give new items codes)."""
        from genrec.index.stage import encode_new_item, load_indexer

        item_id = str(row["item_id"])
        with self._lock:
            if self._indexer is None:
                self._indexer = load_indexer(self.index_dir)
            indexer, manifest = self._indexer
            self._sync()
            if item_id in self.pos:
                raise KeyError(item_id)
            codes, source = encode_new_item(indexer, row, self.catalogue_pos, set(self.codes),
                                            lambda items: self._text_embed(items, manifest),
                                            len(self.ids) if self.index.id_level else None)
            rec = {"item_id": item_id, "title": str(row.get("title") or ""), "description": str(row.get("description") or ""),
                   "codes": list(codes), "source": source, "added_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            added = self.store.add_item(item_id, rec)
            self._sync()
            if not added:  # added meanwhile by another process
                raise KeyError(item_id)
        return self.item(item_id)
