"""Collaborative-filtering models on the user-item graph (LightGCN, DCCF) and the behaviour
item-embedding artifact the item tokenizer quantizes (:func:`train_embeddings`)."""

from __future__ import annotations

# The baseline registry imports this package's models, which import the shared trainer from
# genrec.baselines: load the registry first so either package can be imported first.
import genrec.baselines  # noqa: F401, I001
from genrec.cf.embeddings import EMBEDDING_MODELS, train_embeddings
from genrec.cf.graph import BPRSampler, normalized_adjacency, training_pairs

__all__ = ["EMBEDDING_MODELS", "BPRSampler", "normalized_adjacency", "train_embeddings", "training_pairs"]
