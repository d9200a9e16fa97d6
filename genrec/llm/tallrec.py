"""A TALLRec-style pointwise ranker: the backbone, tuned with LoRA, answers "will the user buy it?".

Each sample is one prompt, the user's history as item titles (the most recent ``max_history``,
oldest first) and one candidate's title, then the question; the answer is one token, ``Yes`` or
``No``. Positives are the last ``positions`` items of each user's training sequence (each after
the items before it); each has ``negatives`` sampled negatives (seeded per user and position),
drawn uniformly from the items that are neither in that history nor the positive itself. The
loss is the language-model loss of the answer token (TALLRec's), through the shared trainer
(:func:`genrec.llm.train.train`: LoRA, checkpoints, resume, ``accelerate launch``).

The score of a candidate is P(Yes) normalised over {Yes, No} at the answer position:
``exp(l_yes) / (exp(l_yes) + exp(l_no))`` of the two tokens' logits. It reranks a classic
model's shortlist like the code-likelihood reranker (``genrec rerank --method tallrec``), with
``log P(Yes)`` in place of the codes' log-probability.

Titles are data: their tokens are split like ordinary text (control tokens inside a title never
become control tokens), and cut to ``max_title_tokens``.

A model folder holds what :func:`genrec.llm.train.train` writes (``trainable.safetensors``,
``train_config.json``, ``log.jsonl``) and ``tallrec.json`` (the ranker's settings).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from genrec.errors import DataError, GenrecError
from genrec.llm.backbone import text_ids
from genrec.llm.config import LLMTrainConfig, TallrecConfig

TALLREC_FILE = "tallrec.json"
SYSTEM = "You are a recommender system. Answer Yes or No."
NO_HISTORY = "The user has bought nothing yet"
HISTORY = "The user bought, oldest first: "
SEPARATOR = "; "
CANDIDATE = ". Candidate: "
QUESTION = ". Will the user buy the candidate? Answer Yes or No."
PLAIN_ANSWER = "\nAnswer:"  # the plain prompt's end; the chat form opens the assistant's turn instead


class YesNoPrompt:
    """Token ids of the ranker's prompts for one tokenizer and one catalogue's titles."""

    def __init__(self, tokenizer, titles: list[str], max_history: int = 10, max_title_tokens: int = 24, chat: bool = True):
        from genrec.llm.encode import chat_turn

        self.max_history = max_history
        self.prefix, self.suffix = chat_turn(tokenizer, SYSTEM) if chat else ([], [])
        if not self.suffix:
            self.suffix = text_ids(tokenizer, PLAIN_ANSWER)
        self.titles = [text_ids(tokenizer, str(t) if str(t).strip() else f"item {i}", max_title_tokens)
                       for i, t in enumerate(titles)]
        self.parts = {k: text_ids(tokenizer, v) for k, v in
                      {"none": NO_HISTORY, "history": HISTORY, "sep": SEPARATOR, "cand": CANDIDATE, "q": QUESTION}.items()}
        # after the chat template's assistant header the answer is a word of its own; after "Answer:" it follows a space
        words = ("Yes", "No") if self.prefix else (" Yes", " No")
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
        if any(len(x) != 1 for x in ids):
            raise GenrecError(f"the tokenizer writes {words[0]!r} / {words[1]!r} as {ids}: the yes/no ranker needs one token each")
        self.yes, self.no = ids[0][0], ids[1][0]

    def head(self, history) -> list[int]:
        """What every candidate's prompt after ``history`` (item indices) starts with."""
        hist = [int(i) for i in history][-self.max_history:]
        out = list(self.prefix)
        if not hist:
            return out + self.parts["none"]
        out += self.parts["history"]
        for n, i in enumerate(hist):
            out += (self.parts["sep"] if n else []) + self.titles[i]
        return out

    def tail(self, item: int) -> list[int]:
        """The rest of the prompt for candidate ``item``, up to the answer position."""
        return self.parts["cand"] + self.titles[int(item)] + self.parts["q"] + self.suffix

    def ids(self, history, item: int) -> list[int]:
        """The prompt for ``item`` after ``history`` (item indices), up to the answer position."""
        return self.head(history) + self.tail(item)


