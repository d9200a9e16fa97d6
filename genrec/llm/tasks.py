"""Alignment tasks (stage two of the reference paper): (prompt, target) samples that teach an
LLM to read and write item codes.

A sample is a list of parts. A part is template text (``"t"``, trusted), data text (``"d"``: a
title, a review; tokenized so that special tokens inside it stay plain text), or an item
(``"i"``: its identifier from the item index). Each part says whether the loss is taken on it.
Nothing here depends on a tokenizer; :mod:`genrec.llm.encode` turns samples into token ids.

Tasks, each with several paraphrased templates:

- ``seq``: history items in order -> next item (the recommendation task itself);
- ``neg``: history -> an item the user is unlikely to want (a random item the user never
  interacted with), ``negatives_per_positive`` per sequential sample (the paper's best 1:3-1:4),
  the negatives of one history under one template (``negative_prompts``), so the trainer can
  compute their shared prompt once;
- ``title2item`` / ``item2title``: an item's title and description -> its codes, and back;
- ``query``: a user's review of an item -> the item (``query-review``), or, where the data has no
  reviews, a query built from the item's attributes (``query-attr``, labelled as such);
- ``seq_query``: a request in words conditioned on the history: for every position of a user's
  training sequence, the items before it (none at the first position: a cold user) and a query
  describing the item at it (its review where the data has one, else a phrasing of its
  attributes, see :func:`item_query`) -> that item. One target per sample (the query describes
  that item alone), so these samples are per-prefix in either layout; ``train.task_fraction``
  takes a share of them per epoch. :meth:`genrec.llm.encode.PromptFormat.query_prompt` is the
  prompt, the same in training and decoding.

Only the training part of the split is used: no validation or test item is ever a target, and
a review is used only for an interaction in the training part. Two layouts for ``seq``:
``per_prefix`` (the paper's: one sample per prefix) and ``all_positions`` (one sample per user,
the loss on every item after the first: far fewer tokens for the same supervision; a history
longer than ``max_history`` + 1 items is covered by overlapping windows, see ``long_histories``). With
``all_positions`` the negative-behaviour samples are per user too (``negatives_per_positive``
of them after the user's whole training history), keeping the paper's ratio of negative to
sequential samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from genrec.data.dataset import Dataset

Part = tuple[str, object, bool]  # (kind "t" | "d" | "i", value, loss on this part?)

SEQ_TEMPLATES = [
    ("The user has interacted with these items in order: ", "Predict the next item the user will interact with."),
    ("Here is a user's purchase history, oldest first: ", "Which item will the user buy next?"),
    ("A customer bought the following items: ", "Recommend the item they are most likely to buy next."),
]
NEG_TEMPLATES = [
    ("The user has interacted with these items in order: ", "Name an item this user is unlikely to want."),
    ("Here is a user's purchase history, oldest first: ", "Which item would this user not be interested in?"),
]
TITLE2ITEM_TEMPLATES = [
    ("Which item has the title \"", "\"?"),
    ("Find the item described as: ", ""),
]
ITEM2TITLE_TEMPLATES = [
    ("What is the title of item ", "?"),
    ("Give the product name of ", "."),
]
QUERY_REVIEW_TEMPLATES = [
    ("A user wrote this review: \"", "\". Which item is it about?"),
    ("Which item matches this customer feedback: \"", "\"?"),
]
QUERY_ATTR_TEMPLATES = [
    ("I am looking for ", ". Which item should I get?"),
    ("Recommend an item for this request: ", ""),
]
# seq_query: "Purchase history: <items>\nRequest: <query>\nRecommended item: <target>" (the history
# part left out for an empty history; the codes form keeps only the history's codes and the request).
# The query is whitespace-normalised (clean_query), so it never holds the newline that opens both
# separators: no query text can pose as the end of the request.
QUERY_HISTORY = "Purchase history: "
QUERY_OPEN = "\nRequest: "
QUERY_CLOSE = "\nRecommended item: "
QUERY_PHRASINGS = ("attributes", "category", "brand", "title_words")


class TaskConfig(BaseModel):
    """Which tasks to build and how many samples of each."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[Literal["seq", "neg", "title2item", "item2title", "query", "seq_query"]] = Field(
        default_factory=lambda: ["seq", "neg", "title2item", "item2title", "query"]
    )
    layout: Literal["per_prefix", "all_positions"] = "per_prefix"
    max_history: int = Field(20, ge=1)
    long_histories: Literal["windows", "last"] = Field(
        "windows",
        description="all_positions, a training sequence longer than max_history + 1: 'windows' covers it with "
        "windows of max_history + 1 items, each item after the first a target exactly once with at least "
        "max_history / 2 items before it (bar the first window's); 'last' keeps only the last window "
        "(the original behaviour: fewer targets for long users)",
    )
    negatives_per_positive: int = Field(3, ge=0, description="negative-behaviour samples per sequential sample (1:N)")
    negative_prompts: Literal["shared", "independent"] = Field(
        "shared",
        description="'shared': the N negatives of one history take one template, so they share their whole prompt "
        "and the trainer computes it once (train.share_prefixes); 'independent': a template drawn per negative "
        "(the original behaviour)",
    )
    prompt: Literal["chat", "plain", "codes"] = Field(
        "chat",
        description="'chat': every sample inside the backbone's chat template with a system prompt; 'plain': the "
        "task's own text only (no system prompt, no chat wrappers: fewer tokens per sample); 'codes': plain, and the "
        "sequential task as its items' codes back to back (no instruction, no separators). Decoding uses the form "
        "the model was trained on",
    )
    max_description_chars: int = Field(300, ge=0)
    max_review_chars: int = Field(300, ge=1, description="a review or request is cut to this many characters")
    query_phrasings: list[Literal["attributes", "category", "brand", "title_words"]] = Field(
        default_factory=lambda: list(QUERY_PHRASINGS), min_length=1,
        description="seq_query on data without reviews: how a target item's request is phrased, one drawn per sample "
        "('attributes': its category and brand, as query-attr; 'category' or 'brand' alone; 'title_words': a few "
        "words of its title); a phrasing the item has nothing for falls back to the next that has",
    )
    seed: int = 0


