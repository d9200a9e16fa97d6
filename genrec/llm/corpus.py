"""The alignment-task corpus as token arrays: what ``genrec tasks build`` writes and the trainer reads.

A corpus is a flat array of token ids with a parallel loss mask (1 where the token is a
target), sample offsets, and per-sample task, user and item. It is tied to one tokenizer and
one item index: ``meta.json`` records the backbone, the vocabulary size after the code tokens
were added and the first and last code-token id, and the trainer refuses a corpus whose
tokens do not match its own.

Two corpora are built together: ``train`` (the configured tasks, training part of the split
only) and ``valid`` (the sequential prompt over a user's training history -> the user's
validation item, for a held-out loss; never trained on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrec.data.dataset import Dataset
from genrec.errors import DataError
from genrec.index.base import ItemIndex
from genrec.llm.encode import IGNORE, PromptFormat
from genrec.llm.tasks import SEQ_TEMPLATES, Sample, TaskConfig, build_tasks


@dataclass
class Corpus:
    ids: np.ndarray  # int32 [total tokens]
    mask: np.ndarray  # uint8 [total tokens]: 1 = loss on this token
    offsets: np.ndarray  # int64 [n + 1]
    task: np.ndarray  # int16 [n], index into task_names
    user: np.ndarray  # int32 [n], -1 for item-only tasks
    item: np.ndarray  # int32 [n], target item or -1
    task_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_targets(self) -> np.ndarray:
        """Target tokens per sample."""
        c = np.concatenate([[0], np.cumsum(self.mask, dtype=np.int64)])
        return c[self.offsets[1:]] - c[self.offsets[:-1]]

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.mask[a:b]

    def subset(self, rows: np.ndarray) -> Corpus:
        parts = [self.sample(int(i)) for i in rows]
        lengths = np.array([len(p[0]) for p in parts], dtype=np.int64)
        return Corpus(
            np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32),
            np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint8),
            np.concatenate([[0], np.cumsum(lengths)]),
            self.task[rows], self.user[rows], self.item[rows], list(self.task_names),
        )

    def unpacked(self) -> Corpus:
        """Every sample with several targets (an ``all_positions`` sequence) cut into per-prefix
        samples: one per run of consecutive target tokens, holding the tokens up to the end of
        that run with the loss on that run only. A causal LM takes exactly the same losses on
        both (the packed layout computes each shared prefix once); samples with one target run
        stay as they are."""
        ids, masks, rows = [], [], []
        for i in range(len(self)):
            x, m = self.sample(i)
            edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(np.int8), [0]])))
            runs = list(zip(edges[::2], edges[1::2], strict=True))
            if len(runs) <= 1:
                ids.append(x), masks.append(m), rows.append(i)
                continue
            for a, b in runs:
                mask = np.zeros(b, dtype=np.uint8)
                mask[a:b] = 1
                ids.append(x[:b]), masks.append(mask), rows.append(i)
        rows = np.asarray(rows, dtype=np.int64)
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        return Corpus(np.concatenate(ids) if ids else np.zeros(0, np.int32),
                      np.concatenate(masks) if masks else np.zeros(0, np.uint8),
                      np.concatenate([[0], np.cumsum(lengths)]), self.task[rows], self.user[rows], self.item[rows],
                      list(self.task_names))

    def counts(self) -> dict[str, int]:
        names, n = np.unique(self.task, return_counts=True)
        return {self.task_names[int(t)]: int(c) for t, c in zip(names, n, strict=True)}

    def summary(self) -> dict:
        lengths = self.lengths
        return {
            "samples": len(self),
            "tasks": self.counts(),
            "tokens": int(lengths.sum()),
            "target_tokens": int(self.mask.sum()),
            "mean_length": round(float(lengths.mean()), 1) if len(self) else 0.0,
            "max_length": int(lengths.max()) if len(self) else 0,
        }

    def save(self, path: Path) -> None:
        np.savez(path, ids=self.ids, mask=self.mask, offsets=self.offsets, task=self.task, user=self.user,
                 item=self.item, task_names=np.array(self.task_names))

    @classmethod
    def load(cls, path: Path) -> Corpus:
        try:
            z = np.load(path, allow_pickle=False)
            return cls(z["ids"], z["mask"], z["offsets"], z["task"], z["user"], z["item"], [str(t) for t in z["task_names"]])
        except (OSError, KeyError, ValueError) as e:
            raise DataError(path, None, f"a genrec task corpus (.npz with ids, mask, offsets, ...): {e}") from None


def encode_samples(samples: list[Sample], fmt: PromptFormat, max_length: int) -> tuple[Corpus, int]:
    """Token arrays of ``samples``; samples longer than ``max_length`` are dropped (returned count)."""
    names = sorted({s.task for s in samples})
    code = {t: n for n, t in enumerate(names)}
    ids: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    keep: list[Sample] = []
    dropped = 0
    for s in samples:
        enc = fmt.encode(s)
        if len(enc.input_ids) > max_length:
            dropped += 1
            continue
        ids.append(np.asarray(enc.input_ids, dtype=np.int32))
        masks.append(np.asarray([lab != IGNORE for lab in enc.labels], dtype=np.uint8))
        keep.append(s)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    corpus = Corpus(
        np.concatenate(ids) if ids else np.zeros(0, np.int32),
        np.concatenate(masks) if masks else np.zeros(0, np.uint8),
        np.concatenate([[0], np.cumsum(lengths)]),
        np.array([code[s.task] for s in keep], dtype=np.int16),
        np.array([s.user for s in keep], dtype=np.int32),
        np.array([s.item for s in keep], dtype=np.int32),
        names,
    )
    return corpus, dropped


def validation_samples(dataset: Dataset, max_history: int, n_users: int, seed: int, layout: str = "per_prefix") -> list[Sample]:
    """Sequential samples: a user's training history -> their validation item (held out, never a
    training target), in the prompt form decoding uses for ``layout``. First template only, so the
    loss is comparable across runs."""
    head, tail = SEQ_TEMPLATES[0]
    rng = np.random.default_rng(seed)
    users = [u for u, s in enumerate(dataset.sequences) if len(s) >= 3]
    if n_users < len(users):
        users = sorted(rng.choice(users, size=n_users, replace=False).tolist())
    out = []
    for u in users:
        s = dataset.sequences[u]
        hist, target = s[:-2][-max_history:], int(s[-2])
        parts = [("t", head, False)]
        for n, i in enumerate(hist):
            if n:
                parts.append(("t", ", ", False))
            parts.append(("i", int(i), False))
        if layout == "all_positions":  # the list continued, as in the training sequences
            parts += [("t", ", ", False), ("i", target, True)]
            out.append(Sample("seq-valid", 0, parts, u, target, in_turn=True))
            continue
        parts += [("t", ". " + tail, False), ("i", target, True)]
        out.append(Sample("seq-valid", 0, parts, u, target))
    return out


def build_corpus(
    dataset: Dataset, index: ItemIndex, tokenizer, cfg: TaskConfig, valid_users: int = 1000, max_length: int = 1024
) -> tuple[Corpus, Corpus, dict]:
    """(train corpus, validation corpus, info) for one dataset, index and tokenizer (with the
    index's code tokens already added)."""
    if index.n_items != dataset.n_items:
        raise DataError("index", None, f"an index of the dataset's {dataset.n_items} items, got {index.n_items}")
    fmt = PromptFormat(tokenizer, index, cfg.prompt)
    train, dropped = encode_samples(build_tasks(dataset, cfg), fmt, max_length)
    valid, _ = encode_samples(validation_samples(dataset, cfg.max_history, valid_users, cfg.seed, cfg.layout), fmt,
                               max_length)
    token_ids = tokenizer.convert_tokens_to_ids(index.new_tokens) if index.new_tokens else []
    info = {
        "vocab_size": len(tokenizer),
        "new_tokens": len(index.new_tokens),
        "new_token_ids": [int(min(token_ids)), int(max(token_ids))] if token_ids else None,
        "dropped_too_long": dropped,
        "max_length": max_length,
        "layout": cfg.layout,
        "prompt": cfg.prompt,
        "tasks": list(train.task_names),  # what a model trained on it can be asked (a request: seq_query)
        **({"query_max_chars": cfg.max_review_chars} if "seq_query" in train.task_names else {}),
        "item_tokens": fmt.items,  # saved as item_tokens.npy: what the trie of valid items is built from
    }
    return train, valid, info


def save_corpus(folder: Path, train: Corpus, valid: Corpus, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train.save(folder / "train.npz")
    valid.save(folder / "valid.npz")
    info = dict(info)
    items = info.pop("item_tokens", None)
    if items is not None:
        width = max((len(t) for t in items), default=0)
        arr = np.full((len(items), width), -1, dtype=np.int64)
        for i, t in enumerate(items):
            arr[i, : len(t)] = t
        np.save(folder / "item_tokens.npy", arr)
    (folder / "meta.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def load_meta(folder: str | Path) -> dict:
    """A corpus folder's ``meta.json`` (backbone, vocabulary, layout, prompt form, code tokens)."""
    meta = Path(folder) / "meta.json"
    if not meta.is_file():
        raise DataError(folder, None, "a task corpus folder (train.npz, valid.npz, meta.json) from `genrec tasks build`")
    return json.loads(meta.read_text())


def load_item_tokens(folder: str | Path) -> list[list[int]] | None:
    """Every item's token ids as the corpus wrote them (None for a corpus built before they were kept)."""
    f = Path(folder) / "item_tokens.npy"
    if not f.is_file():
        return None
    return [[int(t) for t in row if t >= 0] for row in np.load(f, allow_pickle=False)]


def load_corpus(folder: str | Path) -> tuple[Corpus, Corpus, dict]:
    meta = load_meta(folder)
    folder = Path(folder)
    return Corpus.load(folder / "train.npz"), Corpus.load(folder / "valid.npz"), meta
