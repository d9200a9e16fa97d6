"""CLLM4Rec (Zhu et al., "Collaborative Large Language Model for Recommender Systems", WWW 2024).

The backbone's vocabulary is extended with one token per user and per item (``<user_i>``,
``<item_j>``): ids ``V + i`` and ``V + U + j`` after the backbone's ``V`` tokens, each a single
token (:func:`add_user_item_tokens` adds them to a tokenizer as special tokens, so the ids agree)
with an embedding of its own. Two language models share the backbone and each has its own user and
item tables:

- the **collaborative LM** reads ``<user_i> has interacted with <item_j> <item_k> ...``: the soft+hard
  prompt (the user token and the hard text) is context, the main text is the item tokens (in a fresh
  random order at every pass: stochastic item reordering), and its loss is the next item's
  cross-entropy under a softmax over the item tokens only (the item head is tied to the
  collaborative item embeddings);
- the **content LM** reads ``<user_i> writes the review for <item_j>: REVIEW`` for every training
  interaction with a review, and ``<item_j> is described as: TITLE. DESCRIPTION`` for every item
  without one; its loss is the backbone's own next-token cross-entropy on the main text.

Mutual regularisation ties the two: :func:`mutual_regulariser` (``mutual_weight`` / 2 times the squared
distance between the collaborative and the content embedding of each user and item of the batch that
has content), the side being trained against the other side held fixed, alternating batch by batch.

Recommendation-oriented fine-tuning (RecLLM) continues from the collaborative LM: a masked prompt
``<user_i> has interacted with <kept items> the user will interact with:`` (a random ``mask_ratio`` of
the user's training items held out, redrawn at every pass, see :func:`masked_prompt`), the last
hidden state scored against every item's collaborative embedding (:meth:`CLLM4RecModel.item_scores`)
under a multinomial likelihood of the held-out items, plus ``rec_reg_weight`` / 2 times the squared
distance between that state and the mean collaborative embedding of the user's training items, and
the mutual regulariser against the (now fixed) content embeddings. A user's ranking is one forward
pass over the whole history (no masking), scored by the shared evaluator.

Item text is data: reviews, titles and descriptions are tokenized with ``split_special_tokens``
(:func:`genrec.llm.backbone.text_ids`), so a review containing ``<item_3>`` or ``<|im_end|>`` yields
ordinary text pieces, never a user, item or control token.

Variants (``variant``): ``cllm4rec`` (backbone frozen), ``prerec`` (no fine-tuning: the collaborative
LM's next-item distribution ranks), ``ftall`` (the backbone trains too), ``scratch`` (the backbone's
architecture, randomly initialised and trained in full).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from genrec.data.dataset import Dataset
from genrec.device import pick_device
from genrec.errors import DataError, GenrecError, read_json
from genrec.evaluate import Evaluator
from genrec.llm.config import CLLM4RecConfig
from genrec.llm.train import length_batches
from genrec.safefiles import load_tensors, load_weights_only, save_tensors
from genrec.training.config import TrainConfig
from genrec.training.trainer import log_stderr, seed_everything

MODEL_FILE, META_FILE = "model.safetensors", "cllm4rec.json"
CKPT_STATE, CKPT_WEIGHTS, CKPT_BEST, CKPT_OPT = "state.json", "trainable.safetensors", "best.safetensors", "optimizer.pt"
RESTART = "delete the checkpoint folder to train from the start"
TABLES = ("user_c", "item_c", "user_t", "item_t")


def user_token(i: int) -> str:
    return f"<user_{i}>"


def item_token(j: int) -> str:
    return f"<item_{j}>"


def add_user_item_tokens(tokenizer, n_users: int, n_items: int) -> int:
    """Add ``<user_0>`` ... ``<item_{n_items-1}>`` to ``tokenizer`` as single special tokens; returns the
    backbone vocabulary size ``V`` before them (user i is id ``V + i``, item j ``V + n_users + j``)."""
    base = len(tokenizer)
    tokens = [user_token(i) for i in range(n_users)] + [item_token(j) for j in range(n_items)]
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(base, base + len(tokens))):
        raise GenrecError("the user and item tokens did not become consecutive single tokens")
    return base


# ---------------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Vocab:
    """Token-id arithmetic of the extended vocabulary."""

    base: int  #: the backbone's vocabulary size V
    n_users: int
    n_items: int

    def user(self, u):
        return self.base + np.asarray(u, dtype=np.int64)

    def item(self, j):
        return self.base + self.n_users + np.asarray(j, dtype=np.int64)

    def is_item(self, ids) -> np.ndarray:
        return np.asarray(ids) >= self.base + self.n_users


@dataclass
class Prompts:
    """The hard prompts' token ids (text data, tokenized once)."""

    collab: np.ndarray  # " has interacted with"
    rec: np.ndarray  # " the user will interact with:"
    review: np.ndarray  # " writes the review for"
    colon: np.ndarray  # ":"
    item: np.ndarray  # " is described as:"

    @classmethod
    def build(cls, tokenizer, cfg: CLLM4RecConfig) -> Prompts:
        from genrec.llm.backbone import text_ids

        def ids(text: str) -> np.ndarray:
            return np.asarray(text_ids(tokenizer, text), dtype=np.int64)

        return cls(ids(f" {cfg.hard_prompt}"), ids(f" {cfg.rec_prompt}:"), ids(f" {cfg.review_prompt}"), ids(":"),
                   ids(f" {cfg.item_prompt}:"))


