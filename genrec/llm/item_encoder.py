"""The LLM as item encoder (LEARN-style): each item's text through the backbone, its hidden states
mean-pooled into one vector, kept in a cache keyed by the backbone and the text.

- **What is encoded.** An item's title and description (:func:`genrec.llm.backbone.item_texts`),
  tokenized as data (control and code tokens inside it stay text), cut to ``max_tokens``; the last
  hidden state of the backbone's decoder (after its final norm; with ``layers``, of its first
  ``layers`` decoder layers only, a cheaper encoder) is averaged over the text's tokens. ``layers``
  0 averages the input-layer embedding rows instead, no forward pass: the text stage's vectors
  (:func:`genrec.llm.backbone.item_llm_embeddings`, at ``max_tokens`` 256 and fp32). An item
  without text gets a zero vector.
- **The cache** (the long-short update of references/001). One ``.npz`` file per encoder (backbone,
  layers, max_tokens, dtype: :func:`encoder_key`) under a cache folder, holding every text
  encoded so far as (SHA-256 of the text, vector) rows. A build encodes only the texts whose hash
  is not in it (new or changed items) and reuses every other row; the file is replaced
  atomically, so a killed build never damages it. So the costly LLM pass runs once per catalogue
  and again only for what changed, while the sequential model that reads the vectors retrains as
  often as it likes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from genrec.artifacts import atomic_file
from genrec.errors import DataError
from genrec.llm.textcache import cache_root, fill

EmbedFn = Callable[[list[str]], np.ndarray]


def encoder_key(backbone: str, layers: int | None, max_tokens: int, dtype: str) -> str:
    """The cache file's name: what the vectors are a function of, besides the text."""
    spec = json.dumps({"backbone": backbone, "layers": layers, "max_tokens": max_tokens, "dtype": dtype, "pool": "mean"},
                      sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$GENREC_CACHE/item-encoder``, by default ``~/.cache/genrec/item-encoder``."""
    return cache_root() / "item-encoder"


def read_cache(path: Path) -> dict[str, np.ndarray]:
    """{text hash: vector} of a cache file ({} when it does not exist)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            hashes, vectors = z["hashes"], z["vectors"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(path, None, f"expected an item-encoder cache (hashes, vectors); delete it to rebuild ({e})") from None
    if vectors.ndim != 2 or len(hashes) != len(vectors):
        raise DataError(path, None, f"expected one vector per hash, found {len(hashes)} hashes and shape {vectors.shape}")
    return {str(h): v for h, v in zip(hashes, vectors, strict=True)}


def write_cache(path: Path, table: dict[str, np.ndarray]) -> None:
    """Replace the cache file atomically (a temporary file in the same folder, then a rename)."""
    hashes = np.array(sorted(table), dtype="U64")
    vectors = np.stack([table[h] for h in hashes]).astype(np.float32) if len(hashes) else np.zeros((0, 0), np.float32)
    with atomic_file(path, suffix=".tmp.npz") as tmp:  # np.savez adds .npz to a name without it
        np.savez(tmp, hashes=hashes, vectors=vectors)


def cached_embeddings(texts: Sequence[str], embed: EmbedFn, cache_file: Path | None,
                      chunk: int = 512) -> tuple[np.ndarray, dict]:
    """[len(texts), hidden] vectors of ``texts``: those in ``cache_file`` reused, the others (each
    distinct text once) computed with ``embed``, ``chunk`` texts at a time, each chunk added to the
    cache as it comes (a killed build resumes). Returns (vectors, stats: encoded, reused, seconds of
    encoding)."""
    table = read_cache(cache_file) if cache_file is not None else {}

    def encode(part: list[str]) -> np.ndarray:
        new = np.asarray(embed(part), dtype=np.float32)
        if new.ndim != 2 or new.shape[0] != len(part):
            raise ValueError(f"the encoder returned shape {new.shape} for {len(part)} texts")
        if table and new.shape[1] != next(iter(table.values())).shape[0]:
            raise DataError(cache_file, None, f"cached vectors of size {next(iter(table.values())).shape[0]}, "
                                              f"the encoder gives {new.shape[1]}: another encoder's cache")
        return new

    save = (lambda t: write_cache(cache_file, t)) if cache_file is not None else None
    keys, stats = fill(texts, encode, table, save, chunk)
    out = np.stack([table[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return out, {"encoded": stats["computed"], "reused": stats["reused"], "seconds": stats["seconds"]}


class BackboneEncoder:
    """Mean-pooled hidden states of a causal LM over texts (callable as an :data:`EmbedFn`).
    ``calls`` counts the texts it has encoded."""

    def __init__(self, backbone: str = "default", layers: int | None = None, max_tokens: int = 64, batch_size: int = 16,
                 device: str = "auto", dtype: str = "auto"):
        from genrec.llm.backbone import load_backbone, truncate_layers

        model, self.tok = load_backbone(backbone, device=device, dtype=dtype)
        self.input_only = layers == 0
        if layers:
            truncate_layers(model, layers)
        self.decoder = model.get_decoder().eval()
        if self.input_only:  # no decoder layer: the text stage's mean input embedding
            self.decoder.layers = self.decoder.layers[:0]
        self.max_tokens, self.batch_size = int(max_tokens), int(batch_size)
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        return self.pooled(texts)[-1]

    @torch.no_grad()
    def pooled(self, texts: list[str], every_layer: bool = False) -> np.ndarray:
        """[1, N, hidden] mean-pooled last hidden states of ``texts`` (after the final norm); with
        ``every_layer``, [layers + 1, N, hidden]: row 0 the mean input-layer embedding, row L the final
        norm of layer L's output pooled, which is what ``layers=L`` gives (a probe of all depths in one
        pass)."""
        from genrec.llm.backbone import mean_input_embeddings, text_ids

        if self.input_only or every_layer:
            first = mean_input_embeddings(texts, self.tok, self.decoder.get_input_embeddings().weight, self.max_tokens)
            if self.input_only:
                return first[None]
        ids = [text_ids(self.tok, t, self.max_tokens) for t in texts]
        hidden = self.decoder.config.hidden_size
        depth = len(self.decoder.layers) + 1 if every_layer else 1
        out = np.zeros((depth, len(texts), hidden), dtype=np.float32)
        if every_layer:
            out[0] = first
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: little padding
        order = [i for i in order if ids[i]]  # no text: a zero vector
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            width = max(len(ids[i]) for i in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for r, i in enumerate(rows):  # right padding: a causal model's real tokens never see it
                x[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            inner: list[torch.Tensor] = []  # every layer's output but the last, through hooks
            hooks = [layer.register_forward_hook(lambda _m, _i, o, keep=inner: keep.append(o[0] if isinstance(o, tuple) else o))
                     for layer in self.decoder.layers[:-1]] if every_layer else []
            try:
                last = self.decoder(input_ids=x.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            finally:
                for h in hooks:
                    h.remove()
            states = [self.decoder.norm(h) for h in inner] + [last]  # the last state has the final norm already
            m = mask.to(self.device).unsqueeze(-1).float()
            for d, h in enumerate(states, start=depth - len(states)):
                out[d, rows] = ((h.float() * m).sum(1) / m.sum(1)).cpu().numpy()
        return out


def item_encoder_embeddings(items, backbone: str = "default", layers: int | None = None, max_tokens: int = 64,
                            dtype: str = "auto", cache_dir: str | Path | None = None, device: str = "auto",
                            encoder: EmbedFn | None = None) -> tuple[np.ndarray, dict]:
    """The items' (a frame with title and description) encoder vectors through the cache of this
    encoder under ``cache_dir`` (default :func:`default_cache_dir`); the backbone is loaded only when
    some text is not cached. ``encoder``: use this :data:`EmbedFn` instead of the backbone (tests)."""
    from genrec.llm.backbone import item_texts

    texts = item_texts(items)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"{encoder_key(backbone, layers, max_tokens, dtype)}.npz"
    state: dict = {}

    def embed(batch: list[str]) -> np.ndarray:
        nonlocal encoder
        if encoder is None:  # loaded once, and only when some text is not cached
            t0 = time.perf_counter()
            encoder = BackboneEncoder(backbone, layers, max_tokens, device=device, dtype=dtype)
            state["load_seconds"] = round(time.perf_counter() - t0, 3)
        return encoder(batch)

    vectors, stats = cached_embeddings(texts, embed, cache_file)
    return vectors, {**stats, **state, "cache_file": str(cache_file)}
