"""Okapi BM25 over item text: the text-retrieval baseline of recommendation from a request in words.

A document is an item's text (title, description, categories and brand: :func:`item_documents`),
a term a lower-cased run of letters and digits. An item's score for a query is the sum over the
query's terms (each occurrence counts) of

    idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

(the non-negative idf of Lucene). The document side is one sparse [terms, items] matrix built once,
so a batch of queries is one sparse product.
"""

from __future__ import annotations

import re

import numpy as np

TERM = re.compile(r"[a-z0-9]+")


def terms(text: str) -> list[str]:
    return TERM.findall(str(text).lower())


def item_documents(items) -> list[str]:
    """Each item's searchable text: title, description, categories and brand (an items table)."""
    cols = [c for c in ("title", "description", "categories", "brand") if c in items.columns]
    return [" ".join(str(v) for v in row if isinstance(v, str) and v) for row in items[cols].itertuples(index=False)]


class BM25:
    def __init__(self, documents: list[str], k1: float = 1.2, b: float = 0.75):
        from scipy.sparse import csr_matrix

        self.k1, self.b = k1, b
        self.vocab: dict[str, int] = {}
        rows, cols, tf = [], [], []
        lengths = np.zeros(len(documents))
        for d, doc in enumerate(documents):
            words = terms(doc)
            lengths[d] = len(words)
            counts: dict[int, int] = {}
            for w in words:
                t = self.vocab.setdefault(w, len(self.vocab))
                counts[t] = counts.get(t, 0) + 1
            rows += list(counts)
            cols += [d] * len(counts)
            tf += list(counts.values())
        rows, cols, tf = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), np.asarray(tf, dtype=np.float64)
        n = len(documents)
        df = np.bincount(rows, minlength=len(self.vocab)).astype(np.float64)
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))
        avgdl = lengths.mean() if n and lengths.mean() > 0 else 1.0
        w = self.idf[rows] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[cols] / avgdl))
        self.weights = csr_matrix((w, (rows, cols)), shape=(len(self.vocab), n))
        self.n_items = n

    def scores(self, queries: list[str]) -> np.ndarray:
        """[queries, items] BM25 scores (0 for an item sharing no term with the query)."""
        from scipy.sparse import csr_matrix

        rows, cols = [], []
        for q, text in enumerate(queries):
            for w in terms(text):
                t = self.vocab.get(w)
                if t is not None:
                    rows.append(q)
                    cols.append(t)
        counts = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), len(self.vocab)))
        return np.asarray((counts @ self.weights).todense())

    def rank(self, queries: list[str], k: int, exclude: list | None = None) -> np.ndarray:
        """Top-``k`` items per query, best first ([queries, k]; ties by item index); ``exclude``: per
        query, items never ranked (a user's history, as the evaluator masks it). Items sharing no term
        with the query are ranked too (after those that do, score 0), so every list is full."""
        s = self.scores(queries)
        if exclude is not None:
            for q, items in enumerate(exclude):
                s[q, np.asarray(items, dtype=np.int64)] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.where(np.take_along_axis(s, order, 1) > -np.inf, order, -1)
