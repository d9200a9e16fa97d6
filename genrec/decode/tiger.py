"""TIGER-style generative retrieval (Rajput et al., 2023): a small encoder-decoder Transformer
trained from scratch to write the next item's code tuple, on the codes of any item index.

The encoder reads the user's history as the flattened code tokens of its items (the most recent
``max_len`` items; a learned position per token and per level); the decoder writes the next
item's codes after a start token. Training uses every prefix of every training sequence (the
next item of each position), like TIGER. Ranking is the same trie-constrained beam search as the
LLM (:func:`genrec.decode.beam.beam_search`), so only real items come out; the encoder runs once
per user and its output is shared by the user's beams.

The index is given by folder (``index``); its code tuples are stored with the model, so a saved
model decodes with the codes it was trained on. It is trained like a baseline (the shared trainer)
and selected by the baseline name ``tiger`` (:mod:`genrec.registry`), but it lives with the decoders
because it ranks by decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genrec.data.dataset import Dataset
from genrec.decode.configs import TigerConfig
from genrec.errors import GenrecError
from genrec.training.trainer import NeuralBaseline, NeuralRecommender, shuffled_rows

PAD, BOS = 0, 1


def code_tokens(codes: np.ndarray, sizes: list[int]) -> np.ndarray:
    """[n_items, L] codes -> token ids: level l's code c is ``2 + sum(sizes[:l]) + c`` (0 pad, 1 start)."""
    offsets = 2 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return codes.astype(np.int64) + offsets[None, :]


@dataclass
class _Out:
    last_hidden_state: torch.Tensor
    past_key_values: object


class _EncodedUsers:
    """The beam-search 'cache' of the encoder-decoder: each row's encoder output and the tokens
    its decoder has written so far (the decoder is rerun over them: at most a tuple's length)."""

    def __init__(self, memory: torch.Tensor, memory_pad: torch.Tensor, written: torch.Tensor):
        self.memory, self.memory_pad, self.written = memory, memory_pad, written

    def reorder_cache(self, rows: torch.Tensor) -> None:
        self.memory, self.memory_pad, self.written = self.memory[rows], self.memory_pad[rows], self.written[rows]


