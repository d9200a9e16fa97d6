"""Distillation targets: what a classic recommender expects next, at every code target of the
sequential task, as a distribution over that code step's choices.

For a target item reached after some history, the teacher (a fitted baseline, e.g. SASRec-CE)
gives a distribution ``p`` over items (its scores / temperature, softmax; the history items
left out where the evaluator masks them). An item is written as codes ``c1 c2 ...``; the target
of step ``j`` is then the teacher's probability of each valid next code given the item's true
codes before it::

    q_j(c) = sum of p(i) over items i with codes (c1 .. c_{j-1}, c, ...) / sum of p(i) over items with (c1 .. c_{j-1}, ...)

which is what the trie softmax of the student normalises over. The histories are the ones the
corpus shows the student (the items before the target in its own sample), so the teacher is
asked about training sequences only: its answers never see a validation or test item.

The stage writes ``targets.npz``: ``rows`` (int32, one per corpus token: the row of ``probs``
holding that token's soft target, -1 for none) and ``probs`` (float16 [rows, code tokens]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.errors import DataError, GenrecError
from genrec.llm.corpus import Corpus
from genrec.llm.encode import SEQ_TASKS


def corpus_items(corpus: Corpus, item_tokens: list[list[int]]) -> list[tuple[int, list[int], int, np.ndarray]]:
    """Every target item of the corpus's sequential samples: (sample, items before it in the sample,
    item, the corpus positions of its tokens). Items are read back from their token sequences."""
    by_tokens = {tuple(t): i for i, t in enumerate(item_tokens)}
    prefixes = {tuple(t[:k]) for t in item_tokens for k in range(1, len(t))}
    code_min = min(min(t) for t in item_tokens)
    seq = {n for n, name in enumerate(corpus.task_names) if name in SEQ_TASKS}
    out = []
    for r in np.flatnonzero(np.isin(corpus.task, list(seq))):
        a = int(corpus.offsets[r])
        ids, mask = corpus.sample(int(r))
        history: list[int] = []
        cur: list[int] = []
        for j, t in enumerate(ids.tolist()):
            if t < code_min:
                if cur:
                    raise DataError("tasks/train.npz", int(r), f"an item's codes cut short at token {j}")
                continue
            cur.append(t)
            key = tuple(cur)
            if key in by_tokens:
                item = by_tokens[key]
                pos = np.arange(j - len(cur) + 1, j + 1)
                if mask[pos].all():
                    out.append((int(r), list(history), item, a + pos))
                history.append(item)
                cur = []
            elif key not in prefixes:
                raise DataError("tasks/train.npz", int(r), f"codes {key} at token {j} that are no item's")
    return out


def soft_targets(corpus: Corpus, item_tokens: list[list[int]], n_old: int, n_new: int, teacher, temperature: float = 1.0,
                 mask_history: bool = True, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(rows, probs) of :mod:`genrec.llm.distill`'s targets for ``corpus``; ``teacher.score(histories, users)``
    gives [batch, items] scores."""
    import torch

    width = max(len(t) for t in item_tokens)
    codes = torch.full((len(item_tokens), width), -1, dtype=torch.long)
    for i, t in enumerate(item_tokens):
        codes[i, : len(t)] = torch.as_tensor(t) - n_old
    if int(codes.max()) >= n_new or int(codes[codes >= 0].min()) < 0:
        raise GenrecError("distillation: the items' tokens are not the corpus's code tokens")
    found = corpus_items(corpus, item_tokens)
    rows = np.full(len(corpus.ids), -1, dtype=np.int32)
    probs = np.zeros((sum(len(f[3]) for f in found), n_new), dtype=np.float16)
    at = 0
    for s in range(0, len(found), batch):
        chunk = found[s : s + batch]
        hist = [np.asarray(h, dtype=np.int64) for _, h, _, _ in chunk]
        scores = torch.as_tensor(np.asarray(teacher.score(hist, corpus.user[[c[0] for c in chunk]])), dtype=torch.float64)
        scores = scores / temperature
        if mask_history:
            for b, h in enumerate(hist):
                scores[b, h] = float("-inf")
        p = torch.softmax(scores, -1)
        target = codes[[c[2] for c in chunk]]  # [B, width]
        for b, (_, _, _, pos) in enumerate(chunk):
            for j in range(len(pos)):
                same = (codes[:, :j] == target[b, :j]).all(-1) & (codes[:, j] >= 0)
                q = torch.zeros(n_new, dtype=torch.float64).index_add_(0, codes[same, j], p[b, same])
                total = float(q.sum())
                if total > 0:
                    probs[at] = (q / total).numpy()
                    rows[pos[j]] = at
                at += 1
    return rows, probs


def save_targets(folder: Path, rows: np.ndarray, probs: np.ndarray) -> None:
    np.savez(folder / "targets.npz", rows=rows, probs=probs)


def load_targets(folder: str | Path, corpus: Corpus, n_new: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, probs) for ``corpus``, checked against it."""
    path = Path(folder) / "targets.npz"
    try:
        z = np.load(path, allow_pickle=False)
        rows, probs = z["rows"], z["probs"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(path, None, f"distillation targets (.npz with rows, probs) from the distill stage: {e}") from None
    if rows.shape != corpus.ids.shape or probs.ndim != 2 or probs.shape[1] != n_new or int(rows.max(initial=-1)) >= len(probs):
        raise DataError(path, None, f"targets for this corpus ({len(corpus.ids)} tokens, {n_new} code tokens), got rows "
                                    f"{rows.shape} and probs {probs.shape}: rebuild them with the run")
    return rows, probs