@dataclass
class Sample:
    task: str
    template: int
    parts: list[Part] = field(default_factory=list)
    user: int = -1
    item: int = -1  # the target item, or -1 for a text target
    in_turn: bool = False  # a single target stays in the user turn (a continued list), not the assistant's

    def targets(self) -> list[int]:
        """Items the loss is taken on (the model learns to write them)."""
        return [int(v) for k, v, loss in self.parts if k == "i" and loss]


def _history_parts(items: np.ndarray) -> list[Part]:
    parts: list[Part] = []
    for n, i in enumerate(items):
        if n:
            parts.append(("t", ", ", False))
        parts.append(("i", int(i), False))
    return parts


def _windows(n: int, h: int, mode: str) -> list[tuple[int, int]]:
    """(start, first target position in the window) of the ``all_positions`` windows of a training
    sequence of ``n`` items, each window ``h + 1`` items (fewer at the end).

    'last': the last window only. 'windows': starts 0, h/2, h, ...; a window's targets are the items
    the windows before it did not reach, so every item after the first is a target exactly once and
    sees at least ``h - h//2 + 1`` items of context outside the first window."""
    if n <= h + 1:
        return [(0, 1)]
    if mode == "last":
        return [(n - h - 1, 1)]
    stride, out, covered, start = max(1, h // 2), [(0, 1)], h, 0
    while covered < n - 1:
        start += stride
        out.append((start, covered + 1 - start))
        covered = min(start + h, n - 1)
    return out


def _text(dataset: Dataset, i: int, max_desc: int) -> str:
    row = dataset.items.iloc[i]
    title = str(row["title"]).strip()
    desc = str(row["description"]).strip()[:max_desc]
    return f"{title}. {desc}".strip(". ").strip() if desc else title


def _leaf_category(row) -> str:
    cats = [c.strip() for c in str(row.get("categories", "") or "").split(",") if c.strip()]
    return cats[-1].lower() if cats else ""


def attribute_query(dataset: Dataset, i: int) -> str:
    """A request built from item ``i``'s attributes only (leaf category and brand; never its id or
    title): "a <category> item by <brand>", or the part it has, or "" for neither. The query task's
    ``query-attr`` samples and the held-out requests of ``benchmarks/query.py``."""
    row = dataset.items.iloc[i]
    what = _leaf_category(row)
    brand = " ".join(str(row.get("brand", "") or "").split())
    if what and brand:
        return f"a {what} item by {brand}"
    return f"a {what} item" if what else (f"something by {brand}" if brand else "")

_STOP = frozenset("a an and the of for with in on to by from or x".split())


def item_query(dataset: Dataset, i: int, phrasing: str, rng: np.random.Generator) -> str:
    """A request for item ``i`` phrased as ``phrasing`` (see ``TaskConfig.query_phrasings``), from
    its attributes and title words only; a phrasing it has nothing for falls back to the next one
    (cyclically); "" when it has nothing at all."""
    row = dataset.items.iloc[i]
    order = QUERY_PHRASINGS[QUERY_PHRASINGS.index(phrasing):] + QUERY_PHRASINGS[: QUERY_PHRASINGS.index(phrasing)]
    for p in order:
        if p == "attributes":
            q = attribute_query(dataset, i)
        elif p == "category":
            q = _leaf_category(row)
        elif p == "brand":
            q = " ".join(str(row.get("brand", "") or "").split())
        else:
            words = [w for w in str(row.get("title", "") or "").lower().replace(",", " ").split()
                     if w.isalpha() and w not in _STOP]
            n = min(len(words), int(rng.integers(2, 5)))
            q = " ".join(words[k] for k in sorted(rng.choice(len(words), size=n, replace=False))) if n else ""
        if q:
            return q
    return ""


def clean_query(text: str, max_chars: int) -> str:
    """A request as the model reads it: whitespace runs (newlines too) as one space, cut to ``max_chars``."""
    return " ".join(str(text).split())[:max_chars].strip()


def query_parts(history, query: str, target: int) -> list[Part]:
    """The parts of a ``seq_query`` sample (its text form; see :data:`QUERY_HISTORY`)."""
    head: list[Part] = [("t", QUERY_HISTORY, False), *_history_parts(np.asarray(history, dtype=np.int64))] if len(history) else []
    return [*head, ("t", QUERY_OPEN if head else QUERY_OPEN.lstrip("\n"), False), ("d", query, False),
            ("t", QUERY_CLOSE, False), ("i", int(target), True)]


def build_tasks(dataset: Dataset, cfg: TaskConfig | None = None) -> list[Sample]:
    """Every sample of the configured tasks, deterministic for a seed."""
    cfg = cfg or TaskConfig()
    rng = np.random.default_rng(cfg.seed)
    train = dataset.train_sequences()
    out: list[Sample] = []
    n_items = dataset.n_items

    if "seq" in cfg.tasks or "neg" in cfg.tasks:
        for u, s in enumerate(train):
            if len(s) < 2:
                continue
            seen = set(dataset.sequences[u].tolist())  # never a negative the user interacted with, at any time
            if "seq" in cfg.tasks and cfg.layout == "all_positions":
                for start, first in _windows(len(s), cfg.max_history, cfg.long_histories):
                    window = s[start : start + cfg.max_history + 1]
                    t = int(rng.integers(len(SEQ_TEMPLATES)))
                    head, tail = SEQ_TEMPLATES[t]
                    parts: list[Part] = [("t", head, False)]
                    for n, i in enumerate(window):
                        if n:
                            parts.append(("t", ", ", False))
                        parts.append(("i", int(i), n >= first))
                    out.append(Sample("seq_all", t, parts, u, int(window[-1])))
            for pos in range(1, len(s)):
                hist = s[max(0, pos - cfg.max_history) : pos]
                if "seq" in cfg.tasks and cfg.layout == "per_prefix":
                    t = int(rng.integers(len(SEQ_TEMPLATES)))
                    head, tail = SEQ_TEMPLATES[t]
                    parts = [("t", head, False), *_history_parts(hist), ("t", ". " + tail, False), ("i", int(s[pos]), True)]
                    out.append(Sample("seq", t, parts, u, int(s[pos])))
                # per_prefix: negatives per prefix; all_positions: per user, after the whole history
                if "neg" in cfg.tasks and (cfg.layout == "per_prefix" or pos == len(s) - 1):
                    if cfg.layout == "all_positions":
                        hist = s[max(0, len(s) - cfg.max_history) :]
                    shared = (int(rng.integers(len(NEG_TEMPLATES)))
                              if cfg.negative_prompts == "shared" and cfg.negatives_per_positive > 1 else None)
                    for _ in range(cfg.negatives_per_positive):
                        neg = int(rng.integers(n_items))
                        while neg in seen and len(seen) < n_items:
                            neg = int(rng.integers(n_items))
                        t = shared if shared is not None else int(rng.integers(len(NEG_TEMPLATES)))
                        head, tail = NEG_TEMPLATES[t]
                        parts = [("t", head, False), *_history_parts(hist), ("t", ". " + tail, False), ("i", neg, True)]
                        out.append(Sample("neg", t, parts, u, neg))

    has_text = bool((dataset.items["title"].astype(str).str.len() > 0).any())
    train_items = np.unique(np.concatenate([s for s in train if len(s)])) if any(len(s) for s in train) else np.zeros(0, int)
    if has_text and "title2item" in cfg.tasks:
        for i in train_items:
            text = _text(dataset, int(i), cfg.max_description_chars)
            if not text:
                continue
            t = int(rng.integers(len(TITLE2ITEM_TEMPLATES)))
            head, tail = TITLE2ITEM_TEMPLATES[t]
            out.append(Sample("title2item", t, [("t", head, False), ("d", text, False), ("t", tail, False), ("i", int(i), True)], -1, int(i)))
    if has_text and "item2title" in cfg.tasks:
        for i in train_items:
            title = str(dataset.items.iloc[int(i)]["title"]).strip()
            if not title:
                continue
            t = int(rng.integers(len(ITEM2TITLE_TEMPLATES)))
            head, tail = ITEM2TITLE_TEMPLATES[t]
            out.append(Sample("item2title", t, [("t", head, False), ("i", int(i), False), ("t", tail, False), ("d", title, True)], -1, -1))
    if "query" in cfg.tasks:
        out.extend(_query_samples(dataset, cfg, rng, train_items, has_text))
    if "seq_query" in cfg.tasks:
        out.extend(_seq_query_samples(dataset, cfg, rng))
    return out


def _seq_query_samples(dataset: Dataset, cfg: TaskConfig, rng: np.random.Generator) -> list[Sample]:
    """``seq_query``: every position of every training sequence (the first too: no history, a cold
    user) -> the item at it, requested by its review of that interaction where there is one, else by
    :func:`item_query` with a phrasing drawn from ``cfg.query_phrasings``. Positions whose item has
    no request at all are skipped."""
    reviews = None
    if "review" in dataset.interactions.columns:
        reviews = dataset.interactions["review"].fillna("").astype(str).to_numpy()
    bounds = np.concatenate([[0], np.cumsum(dataset.lengths())])
    out: list[Sample] = []
    for u, s in enumerate(dataset.train_sequences()):
        for pos in range(len(s)):
            target = int(s[pos])
            text = reviews[bounds[u] + pos] if reviews is not None else ""
            if not text.strip():
                phrasing = cfg.query_phrasings[int(rng.integers(len(cfg.query_phrasings)))]
                text = item_query(dataset, target, phrasing, rng)
            query = clean_query(text, cfg.max_review_chars)
            if query:
                hist = s[max(0, pos - cfg.max_history) : pos]
                out.append(Sample("seq_query", 0, query_parts(hist, query, target), u, target))
    return out


def _query_samples(dataset: Dataset, cfg: TaskConfig, rng: np.random.Generator, train_items: np.ndarray, has_text: bool) -> list[Sample]:
    inter = dataset.interactions
    out: list[Sample] = []
    if "review" in inter.columns:
        lengths = dataset.lengths()
        # position of each interaction in its user's sequence; the last two are validation/test
        pos = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, int)
        limit = np.repeat(lengths - 2, lengths)
        reviews = inter["review"].fillna("").astype(str).to_numpy()
        users = inter["user_idx"].to_numpy()
        items = inter["item_idx"].to_numpy()
        for r in np.flatnonzero((pos < limit) & (np.char.str_len(reviews.astype(str)) > 0)):
            t = int(rng.integers(len(QUERY_REVIEW_TEMPLATES)))
            head, tail = QUERY_REVIEW_TEMPLATES[t]
            text = reviews[r][: cfg.max_review_chars]
            out.append(Sample("query-review", t, [("t", head, False), ("d", text, False), ("t", tail, False), ("i", int(items[r]), True)], int(users[r]), int(items[r])))
    if not out and has_text:
        for i in train_items:
            q = attribute_query(dataset, int(i))
            if not q:
                continue
            t = int(rng.integers(len(QUERY_ATTR_TEMPLATES)))
            head, tail = QUERY_ATTR_TEMPLATES[t]
            out.append(Sample("query-attr", t, [("t", head, False), ("d", q, False), ("t", tail, False), ("i", int(i), True)], -1, int(i)))
    return out


def task_counts(samples: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.task] = counts.get(s.task, 0) + 1
    return dict(sorted(counts.items()))