def _titles(ds, source: Path) -> list[str]:
    if "title" not in ds.items.columns:
        raise DataError(source, None, "items with a 'title' column (the yes/no ranker's prompts)")
    return ds.items["title"].fillna("").astype(str).tolist()


def sample_negatives(rng: np.random.Generator, n_items: int, exclude: set[int], k: int) -> list[int]:
    """``k`` distinct items drawn uniformly from those not in ``exclude`` (fewer if fewer exist)."""
    k = min(k, n_items - len(exclude))
    out: list[int] = []
    while len(out) < k:
        i = int(rng.integers(n_items))
        if i not in exclude and i not in out:
            out.append(i)
    return out


def yes_no_samples(histories: list[np.ndarray], targets: list[int], users: list[int], n_items: int, negatives: int,
                   seed: int) -> list[tuple[int, np.ndarray, int, bool]]:
    """(user, history, candidate, label) samples: each target as a positive and ``negatives`` items
    neither in its history nor the target (seeded by (seed, user, history length)) as negatives."""
    out = []
    for u, h, t in zip(users, histories, targets, strict=True):
        out.append((u, h, int(t), True))
        rng = np.random.default_rng([seed, u, len(h)])
        out += [(u, h, i, False) for i in sample_negatives(rng, n_items, {int(x) for x in h} | {int(t)}, negatives)]
    return out


def training_samples(ds, cfg: TallrecConfig, seed: int) -> list[tuple[int, np.ndarray, int, bool]]:
    """The training samples: the last ``cfg.positions`` items of each (sampled) user's training
    sequence, each after the items before it, with their negatives."""
    seqs = ds.train_sequences()
    users = np.arange(len(seqs))
    if cfg.users is not None and cfg.users < len(users):
        users = np.sort(np.random.default_rng([seed, 1]).choice(users, cfg.users, replace=False))
    hs, ts, us = [], [], []
    for u in users:
        s = seqs[u]
        for t in range(max(1, len(s) - cfg.positions), len(s)):
            hs.append(s[:t]), ts.append(int(s[t])), us.append(int(u))
    return yes_no_samples(hs, ts, us, ds.n_items, cfg.negatives, seed)


def validation_samples(ds, cfg: TallrecConfig, seed: int) -> list[tuple[int, np.ndarray, int, bool]]:
    """Yes/no samples of a seeded sample of ``cfg.valid_users`` validation users (their validation item)."""
    split = ds.eval_split("valid")
    users = np.flatnonzero(split.targets >= 0)
    if cfg.valid_users < len(users):
        users = np.sort(np.random.default_rng([seed, 2]).choice(users, cfg.valid_users, replace=False))
    return yes_no_samples([split.histories[u] for u in users], [int(split.targets[u]) for u in users],
                          [int(u) for u in users], ds.n_items, cfg.negatives, seed)


def to_corpus(samples, prompt: YesNoPrompt):
    """The samples as a trainer corpus: each prompt then its answer token, the loss on the answer only."""
    from genrec.llm.corpus import Corpus

    rows = [prompt.ids(h, i) + [prompt.yes if label else prompt.no] for _, h, i, label in samples]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    mask = np.zeros(int(lengths.sum()), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    mask[offsets[1:] - 1] = 1
    return Corpus(np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32), mask, offsets,
                  np.zeros(len(rows), np.int16), np.array([s[0] for s in samples], np.int32),
                  np.array([s[2] for s in samples], np.int32), ["tallrec"])


