"""Per-text results kept across runs, keyed by the SHA-256 of the text: the item encoder's vectors
(:mod:`genrec.llm.item_encoder`) and the generated item tags (:mod:`genrec.llm.tags`).

A cache is a table {text hash: result} that its owner reads from and writes to one file per
producer (what the results are a function of besides the text). :func:`fill` computes the texts
the table lacks, a chunk at a time, and saves the table after every chunk, so a killed run redoes
only the chunk it was in and a cached result is never computed again."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_root() -> Path:
    """``$GENREC_CACHE``, by default ``~/.cache/genrec``."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec"))


def fill(texts: Sequence[str], compute: Callable[[list[str]], Sequence], table: dict,
         save: Callable[[dict], None] | None, chunk: int) -> tuple[list[str], dict]:
    """Add to ``table`` the results of the ``texts`` whose hash it lacks (each distinct text once, in
    order of first appearance), ``compute`` on ``chunk`` texts at a time, ``save(table)`` after each
    chunk. Returns (the texts' hashes, stats: computed, reused, seconds of computing)."""
    keys = [text_hash(t) for t in texts]
    todo = list(dict.fromkeys(k for k in keys if k not in table))
    first = dict(zip(keys, texts, strict=True))
    t0 = time.perf_counter()
    for lo in range(0, len(todo), chunk):
        part = todo[lo : lo + chunk]
        new = compute([first[k] for k in part])
        if len(new) != len(part):
            raise ValueError(f"{len(new)} results for {len(part)} texts")
        table.update(zip(part, new, strict=True))
        if save is not None:
            save(table)
    stats = {"computed": len(todo), "reused": len(set(keys)) - len(todo), "seconds": round(time.perf_counter() - t0, 3)}
    return keys, stats
