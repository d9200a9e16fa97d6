"""Collaborative-filtering models on the user-item graph (LightGCN, DCCF).

``SPECS`` and the models' settings (:mod:`genrec.cf.configs`) need only pydantic; the graph helpers
and the models (and torch) are imported on first use. Their item representations are one source of
the behaviour embeddings the item tokenizer quantizes (the cf stage, :func:`genrec.stages.stage_cf`).
"""

from __future__ import annotations

from genrec.cf.configs import DCCFConfig, LightGCNConfig
from genrec.training.config import Spec

__all__ = ["SPECS", "BPRSampler", "normalized_adjacency", "training_pairs"]
_GRAPH = ("BPRSampler", "normalized_adjacency", "training_pairs")

#: name -> :class:`~genrec.training.config.Spec`, with the interface of :data:`genrec.baselines.SPECS`
SPECS: dict[str, Spec] = {
    "lightgcn": Spec("genrec.cf.lightgcn:LightGCNBaseline", LightGCNConfig),
    "dccf": Spec("genrec.cf.dccf:DCCFBaseline", DCCFConfig),
}


def __getattr__(name: str) -> object:
    if name in _GRAPH:
        from genrec.cf import graph

        return getattr(graph, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