def train_tallrec(data_dir: str | Path, out: str | Path, cfg: TallrecConfig | None = None, progress: bool = True,
                  stop_after: int | None = None, log=None) -> dict:
    """Tune the backbone on yes/no samples of the dataset's training split; write the model folder
    ``out`` (replaced only when training finishes). The checkpoint sits beside ``out``, keyed by the
    settings and the data, so rerunning a killed (or ``stop_after``) run resumes it."""
    from genrec.artifacts import config_hash, fingerprint, swap_dir, write_json_atomic
    from genrec.data.dataset import Dataset
    from genrec.llm.backbone import load_tokenizer
    from genrec.llm.train import train

    cfg = cfg or TallrecConfig()
    data_dir, out = Path(data_dir), Path(out)
    if not Dataset.is_prepared(data_dir):
        raise DataError(data_dir, None, "a prepared dataset folder (genrec data prepare)")
    ds = Dataset.load(data_dir)
    seed = cfg.train.seed
    backbone = cfg.train.backbone or cfg.backbone
    prompt = YesNoPrompt(load_tokenizer(backbone), _titles(ds, data_dir), cfg.max_history, cfg.max_title_tokens, cfg.chat)
    samples = training_samples(ds, cfg, seed)
    if not samples:
        raise DataError(data_dir, None, "users with at least two training items (a history and a positive)")
    corpus = to_corpus(samples, prompt)
    valid = to_corpus(validation_samples(ds, cfg, seed), prompt) if cfg.valid_users else None
    data_fp = fingerprint(data_dir)
    key = config_hash(cfg.model_dump(), {"data": data_fp})[:12]
    ckpt = out.parent / f".ckpt-{out.name}-{key}"
    tmp = out.parent / f".{out.name}.tmp-{key}"
    metrics = train(cfg.train, backbone, corpus, valid, [], tmp, ckpt, progress=progress, log=log, stop_after=stop_after,
                    layout="tallrec", prompt="chat" if cfg.chat else "plain")
    if metrics.get("stopped"):
        return metrics
    from accelerate import PartialState

    if PartialState().is_main_process:
        n_pos = sum(1 for s in samples if s[3])
        metrics.update(samples=len(samples), positives=n_pos, negatives=len(samples) - n_pos)
        write_json_atomic(tmp / TALLREC_FILE, {"config": cfg.model_dump(), "data": data_fp, "n_items": ds.n_items,
                                               "yes": prompt.yes, "no": prompt.no, "metrics": metrics})
        swap_dir(tmp, out)
        shutil.rmtree(ckpt, ignore_errors=True)
    PartialState().wait_for_everyone()
    return metrics


