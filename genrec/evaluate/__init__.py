"""Evaluation: pure ranking metrics and the one leave-one-out protocol every model goes through."""

from genrec.evaluate.metrics import (
    expected_rank,
    metrics_from_rank_range,
    metrics_from_ranked_lists,
    metrics_from_ranks,
    normalize_ks,
    pad_lists,
    ranks_from_lists,
    ranks_from_scores,
    top_k_from_scores,
)
from genrec.evaluate.protocol import MASK_WORDS, EvalResult, Evaluator, resolve_mask_history

__all__ = [
    "MASK_WORDS",
    "EvalResult",
    "Evaluator",
    "resolve_mask_history",
    "expected_rank",
    "metrics_from_rank_range",
    "metrics_from_ranked_lists",
    "metrics_from_ranks",
    "normalize_ks",
    "pad_lists",
    "ranks_from_lists",
    "ranks_from_scores",
    "top_k_from_scores",
]
