"""Every item indexer by name, and a factory that validates its settings.

Each indexer has ``method`` (its name here), ``build(inputs: IndexInputs) -> ItemIndex``,
``save(folder)`` and ``load(folder)``; code-based ones built from embeddings also encode new
items (``encode``).
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from genrec.errors import GenrecError
from genrec.index.alignment import AlignmentConfig, AlignmentTokenizer
from genrec.index.collaborative import CIDConfig, CIDIndexer
from genrec.index.rqvae import RQVAEConfig, RQVAEIndexer
from genrec.index.semid import SemIDConfig, SemIDIndexer
from genrec.index.trivial import IIDConfig, IIDIndexer, RIDConfig, RIDIndexer, TIDConfig, TIDIndexer

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

#: method name -> its pydantic config class (extra keys are rejected)
CONFIGS: dict[str, type[BaseModel]] = {
    "alignment": AlignmentConfig,
    "rqvae": RQVAEConfig,
    "semid": SemIDConfig,
    "cid": CIDConfig,
    "rid": RIDConfig,
    "tid": TIDConfig,
    "iid": IIDConfig,
}


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