class YesNoRanker:
    """A trained yes/no ranker over one catalogue: P(Yes) of (history, candidate) pairs."""

    def __init__(self, lm, prompt: YesNoPrompt, pad_id: int, batch_rows: int = 64, dtype: torch.dtype = torch.float32):
        """``lm``: a :class:`genrec.llm.model.CodeLM` without added tokens; ``dtype``: the compute dtype (autocast)."""
        self.lm, self.prompt, self.pad_id, self.batch_rows, self.dtype = lm.eval(), prompt, pad_id, batch_rows, dtype
        with torch.no_grad():
            self.answer_rows = lm.head_weight(torch.float32)[[prompt.yes, prompt.no]].clone()  # [2, hidden]

    @property
    def device(self) -> torch.device:
        return self.answer_rows.device

    @classmethod
    def load(cls, folder: str | Path, data_dir: str | Path, device: str = "auto", batch_rows: int = 64) -> YesNoRanker:
        """A model folder of :func:`train_tallrec` over the items of the prepared dataset ``data_dir``."""
        from genrec.data.dataset import Dataset
        from genrec.device import pick_device
        from genrec.llm.files import load_trained_weights
        from genrec.llm.train import build_model

        folder = Path(folder)
        meta_file, cfg_file = folder / TALLREC_FILE, folder / "train_config.json"
        weights = load_trained_weights(folder) if cfg_file.is_file() else None
        if not meta_file.is_file() or weights is None:
            raise DataError(folder, None, "a yes/no ranker folder from `genrec tallrec train` (tallrec.json, "
                                          "train_config.json, trainable.safetensors)")
        meta = json.loads(meta_file.read_text())
        cfg = TallrecConfig.model_validate(meta["config"])
        ds = Dataset.load(data_dir)
        if ds.n_items != meta["n_items"]:
            raise DataError(data_dir, None, f"the catalogue the ranker was trained on ({meta['n_items']} items); it has {ds.n_items}")
        raw = json.loads(cfg_file.read_text())
        backbone = raw.pop("backbone")
        for k in ("new_tokens", "layout", "prompt"):
            raw.pop(k, None)
        train_cfg = LLMTrainConfig.model_validate(raw)
        lm, tok = build_model(train_cfg, backbone, [], pick_device(device))
        lm.load_trainable(weights, folder)
        prompt = YesNoPrompt(tok, _titles(ds, data_dir), cfg.max_history, cfg.max_title_tokens, cfg.chat)
        if (prompt.yes, prompt.no) != (meta["yes"], meta["no"]):
            raise DataError(meta_file, None, f"answer tokens {meta['yes']}/{meta['no']}; the backbone's tokenizer gives "
                                             f"{prompt.yes}/{prompt.no}")
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        return cls(lm.merge_for_inference(), prompt, pad, batch_rows, lm.compute_dtype)

    @torch.no_grad()
    def yes_no_logits(self, heads: list[list[int]], tails: list[list[list[int]]]) -> list[np.ndarray]:
        """[C_u, 2] logits of Yes and No after ``heads[u] + tails[u][j]`` for each user u.

        A user's head is computed once: each batch row is a head followed by its tails, every tail
        attending to the head and causally to itself only, at the positions it has in its own
        prompt (a 4D attention mask, as the trainer's shared prompts), so each answer position
        sees exactly its own prompt. Rows are batched ``batch_rows`` prompts at a time, by length."""
        from genrec.llm.train import autocast, lay_out_branches

        out = [np.zeros((len(t), 2)) for t in tails]
        sizes = [len(h) + sum(len(x) for x in t) for h, t in zip(heads, tails, strict=True)]
        order = [u for u in np.argsort(sizes, kind="stable") if tails[u]]
        batches, cur = [], []
        for u in order:
            if cur and sum(len(tails[v]) for v in cur) + len(tails[u]) > self.batch_rows:
                batches.append(cur)
                cur = []
            cur.append(u)
        if cur:
            batches.append(cur)
        for users in batches:
            n = max(sizes[u] for u in users)
            ids = np.full((len(users), n), self.pad_id, dtype=np.int64)
            pos = np.zeros((len(users), n), dtype=np.int64)
            att = np.zeros((len(users), 1, n, n), dtype=np.bool_)
            att[:, 0, np.arange(n), np.arange(n)] = True  # padding attends to itself
            causal = np.tril(np.ones((n, n), dtype=np.bool_))
            answer_rows, answer_cols = [], []
            for b, u in enumerate(users):
                starts = lay_out_branches(ids, pos, att, causal, b, heads[u], tails[u])
                for t, at in zip(tails[u], starts, strict=True):
                    answer_rows.append(b), answer_cols.append(at + len(t) - 1)
            dev = self.device
            with autocast(dev, self.dtype):
                h = self.lm.hidden(torch.from_numpy(ids).to(dev), attention_mask=torch.from_numpy(att).to(dev),
                                   position_ids=torch.from_numpy(pos).to(dev)).last_hidden_state
            logits = (h[torch.tensor(answer_rows, device=dev), torch.tensor(answer_cols, device=dev)].float()
                      @ self.answer_rows.T).cpu().numpy()
            at = 0
            for u in users:
                out[u] = logits[at : at + len(tails[u])]
                at += len(tails[u])
        return out

    def score_items(self, histories: list[np.ndarray], items: np.ndarray) -> np.ndarray:
        """log P(Yes) (normalised over {Yes, No}) of each candidate ``items[u, j]`` after
        ``histories[u]``, [U, C]; -1 pads: -inf. The reranker's score."""
        items = np.asarray(items, dtype=np.int64)
        if items.ndim != 2 or len(items) != len(histories):
            raise GenrecError(f"items: expected [users, candidates] for {len(histories)} histories; got shape {items.shape}")
        if (items >= len(self.prompt.titles)).any():
            raise GenrecError(f"item {int(items.max())} is not in the ranker's catalogue of {len(self.prompt.titles)} items")
        out = np.full(items.shape, -np.inf)
        real = [np.flatnonzero(row >= 0) for row in items]
        logits = self.yes_no_logits([self.prompt.head(h) for h in histories],
                                    [[self.prompt.tail(i) for i in row[j]] for row, j in zip(items, real, strict=True)])
        for u, (j, yn) in enumerate(zip(real, logits, strict=True)):
            out[u, j] = yn[:, 0] - np.logaddexp(yn[:, 0], yn[:, 1])
        return out

    def p_yes(self, histories: list[np.ndarray], items: np.ndarray) -> np.ndarray:
        """P(Yes) of each candidate, [U, C] (-1 pads: 0)."""
        return np.exp(self.score_items(histories, items))