class TigerModel(NeuralRecommender):
    name = "tiger"
    score = None  # ranks by beam search: the evaluator calls rank()

    def __init__(self, n_items: int, n_users: int, cfg: TigerConfig):
        super().__init__()
        from genrec.index.base import ItemIndex

        self.n_items, self.n_users, self.cfg = n_items, n_users, cfg
        index = ItemIndex.load(cfg.index)
        if index.codes is None or index.method == "iid":
            raise GenrecError(f"{cfg.index}: TIGER needs a code-based index (alignment, rqvae, semid, cid, rid, ...)")
        if index.n_items != n_items:
            raise GenrecError(f"{cfg.index}: the index has {index.n_items} items, the dataset {n_items}")
        self.register_buffer("tokens", torch.from_numpy(code_tokens(index.codes, index.sizes)), persistent=True)
        self.levels = index.codes.shape[1]
        self.vocab = 2 + int(sum(index.sizes))
        d = cfg.dim
        self.tok_emb = nn.Embedding(self.vocab, d, padding_idx=PAD)
        self.enc_pos = nn.Embedding(cfg.max_len * self.levels, d)
        self.dec_pos = nn.Embedding(self.levels + 1, d)
        self.level_emb = nn.Embedding(self.levels + 1, d)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff, cfg.dropout, batch_first=True),
                                             cfg.layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, cfg.heads, cfg.ff, cfg.dropout, batch_first=True),
                                             cfg.layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.vocab, bias=False)
        self._samples: np.ndarray | None = None

    # ------------------------------------------------------------------ inputs
    def history_tokens(self, histories: list[np.ndarray]) -> torch.Tensor:
        """[B, max_len * L] left-padded code tokens of the most recent ``max_len`` items."""
        width = self.cfg.max_len * self.levels
        tokens = self.tokens.cpu().numpy()
        out = np.zeros((len(histories), width), dtype=np.int64)
        for r, h in enumerate(histories):
            h = np.asarray(h[-self.cfg.max_len :], dtype=np.int64)
            if len(h):
                out[r, width - len(h) * self.levels :] = tokens[h].reshape(-1)
        return torch.from_numpy(out).to(self.tokens.device)

    def encode(self, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [B, W, d] and its padding mask [B, W] (True = pad)."""
        pad = hist == PAD
        pos = torch.arange(hist.shape[1], device=hist.device)
        level = (pos % self.levels) + 1
        x = self.tok_emb(hist) + self.enc_pos(pos)[None] + self.level_emb(level)[None]
        empty = pad.all(1)  # a user without history: attend to one (zero) slot rather than none
        pad = pad.clone()
        pad[empty, -1] = False
        return self.encoder(x, src_key_padding_mask=pad), pad

    def decode(self, written: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, d] after the start token and the tokens written so far [B, T]."""
        t = written.shape[1]
        pos = torch.arange(t, device=written.device)
        x = self.tok_emb(written) + self.dec_pos(pos)[None] + self.level_emb(pos)[None]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=written.device, dtype=x.dtype)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_pad)
        return self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = self.head(h).float()
        out[..., :2] = float("-inf")  # pad and start are never written
        return out

    # ------------------------------------------------------------------ training
    def prepare(self, dataset: Dataset) -> None:
        """Every (user, position) of the training sequences with a history before it."""
        self._train = dataset.train_sequences()
        rows = [(u, t) for u, s in enumerate(self._train) for t in range(1, len(s))]
        self._samples = np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def batches(self, dataset: Dataset, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        if self._samples is None:
            self.prepare(dataset)
        for rows in shuffled_rows(self._samples, batch_size, rng):
            hist = [self._train[u][:t] for u, t in rows]
            target = torch.as_tensor([self._train[u][t] for u, t in rows], dtype=torch.long)
            yield {"history": self.history_tokens(hist).cpu(), "target": target}

    def loss(self, batch: dict) -> torch.Tensor:
        memory, pad = self.encode(batch["history"])
        tuple_ = self.tokens[batch["target"]]  # [B, L]
        written = torch.cat([torch.full_like(tuple_[:, :1], BOS), tuple_[:, :-1]], 1)
        logits = self.logits(self.decode(written, memory, pad))
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab), tuple_.reshape(-1))

    # ------------------------------------------------------------------ ranking
    def _body(self, input_ids, attention_mask, position_ids, past_key_values=None):
        if past_key_values is None:  # the prompt: history tokens then the start token
            memory, pad = self.encode(input_ids[:, :-1])
            cache = _EncodedUsers(memory, pad, input_ids[:, -1:])
        else:
            cache = past_key_values
            cache.written = torch.cat([cache.written, input_ids], 1)
        h = self.decode(cache.written, cache.memory, cache.memory_pad)
        return _Out(h[:, -1:], cache)

    @torch.no_grad()
    def rank(self, histories: list[np.ndarray], users: np.ndarray, k: int) -> np.ndarray:
        from genrec.decode.beam import Decoder, TrieTensors, beam_search
        from genrec.index.trie import Trie

        was = self.training
        self.eval()
        dev = self.tokens.device
        if getattr(self, "_trie", None) is None:
            self._trie = TrieTensors.of(Trie(self.tokens.cpu().tolist()), dev)
        decoder = Decoder(self._body, self.logits, dev, PAD, None, shared_prompt=False, share_prefix=False)
        hist = self.history_tokens(histories)
        prompts = [[*row.tolist(), BOS] for row in hist]
        out = np.full((len(prompts), k), -1, dtype=np.int64)
        for lo in range(0, len(prompts), self.cfg.batch_users):
            out[lo : lo + self.cfg.batch_users] = beam_search(decoder, prompts[lo : lo + self.cfg.batch_users], self._trie,
                                                              self.cfg.beams, k).items
        self.train(was)
        return out


class TigerBaseline(NeuralBaseline):
    """TIGER-style encoder-decoder writing the next item's codes, ranked by constrained beam search."""

    model_cls = TigerModel
    config_cls = TigerConfig
    name = "tiger"
    score = None
    train_defaults = {"lr": 1e-3, "batch_size": 256, "patience": 5, "eval_every": 2, "epochs": 100}

    def rank(self, histories: list[np.ndarray], users: np.ndarray, k: int) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("tiger: rank called before fit or load")
        return self.model.rank(histories, users, k)
