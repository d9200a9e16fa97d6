"""Collaborative-filtering models on the user-item graph (LightGCN, DCCF) and the behaviour
item-embedding artifact the item tokenizer quantizes (:func:`train_embeddings`).

The graph helpers (and torch) are imported on first use, so the models' settings
(:mod:`genrec.cf.configs`) are read without them.
"""

from __future__ import annotations

from genrec.cf.embeddings import EMBEDDING_MODELS, train_embeddings

__all__ = ["EMBEDDING_MODELS", "BPRSampler", "normalized_adjacency", "train_embeddings", "training_pairs"]
_GRAPH = ("BPRSampler", "normalized_adjacency", "training_pairs")


def __getattr__(name: str) -> object:
    if name in _GRAPH:
        from genrec.cf import graph

        return getattr(graph, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