def shuffled_items(items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic item reordering: the same items in a fresh random order."""
    return np.asarray(items)[rng.permutation(len(items))]


def collab_document(vocab: Vocab, prompts: Prompts, user: int, items: np.ndarray) -> tuple[np.ndarray, int]:
    """(ids, prompt length) of ``<user_i> has interacted with <item_j> ...`` (items in the given order)."""
    prompt = np.concatenate([[vocab.user(user)], prompts.collab])
    return np.concatenate([prompt, vocab.item(items)]).astype(np.int64), len(prompt)


def masked_prompt(items: np.ndarray, ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) of a user's training items: ``round(ratio * n)`` of them (at least one) held out
    as the target, the rest kept for the prompt in a random order; an item the user met twice is
    either kept or held out, never both."""
    items = np.unique(np.asarray(items, dtype=np.int64))
    n_held = min(len(items), max(1, int(round(ratio * len(items)))))
    order = rng.permutation(len(items))
    return items[order[n_held:]], np.sort(items[order[:n_held]])


def rec_document(vocab: Vocab, prompts: Prompts, user: int, kept: np.ndarray) -> np.ndarray:
    """RecLLM's prompt ``<user_i> has interacted with <kept items> the user will interact with:``."""
    return np.concatenate([[vocab.user(user)], prompts.collab, vocab.item(kept), prompts.rec]).astype(np.int64)


@dataclass
class ContentCorpus:
    """The content LM's documents: token ids, prompt lengths, and each one's user (-1: none) and item."""

    docs: list[np.ndarray]
    prompt_len: np.ndarray
    users: np.ndarray
    items: np.ndarray
    reviews: int  #: documents from reviews
    item_docs: int  #: documents from item titles and descriptions

    def __len__(self) -> int:
        return len(self.docs)


def training_rows(dataset: Dataset) -> np.ndarray:
    """Row numbers (into ``dataset.interactions``) of the training part of the split."""
    lengths = dataset.lengths()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.concatenate([np.arange(s, s + max(n - 2, 0)) for s, n in zip(starts, lengths, strict=True)]
                          or [np.zeros(0, np.int64)]).astype(np.int64)


def content_corpus(dataset: Dataset, tokenizer, vocab: Vocab, prompts: Prompts, max_text_tokens: int) -> ContentCorpus:
    """Review documents for the training interactions with a review, item documents (title and
    description) for the items with text but no review. Text is tokenized as data."""
    from genrec.llm.backbone import text_ids

    docs, plen, users, items = [], [], [], []
    inter = dataset.interactions
    reviewed = np.zeros(dataset.n_items, dtype=bool)
    if "review" in inter.columns:
        rows = training_rows(dataset)
        text = inter["review"].to_numpy()[rows]
        u_col, i_col = inter["user_idx"].to_numpy()[rows], inter["item_idx"].to_numpy()[rows]
        for t, u, j in zip(text, u_col, i_col, strict=True):
            if not isinstance(t, str) or not t.strip():
                continue
            main = text_ids(tokenizer, " " + t.strip(), max_text_tokens)
            prompt = np.concatenate([[vocab.user(u)], prompts.review, [vocab.item(j)], prompts.colon])
            docs.append(np.concatenate([prompt, main]).astype(np.int64))
            plen.append(len(prompt)), users.append(int(u)), items.append(int(j))
            reviewed[j] = True
    n_reviews = len(docs)
    cols = dataset.items.columns
    titles = dataset.items["title"].fillna("").astype(str).to_numpy() if "title" in cols else [""] * dataset.n_items
    descs = dataset.items["description"].fillna("").astype(str).to_numpy() if "description" in cols else [""] * dataset.n_items
    for j in range(dataset.n_items):
        if reviewed[j]:
            continue
        t, d = titles[j].strip(), descs[j].strip()
        text = f"{t}. {d}" if t and d else t or d
        if not text:
            continue
        main = text_ids(tokenizer, " " + text, max_text_tokens)
        prompt = np.concatenate([[vocab.item(j)], prompts.item])
        docs.append(np.concatenate([prompt, main]).astype(np.int64))
        plen.append(len(prompt)), users.append(-1), items.append(j)
    return ContentCorpus(docs, np.asarray(plen, dtype=np.int64), np.asarray(users, dtype=np.int64),
                         np.asarray(items, dtype=np.int64), n_reviews, len(docs) - n_reviews)


def token_batches(lengths: np.ndarray, batch_size: int, batch_tokens: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of document indices: shuffled, grouped by length within chunks of 50 batches (less
    padding), each at most ``batch_size`` documents and ``batch_tokens`` padded tokens, in random order."""
    order = rng.permutation(len(lengths))
    return length_batches(order, lengths, batch_size, batch_tokens, 50 * batch_size, rng)


def pad(docs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, L] ids (pad id 0) and attention mask."""
    length = max(len(d) for d in docs)
    ids = np.zeros((len(docs), length), dtype=np.int64)
    mask = np.zeros((len(docs), length), dtype=np.int64)
    for r, d in enumerate(docs):
        ids[r, : len(d)], mask[r, : len(d)] = d, 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def mutual_regulariser(c_users: torch.Tensor, t_users: torch.Tensor, c_items: torch.Tensor, t_items: torch.Tensor,
                       weight: float, n_docs: int) -> torch.Tensor:
    """``weight / 2 * (sum_u ||c_u - t_u||^2 + sum_j ||c_j - t_j||^2) / n_docs``: the Gaussian tie between
    the collaborative (c) and content (t) embeddings of the users and items of a batch of ``n_docs``
    documents (each user and item once), per document like the language-model losses."""
    total = (c_users.float() - t_users.float()).pow(2).sum() + (c_items.float() - t_items.float()).pow(2).sum()
    return weight / 2 * total / max(n_docs, 1)


# ---------------------------------------------------------------------------------------- the model


class CLLM4RecModel(nn.Module):
    """The backbone with collaborative (``*_c``) and content (``*_t``) user/item token tables."""

    def __init__(self, lm, base_vocab: int, n_users: int, n_items: int, tune_backbone: bool, init_std: float,
                 seed: int = 0):
        super().__init__()
        self.lm = lm
        self.base, self.n_users, self.n_items = int(base_vocab), int(n_users), int(n_items)
        self.tune_backbone = bool(tune_backbone)
        hidden = lm.get_input_embeddings().weight.shape[1]
        if lm.get_input_embeddings().weight.shape[0] < self.base:
            raise GenrecError(f"the backbone has {lm.get_input_embeddings().weight.shape[0]} token rows, "
                              f"its tokenizer {self.base}")
        g = torch.Generator().manual_seed(seed)
        dev = lm.get_input_embeddings().weight.device
        for name, n in zip(TABLES, (n_users, n_items, n_users, n_items), strict=True):
            table = nn.Embedding(n, hidden).to(dev)
            with torch.no_grad():
                table.weight.copy_(torch.randn(n, hidden, generator=g) * init_std)
            setattr(self, name, table)
        lm.requires_grad_(self.tune_backbone)
        self.compute_dtype = torch.float32
        self.register_buffer("content_users", torch.zeros(n_users, dtype=torch.bool, device=dev), persistent=False)
        self.register_buffer("content_items", torch.zeros(n_items, dtype=torch.bool, device=dev), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.user_c.weight.device

    def tables(self, side: str) -> tuple[nn.Embedding, nn.Embedding]:
        return (self.user_c, self.item_c) if side == "c" else (self.user_t, self.item_t)

    def embed(self, ids: torch.Tensor, side: str) -> torch.Tensor:
        """[B, L, H] fp32 input embeddings: the backbone's rows for text tokens, ``side``'s tables for
        user and item tokens."""
        users, items = self.tables(side)
        b, u = self.base, self.n_users
        is_text, is_user = ids < b, (ids >= b) & (ids < b + u)
        word = self.lm.get_input_embeddings()(torch.where(is_text, ids, 0)).float()
        user = users(torch.where(is_user, ids - b, 0))
        item = items(torch.where(ids >= b + u, ids - b - u, 0))
        return torch.where(is_text[..., None], word, torch.where(is_user[..., None], user, item))

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, side: str) -> torch.Tensor:
        """[B, L, H] last hidden states (after the final norm)."""
        x = self.embed(ids, side)
        param_dtype = self.lm.get_input_embeddings().weight.dtype
        auto = self.compute_dtype != torch.float32 and param_dtype == torch.float32
        with torch.autocast(ids.device.type, dtype=self.compute_dtype, enabled=auto):
            return self.lm.get_decoder()(inputs_embeds=x.to(param_dtype), attention_mask=mask).last_hidden_state

    def last_hidden(self, ids: torch.Tensor, mask: torch.Tensor, side: str = "c") -> torch.Tensor:
        h = self.hidden(ids, mask, side)
        return h[torch.arange(len(ids), device=ids.device), mask.sum(1) - 1]

    def item_scores(self, h: torch.Tensor) -> torch.Tensor:
        """The item head: dot products of hidden states with the collaborative item token embeddings."""
        return h.float() @ self.item_c.weight.T

    def mutual(self, tokens: torch.Tensor, n_docs: int, side: str, weight: float) -> torch.Tensor:
        """The mutual regulariser over the users and items (those with content) among ``tokens``, the
        token ids of a batch of ``n_docs`` documents; ``side`` ("c" or "t") gets the gradient, the other
        side is held fixed."""
        if weight == 0:
            return torch.zeros((), device=tokens.device)
        flat = tokens.flatten()
        b, u = self.base, self.n_users
        users = torch.unique(flat[(flat >= b) & (flat < b + u)] - b)
        items = torch.unique(flat[flat >= b + u] - b - u)
        users, items = users[self.content_users[users]], items[self.content_items[items]]
        c_u, c_i, t_u, t_i = self.user_c(users), self.item_c(items), self.user_t(users), self.item_t(items)
        if side == "c":
            t_u, t_i = t_u.detach(), t_i.detach()
        else:
            c_u, c_i = c_u.detach(), c_i.detach()
        return mutual_regulariser(c_u, t_u, c_i, t_i, weight, n_docs)

    def collab_loss(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        """Next-item cross-entropy over the item tokens (item softmax) of the main text."""
        h = self.hidden(ids, mask, "c")[:, :-1]
        target = ids[:, 1:]
        pos = torch.arange(1, ids.shape[1], device=ids.device)
        sel = (mask[:, 1:] > 0) & (pos[None] >= prompt_len[:, None]) & (target >= self.base + self.n_users)
        if not sel.any():
            return h.sum() * 0
        return nn.functional.cross_entropy(self.item_scores(h[sel]), target[sel] - self.base - self.n_users)

    def content_loss(self, ids: torch.Tensor, mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
        """The backbone's next-token cross-entropy over the main text."""
        h = self.hidden(ids, mask, "t")[:, :-1]
        target = ids[:, 1:]
        pos = torch.arange(1, ids.shape[1], device=ids.device)
        sel = (mask[:, 1:] > 0) & (pos[None] >= prompt_len[:, None])
        if not sel.any():
            return h.sum() * 0
        logits = self.lm.get_output_embeddings()(h[sel]).float()
        return nn.functional.cross_entropy(logits, target[sel])

    def rec_loss(self, ids: torch.Tensor, mask: torch.Tensor, held: torch.Tensor, owned: torch.Tensor,
                 reg_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(multinomial NLL of the held-out items, the latent-state regulariser). ``held`` and ``owned``
        are [B, n_items] multi-hot: the held-out items and every training item of each user."""
        h = self.last_hidden(ids, mask).float()
        logp = torch.log_softmax(self.item_scores(h), dim=-1)
        nll = -(logp * held).sum(-1).mean()
        anchor = (owned @ self.item_c.weight.detach()) / owned.sum(-1, keepdim=True).clamp(min=1)
        reg = reg_weight / 2 * (h - anchor).pow(2).sum(-1).mean()
        return nll, reg

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"{t}.weight": getattr(self, t).weight for t in TABLES}
        if self.tune_backbone:
            state.update({f"lm.{k}": v for k, v in self.lm.state_dict().items()})
        return state

    def load_trainable(self, state: dict[str, torch.Tensor], path: str | Path = "") -> None:
        expected = set(self.trainable_state())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise DataError(path, None, f"CLLM4Rec weights of this model (missing {missing}, unexpected {extra})")
        with torch.no_grad():
            for t in TABLES:
                w = state[f"{t}.weight"]
                if w.shape != getattr(self, t).weight.shape:
                    raise DataError(path, f"{t}.weight", f"shape {tuple(getattr(self, t).weight.shape)}, found {tuple(w.shape)}")
                getattr(self, t).weight.copy_(w)
        if self.tune_backbone:
            self.lm.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("lm.")})


# ---------------------------------------------------------------------------------------- the baseline


def adam(params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused where this torch has a fused kernel for the parameters' device."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class Optimizers:
    """Named optimizers stepped part by part (see :meth:`CLLM4Rec._optimizer`)."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = parts

    def zero_grad(self) -> None:
        for o in self.parts.values():
            o.zero_grad(set_to_none=True)

    def step(self, names: list[str], grad_clip: float | None) -> None:
        """Clip the gradient norm of the named parts together, then step them."""
        chosen = [self.parts[n] for n in names if n in self.parts]
        if grad_clip:
            nn.utils.clip_grad_norm_([p for o in chosen for g in o.param_groups for p in g["params"]], grad_clip)
        for o in chosen:
            o.step()

    def state_dict(self) -> dict:
        return {k: o.state_dict() for k, o in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.parts):
            raise ValueError(f"optimizer parts {sorted(state)}, expected {sorted(self.parts)}")
        for k, o in self.parts.items():
            o.load_state_dict(state[k])


def build_backbone(cfg: CLLM4RecConfig, device: torch.device, seed: int):
    """(causal LM, tokenizer, compute dtype): the backbone cut to ``cfg.layers``, randomly
    re-initialised for ``scratch``; fp32 master weights when it trains (computing under autocast)."""
    from genrec.llm.backbone import load_backbone, pick_dtype, truncate_layers

    tune = cfg.variant in ("ftall", "scratch")
    compute = pick_dtype(device, cfg.dtype)
    lm, tok = load_backbone(cfg.backbone, device=str(device), dtype="fp32" if tune else cfg.dtype)
    if cfg.layers is not None:
        truncate_layers(lm, min(cfg.layers, len(lm.get_decoder().layers)))
    if cfg.variant == "scratch":
        from transformers import AutoModelForCausalLM

        with torch.random.fork_rng():
            torch.manual_seed(1_000_003 + seed)  # not the seed a small backbone was itself drawn with
            lm = AutoModelForCausalLM.from_config(lm.config).to(device, torch.float32)
    lm.eval()  # no dropout anywhere: its own weights are either frozen or fine-tuned in place
    return lm, tok, compute


class CLLM4Rec:
    """CLLM4Rec: an LLM with user/item tokens, mutually-regularised pretraining and RecLLM fine-tuning."""

    name = "cllm4rec"
    config_cls = CLLM4RecConfig
    #: the RecLLM fine-tuning's optimisation (TrainConfig fields); pretraining's are in the config
    train_defaults = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "patience": 2}

    def __init__(self, config: dict | None = None, train: dict | None = None):
        self.config = CLLM4RecConfig(**(config or {}))
        if (train or {}).get("precision", "fp32") != "fp32":
            raise ValueError("cllm4rec computes in config.dtype (auto: bf16 where native); set it instead of train.precision")
        self.train_cfg = TrainConfig(**{**self.train_defaults, **(train or {})})
        self.model: CLLM4RecModel | None = None
        self.vocab: Vocab | None = None
        self.prompts: Prompts | None = None
        self.log: dict = {}

    @property
    def label(self) -> str:
        """The name in logs: cllm4rec, or the variant's (cllm4rec-prerec, ...)."""
        return self.name if self.config.variant == "cllm4rec" else f"{self.name}-{self.config.variant}"

    # -- building -------------------------------------------------------------------------
    def _build(self, n_users: int, n_items: int, device: str, seed: int) -> None:
        dev = pick_device(device)
        lm, tok, compute = build_backbone(self.config, dev, seed)
        base = len(tok)
        init_std = float(lm.get_input_embeddings().weight.detach().float().std())
        self.model = CLLM4RecModel(lm, base, n_users, n_items, self.config.variant in ("ftall", "scratch"), init_std, seed)
        self.model.compute_dtype = compute
        self.vocab = Vocab(base, n_users, n_items)
        self.prompts = Prompts.build(tok, self.config)
        self.tokenizer = tok

    # -- training -------------------------------------------------------------------------
    def fit(self, dataset: Dataset, seed: int | None = None, checkpoint_dir=None, log=None, **_: object) -> dict:
        if seed is not None:
            self.train_cfg = self.train_cfg.model_copy(update={"seed": seed})
        cfg, tc = self.config, self.train_cfg
        log = log or log_stderr
        seed_everything(tc.seed)
        start = time.time()
        self._build(dataset.n_users, dataset.n_items, tc.device, tc.seed)
        model, vocab = self.model, self.vocab
        content = content_corpus(dataset, self.tokenizer, vocab, self.prompts, cfg.max_text_tokens)
        model.content_users[torch.from_numpy(content.users[content.users >= 0]).to(model.device)] = True
        model.content_items[torch.from_numpy(content.items).to(model.device)] = True
        collaborative_only = len(content) == 0
        info = {"variant": cfg.variant, "content_documents": len(content), "review_documents": content.reviews,
                "item_documents": content.item_docs, "collaborative_only": collaborative_only,
                "users_with_content": int(model.content_users.sum()), "items_with_content": int(model.content_items.sum())}
        if collaborative_only:
            log(f"{self.label}: the dataset has no item text and no reviews: training the collaborative LM alone "
                "(no content LM, no mutual regularisation)")
        else:
            log(f"{self.label}: content LM on {content.reviews} review and {content.item_docs} item documents")
        train = [s[-cfg.max_history:] if cfg.max_history else s for s in dataset.train_sequences()]
        evaluator = Evaluator(dataset, ks=(1, 5, 10, 20), mask_history=tc.mask_history, batch_size=tc.eval_batch_size,
                              progress=False)
        valid_users = np.flatnonzero(evaluator.split("valid").targets >= 0)
        if cfg.select_users and cfg.select_users < len(valid_users):
            valid_users = np.sort(np.random.default_rng([tc.seed, 1]).choice(valid_users, cfg.select_users, replace=False))

        ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        state = self._resume(ckpt, log)
        phases = [("pretrain", cfg.pretrain_epochs)] + ([] if cfg.variant == "prerec" else [("finetune", tc.epochs)])
        for phase_no, (phase, n_epochs) in enumerate(phases):
            if state["phase_no"] > phase_no or n_epochs == 0:
                continue
            opt = self._optimizer(phase)
            if state["phase_no"] == phase_no and state.get("optimizer") is not None:
                opt.load_state_dict(state.pop("optimizer"))
            selecting = phase == "finetune" or cfg.variant == "prerec"
            if state["phase_no"] < phase_no:
                state.update(phase_no=phase_no, epoch=1, step=0, best=-1.0, best_epoch=0, history=[])
            while state["epoch"] <= n_epochs:
                epoch = state["epoch"]
                if selecting and state["best_epoch"] and epoch - state["best_epoch"] > tc.patience:
                    break
                rng = np.random.default_rng([tc.seed, phase_no, epoch])
                batches = (self._pretrain_batches(train, content, rng) if phase == "pretrain"
                           else self._finetune_batches(train, rng))
                t0 = time.time()
                row = state.setdefault("row", {"loss": 0.0, "mutual": 0.0, "n": 0, "seconds": 0.0})
                bar = tqdm(total=len(batches), initial=state["step"], desc=f"{self.label} {phase} epoch {epoch}",
                           leave=False, disable=None if tc.progress else True)
                for i in range(state["step"], len(batches)):
                    loss, reg = self._step(batches[i], opt)
                    row["loss"] += loss
                    row["mutual"] += reg
                    row["n"] += 1
                    state["step"] = i + 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss'] / row['n']:.4f}")
                    if ckpt and state["step"] % cfg.save_every == 0 and state["step"] < len(batches):
                        row["seconds"] += time.time() - t0
                        t0 = time.time()
                        self._save_checkpoint(ckpt, state, opt)
                bar.close()
                row["seconds"] += time.time() - t0
                entry = {"phase": phase, "epoch": epoch, "loss": round(row["loss"] / max(row["n"], 1), 5),
                         "regulariser": round(row["mutual"] / max(row["n"], 1), 5), "train_seconds": round(row["seconds"], 1)}
                line = f"{self.label} {phase} epoch {epoch}: loss {entry['loss']:.4f}, regulariser {entry['regulariser']:.4f}"
                if selecting:
                    res = evaluator.evaluate(self, stage="valid", users=valid_users, progress=False)
                    entry["valid"] = {k: v for k, v in res.metrics.items() if k.startswith(("HR", "NDCG", "MRR"))}
                    value = res.metrics[tc.metric]
                    if value > state["best"]:
                        state["best"], state["best_epoch"] = float(value), epoch
                        self._best = {k: v.detach().clone() for k, v in model.trainable_state().items()}
                        if ckpt:
                            save_tensors(ckpt / CKPT_BEST, self._best)
                    line += f", valid {tc.metric} {value:.4f} (best {state['best']:.4f} @ {state['best_epoch']})"
                log(line + f", {entry['train_seconds']:.0f}s")
                state["history"].append(entry)
                state.update(epoch=epoch + 1, step=0)
                state.pop("row")
                if ckpt:
                    self._save_checkpoint(ckpt, state, opt)
            if selecting and self._best is not None:
                model.load_trainable(self._best)
            state.setdefault("done", {})[phase] = {"history": state["history"], "best_epoch": state["best_epoch"],
                                                   f"best_valid_{tc.metric}": state["best"] if selecting else None}
            if ckpt:
                self._save_checkpoint(ckpt, state, opt)
        info.update(state.get("done", {}))
        hist = [h for p in ("pretrain", "finetune") for h in info.get(p, {}).get("history", [])]
        last = info.get("finetune", info.get("pretrain", {}))
        secs = [h["train_seconds"] for h in hist if h["phase"] == ("finetune" if "finetune" in info else "pretrain")]
        info.update({"best_epoch": last.get("best_epoch"), f"best_valid_{tc.metric}": last.get(f"best_valid_{tc.metric}"),
                     "epochs_run": len(hist), "seconds_per_epoch": round(float(np.mean(secs)), 3) if secs else 0.0,
                     "fit_seconds": round(time.time() - start, 1)})
        self.log = info
        return {k: v for k, v in info.items() if k not in ("pretrain", "finetune")}

    def _optimizer(self, phase: str) -> Optimizers:
        """Adam per part: the collaborative tables ("c"), the content tables ("t", pretraining only) and
        the backbone ("lm", ftall and scratch); a step updates the parts its loss reaches, so a
        collaborative batch never moves the content tables' Adam state, nor the reverse."""
        cfg, tc, m = self.config, self.train_cfg, self.model
        lr = cfg.pretrain_lr if phase == "pretrain" else tc.lr
        parts = {"c": ([m.user_c.weight, m.item_c.weight], lr)}
        if phase == "pretrain":
            parts["t"] = ([m.user_t.weight, m.item_t.weight], lr)
        if m.tune_backbone:
            parts["lm"] = ([p for p in m.lm.parameters() if p.requires_grad], cfg.backbone_lr)
        return Optimizers({k: adam(params, rate, tc.weight_decay) for k, (params, rate) in parts.items()})

    def _pretrain_batches(self, train: list[np.ndarray], content: ContentCorpus, rng: np.random.Generator) -> list[dict]:
        """One pass: every user's collaborative document (items freshly shuffled) and every content
        document, batched apart, the two kinds interleaved at random."""
        cfg = self.config
        users = [u for u, s in enumerate(train) if len(s)]
        docs = [collab_document(self.vocab, self.prompts, u, shuffled_items(train[u], rng)) for u in users]
        out = []
        lengths = np.array([len(d[0]) for d in docs], dtype=np.int64)
        for b in token_batches(lengths, cfg.pretrain_batch_size, cfg.batch_tokens, rng):
            out.append({"kind": "collab", "docs": [docs[i][0] for i in b], "prompt_len": [docs[i][1] for i in b]})
        if len(content):
            lengths = np.array([len(d) for d in content.docs], dtype=np.int64)
            for b in token_batches(lengths, cfg.pretrain_batch_size, cfg.batch_tokens, rng):
                out.append({"kind": "content", "docs": [content.docs[i] for i in b],
                            "prompt_len": content.prompt_len[b].tolist()})
        return [out[i] for i in rng.permutation(len(out))]

    def _finetune_batches(self, train: list[np.ndarray], rng: np.random.Generator) -> list[dict]:
        """One pass of RecLLM: every user with a training item, a fresh masked prompt each."""
        cfg, tc = self.config, self.train_cfg
        users = [u for u, s in enumerate(train) if len(s)]
        docs, held = [], []
        for u in users:
            kept, out = masked_prompt(train[u], cfg.mask_ratio, rng)
            docs.append(rec_document(self.vocab, self.prompts, u, shuffled_items(kept, rng)))
            held.append(out)
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        return [{"kind": "rec", "docs": [docs[i] for i in b], "held": [held[i] for i in b],
                 "owned": [train[users[i]] for i in b]}
                for b in token_batches(lengths, tc.batch_size, cfg.batch_tokens, rng)]

    def _step(self, batch: dict, opt: Optimizers) -> tuple[float, float]:
        m, cfg, dev = self.model, self.config, self.model.device
        ids, mask = (t.to(dev) for t in pad(batch["docs"]))
        if batch["kind"] == "rec":
            held = torch.zeros(len(ids), m.n_items, device=dev)
            owned = torch.zeros(len(ids), m.n_items, device=dev)
            for r, (h, o) in enumerate(zip(batch["held"], batch["owned"], strict=True)):
                held[r, torch.from_numpy(h)] = 1.0
                owned[r, torch.from_numpy(np.unique(o))] = 1.0
            loss, reg = m.rec_loss(ids, mask, held, owned, cfg.rec_reg_weight)
            # the prompt's users and items and the held-out items, against the fixed content embeddings
            tokens = torch.cat([ids[mask > 0], m.base + m.n_users + held.nonzero()[:, 1]])
            reg = reg + m.mutual(tokens, len(ids), "c", cfg.mutual_weight)
        else:
            prompt_len = torch.tensor(batch["prompt_len"], device=dev)
            side = "c" if batch["kind"] == "collab" else "t"
            loss = (m.collab_loss if side == "c" else m.content_loss)(ids, mask, prompt_len)
            reg = m.mutual(ids[mask > 0], len(ids), side, cfg.mutual_weight)
        total = loss + reg
        parts = ["t" if batch["kind"] == "content" else "c"] + (["lm"] if m.tune_backbone else [])
        opt.zero_grad()
        total.backward()
        opt.step(parts, self.train_cfg.grad_clip)
        return float(loss.detach()), float(reg.detach())

    # -- checkpoints ----------------------------------------------------------------------
    def _resume(self, ckpt: Path | None, log) -> dict:
        state = {"phase_no": -1, "epoch": 1, "step": 0, "best": -1.0, "best_epoch": 0, "history": []}
        self._best = None
        if ckpt is None or not (ckpt / CKPT_STATE).is_file():
            return state
        try:
            saved = json.loads((ckpt / CKPT_STATE).read_text())
        except json.JSONDecodeError as e:
            raise DataError(ckpt / CKPT_STATE, f"line {e.lineno}", f"a CLLM4Rec checkpoint state ({e.msg}); {RESTART}") from None
        if saved.get("config") != self.config.model_dump() or saved.get("train") != self.train_cfg.model_dump():
            raise DataError(ckpt / CKPT_STATE, None, f"a checkpoint of other settings; {RESTART}")
        self.model.load_trainable(load_tensors(ckpt / CKPT_WEIGHTS), ckpt / CKPT_WEIGHTS)
        if (ckpt / CKPT_BEST).is_file():
            self._best = load_tensors(ckpt / CKPT_BEST)
        state.update({k: saved[k] for k in ("phase_no", "epoch", "step", "best", "best_epoch", "history")})
        for key in ("row", "done"):
            if key in saved:
                state[key] = saved[key]
        state["optimizer"] = load_weights_only(ckpt / CKPT_OPT, RESTART)
        log(f"{self.label}: resumed from {ckpt} (phase {state['phase_no']}, epoch {state['epoch']}, step {state['step']})")
        return state

    def _save_checkpoint(self, ckpt: Path, state: dict, opt: Optimizers) -> None:
        """Atomically replace the checkpoint's weights, optimizer and state (best weights are written
        when they change)."""
        ckpt.mkdir(parents=True, exist_ok=True)
        save_tensors(ckpt / CKPT_WEIGHTS, self.model.trainable_state())
        tmp = ckpt / f".{CKPT_OPT}.tmp"
        torch.save(opt.state_dict(), tmp)
        os.replace(tmp, ckpt / CKPT_OPT)
        saved = {k: v for k, v in state.items() if k != "optimizer"}
        saved.update(config=self.config.model_dump(), train=self.train_cfg.model_dump())
        tmp = ckpt / f".{CKPT_STATE}.tmp"
        tmp.write_text(json.dumps(saved))
        os.replace(tmp, ckpt / CKPT_STATE)

    # -- ranking --------------------------------------------------------------------------
    def prompt_ids(self, history: np.ndarray, user: int) -> np.ndarray:
        """The ranking prompt of a user: the whole history (capped at ``max_history``), in order;
        RecLLM's prompt, or for ``prerec`` the collaborative LM's."""
        items = np.asarray(history, dtype=np.int64)
        if self.config.max_history:
            items = items[-self.config.max_history:]
        if self.config.variant == "prerec":
            return collab_document(self.vocab, self.prompts, user, items)[0]
        return rec_document(self.vocab, self.prompts, user, items)

    @torch.no_grad()
    def score(self, histories: list[np.ndarray], users: np.ndarray) -> np.ndarray:
        """[B, n_items] item scores, one forward pass per user (``score_batch`` users at a time)."""
        if self.model is None:
            raise RuntimeError(f"{self.label}: score called before fit or load")
        out = np.zeros((len(users), self.model.n_items), dtype=np.float32)
        step = self.config.score_batch
        for s in range(0, len(users), step):
            docs = [self.prompt_ids(h, int(u)) for h, u in zip(histories[s : s + step], users[s : s + step], strict=True)]
            ids, mask = (t.to(self.model.device) for t in pad(docs))
            out[s : s + len(docs)] = self.model.item_scores(self.model.last_hidden(ids, mask)).cpu().numpy()
        return out

    # -- files ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """``cllm4rec.json`` (settings, sizes, log) and ``model.safetensors`` (the user/item tables, and
        the backbone's weights when they were trained); a frozen backbone is referenced, not copied."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        m = self.model
        meta = {"name": self.name, "config": self.config.model_dump(), "train": self.train_cfg.model_dump(),
                "n_users": m.n_users, "n_items": m.n_items, "base_vocab": m.base,
                "hidden": int(m.user_c.weight.shape[1]), "log": self.log}
        save_tensors(folder / MODEL_FILE, m.trainable_state())
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto") -> CLLM4Rec:
        folder = Path(folder)
        path = folder / META_FILE
        if not path.is_file():
            raise DataError(folder, None, f"a fitted CLLM4Rec model folder ({META_FILE} missing)")
        meta = read_json(path)
        obj = cls(meta["config"], meta["train"])
        obj._build(meta["n_users"], meta["n_items"], device, obj.train_cfg.seed)
        if obj.vocab.base != meta["base_vocab"]:
            raise DataError(path, "base_vocab", f"a backbone with {meta['base_vocab']} tokens; "
                                                f"{obj.config.backbone} has {obj.vocab.base}")
        obj.model.load_trainable(load_tensors(folder / MODEL_FILE), folder / MODEL_FILE)
        obj.log = meta.get("log", {})
        return obj

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) collaborative token embeddings, float32 [n_users, H] and [n_items, H]."""
        return (self.model.user_c.weight.detach().float().cpu().numpy(),
                self.model.item_c.weight.detach().float().cpu().numpy())


def read_embeddings(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A saved CLLM4Rec's collaborative (user, item) token embeddings, without loading its backbone."""
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise DataError(folder, None, f"a fitted CLLM4Rec model folder ({MODEL_FILE} missing)")
    tensors = load_tensors(path)
    for key in ("user_c.weight", "item_c.weight"):
        if key not in tensors:
            raise DataError(path, key, "the collaborative user and item token embeddings of a CLLM4Rec")
    return tensors["user_c.weight"].float().numpy(), tensors["item_c.weight"].float().numpy()
