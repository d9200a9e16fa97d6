"""Every item indexer by name, and a factory that validates its settings.

Each indexer has ``method`` (its name here), ``build(inputs: IndexInputs) -> ItemIndex``,
``save(folder)`` and ``load(folder)``; code-based ones built from embeddings also encode new
items (``encode``).
"""

from __future__ import annotations

from pydantic import ValidationError

from genrec.errors import GenrecError
from genrec.index.alignment import AlignmentTokenizer
from genrec.index.collaborative import CIDIndexer
from genrec.index.configs import CONFIGS
from genrec.index.rqvae import RQVAEIndexer
from genrec.index.semid import SemIDIndexer
from genrec.index.trivial import IIDIndexer, RIDIndexer, TIDIndexer

#: method name -> indexer class
INDEXERS: dict[str, type] = {
    "alignment": AlignmentTokenizer,
    "rqvae": RQVAEIndexer,
    "semid": SemIDIndexer,
    "cid": CIDIndexer,
    "rid": RIDIndexer,
    "tid": TIDIndexer,
    "iid": IIDIndexer,
}

# CONFIGS (method name -> its settings, extra keys rejected) is in genrec.index.configs, which needs no torch
__all__ = ["CONFIGS", "INDEXERS", "make_indexer"]


def make_indexer(method: str, config: dict | None = None):
    """An unfitted indexer by name, its config validated; raises GenrecError saying what is wrong."""
    if method not in INDEXERS:
        raise GenrecError(f"unknown indexer {method!r}; expected one of {', '.join(INDEXERS)}")
    try:
        cfg = CONFIGS[method](**(config or {}))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise GenrecError(f"indexer {method!r}: invalid setting {where}: {first['msg']}") from None
    return INDEXERS[method](cfg)
