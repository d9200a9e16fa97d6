"""RQ-VAE item tokenization: TIGER's semantic-id quantiser (Rajput et al., 2023), LC-Rec's indexer.

An MLP encoder maps an item embedding to a small latent ``z`` (default in -> 512 -> 256 -> 128
-> 32); a residual quantiser of L levels x K codes writes ``z`` as a code tuple,

    r_1 = z,  c_l = argmin_k ||r_l - C_l[k]||,  r_{l+1} = r_l - C_l[c_l],  z_q = sum_l C_l[c_l],

and an MLP decoder reconstructs the input from ``z_q``, gradients passing the quantiser by the
straight-through estimator (``z + sg(z_q - z)``). Loss:

- reconstruction: MSE between input and decoder output;
- quantisation, per level: ``||sg(r_l) - C_l[c_l]||^2 + beta ||r_l - sg(C_l[c_l])||^2`` (beta 0.25);
- optional LLM alignment (``llm_weight`` > 0): the symmetric InfoNCE of
  :mod:`genrec.index.alignment` between each cumulative reconstruction ``sum_{j<=l} C_j[c_j]``
  and the item's projected LLM embedding (:func:`info_nce_levels`).

Codebooks are initialised by k-means on the first batch's residuals; codes no item uses are
re-seeded from residuals of random items after each epoch (``reset_dead_codes``).

``input="llm"`` quantises the LLM text embedding (TIGER / LC-Rec); ``input="behaviour"``
quantises the behaviour embedding, which with ``llm_weight`` > 0 is the reference paper's "ED"
ablation (its alignment tokenizer plus an encoder-decoder). Collisions are resolved by
:func:`genrec.index.base.unique_codes`; new items are encoded from the same kind of embedding
by :meth:`RQVAEIndexer.encode`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from genrec.device import pick_device
from genrec.index.base import ItemIndex, unique_codes
from genrec.index.configs import RQVAEConfig
from genrec.index.inputs import IndexInputs
from genrec.index.kmeans import kmeans
from genrec.index.semid import (
    INDEXER_FILE,
    assign_new_codes,
    check_embeddings,
    code_stats,
    fit_standardiser,
    resolve_seed,
    standardise,
)
from genrec.safefiles import load_tensors, load_weights_only, save_tensors

MODEL_FILE = "rqvae.safetensors"  # the encoder, codebooks, decoder and projection weights
STATE_FILE = "rqvae.npz"  # the standardisation mean
OLD_MODEL_FILE = "rqvae.pt"  # the weights as older versions wrote them (torch.save), read weights-only


def info_nce_levels(chosen: list[torch.Tensor], anchor: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE across the batch between each cumulative reconstruction
    ``z_l = sum_{j<=l} chosen[j]`` and ``anchor`` (row i of both is item i), averaged over levels.
    Cosine similarity over ``temperature``; a constant anchor scores log B, the worst value."""
    a = nn.functional.normalize(anchor, dim=1)
    target = torch.arange(len(anchor), device=anchor.device)
    z = torch.zeros_like(chosen[0])
    total = anchor.new_zeros(())
    for q in chosen:
        z = z + q
        logits = nn.functional.normalize(z, dim=1) @ a.T / temperature
        total = total + 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))
    return total / len(chosen)


def _mlp(dims: list[int], dropout: float) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder, residual codebooks, decoder and (when ``llm_dim`` > 0) the LLM projection."""

    def __init__(self, in_dim: int, llm_dim: int, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        dims = [in_dim, *cfg.hidden, cfg.latent_dim]
        self.encoder = _mlp(dims, cfg.dropout)
        self.decoder = _mlp(dims[::-1], cfg.dropout)
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.zeros(cfg.codebook_size, cfg.latent_dim)) for _ in range(cfg.levels)
        )
        self.proj = (
            nn.Sequential(nn.Linear(llm_dim, cfg.proj_hidden), nn.GELU(), nn.Linear(cfg.proj_hidden, cfg.latent_dim))
            if llm_dim > 0
            else None
        )

    @torch.no_grad()
    def init_codebooks(self, z: torch.Tensor, generator: torch.Generator) -> None:
        """k-means of each level on the residuals the levels above leave (TIGER's initialisation)."""
        r = z
        for cb in self.codebooks:
            cb.copy_(kmeans(r, cb.shape[0], generator=generator))
            r = r - cb[torch.cdist(r, cb).argmin(1)]

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Codes [N, L], per-level residuals (quantiser inputs) and per-level chosen code vectors."""
        r, codes, residuals, chosen = z, [], [], []
        for cb in self.codebooks:
            c = torch.cdist(r.detach(), cb.detach()).argmin(1)
            q = cb[c]
            codes.append(c)
            residuals.append(r)
            chosen.append(q)
            r = r - q
        return torch.stack(codes, 1), residuals, chosen

    def losses(self, x: torch.Tensor, llm: torch.Tensor | None) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        codes, residuals, chosen = self.quantize(z)
        quant = x.new_zeros(())
        for r, q in zip(residuals, chosen, strict=True):
            quant = quant + nn.functional.mse_loss(q, r.detach()) + self.cfg.beta * nn.functional.mse_loss(r, q.detach())
        zq = torch.stack(chosen).sum(0)
        recon = nn.functional.mse_loss(self.decoder(z + (zq - z).detach()), x)
        align = x.new_zeros(())
        if llm is not None and self.proj is not None:
            align = info_nce_levels(chosen, self.proj(llm), self.cfg.temperature)
        return {"codes": codes, "recon": recon, "quant": quant, "align": align}


class RQVAEIndexer:
    """Train an RQ-VAE on item embeddings, produce an :class:`ItemIndex`, encode new items."""

    method = "rqvae"
    config_class = RQVAEConfig

    def __init__(self, cfg: RQVAEConfig | None = None):
        self.cfg = cfg or RQVAEConfig()
        self.module: RQVAE | None = None
        self.mean: np.ndarray | None = None
        self.scale: float = 1.0
        self.seed: int | None = None
        self.index: ItemIndex | None = None
        self.log: list[dict] = []

    # fitting ---------------------------------------------------------------------------
    def build(self, inputs: IndexInputs) -> ItemIndex:
        cfg = self.cfg
        n_items = inputs.dataset.n_items
        x_np = check_embeddings(inputs.require(cfg.input, self.method), n_items, cfg.input)
        llm_np = None
        if cfg.llm_weight > 0:
            llm_np = check_embeddings(inputs.require("llm", self.method), n_items, "llm")
        self.seed = resolve_seed(cfg.seed, inputs.seed)
        dev = pick_device(cfg.device)
        self.mean, self.scale = fit_standardiser(x_np)
        x = standardise(x_np, self.mean, self.scale, dev)
        llm = None
        if llm_np is not None:
            llm = torch.as_tensor(np.asarray(llm_np, dtype=np.float32), device=dev)
            llm = (llm - llm.mean(0)) / llm.std(0).clamp(min=1e-6)
        # module weights come from the global CPU generator: seed it inside a fork so the caller's
        # RNG state survives (the module is built on the CPU, then moved)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed)
            module = RQVAE(x.shape[1], llm.shape[1] if llm is not None else 0, cfg)
        self.module = module.to(dev)
        gen = torch.Generator().manual_seed(self.seed)
        self._train(x, llm, gen)
        return self._index(x)

    def _train(self, x: torch.Tensor, llm: torch.Tensor | None, gen: torch.Generator) -> None:
        cfg, module = self.cfg, self.module
        n = len(x)
        opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.log = []
        bar = tqdm(range(cfg.epochs), desc="rq-vae", disable=None if cfg.progress else True)
        for epoch in bar:
            perm = torch.randperm(n, generator=gen).to(x.device)
            if epoch == 0:
                module.eval()
                with torch.no_grad():
                    module.init_codebooks(module.encoder(x[perm[: cfg.batch_size]]), gen)
            module.train()
            sums = {"recon": 0.0, "quant": 0.0, "align": 0.0}
            for s in range(0, n, cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                if len(idx) < 2 and n >= 2:
                    continue
                out = module.losses(x[idx], llm[idx] if llm is not None else None)
                loss = out["recon"] + cfg.quant_weight * out["quant"] + cfg.llm_weight * out["align"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for k in sums:
                    sums[k] += float(out[k].detach()) * len(idx)
            if cfg.reset_dead_codes and epoch < cfg.epochs - 1:
                self._reset_dead(x, gen)
            self.log.append({"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}})
            bar.set_postfix(recon=f"{sums['recon'] / n:.4f}", quant=f"{sums['quant'] / n:.4f}")
        module.eval()

    @torch.no_grad()
    def _reset_dead(self, x: torch.Tensor, gen: torch.Generator) -> None:
        """Re-seed codes no item uses with residuals of random items (plus a little noise)."""
        self.module.eval()
        codes, residuals, _ = self.module.quantize(self.module.encoder(x))
        for lv, cb in enumerate(self.module.codebooks):
            used = torch.zeros(cb.shape[0], dtype=torch.bool, device=x.device)
            used[codes[:, lv]] = True
            dead = (~used).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(x), (len(dead),), generator=gen).to(x.device)
                noise = torch.randn(len(dead), cb.shape[1], generator=gen).to(x.device) * 1e-2
                cb[dead] = residuals[lv][pick] + noise * residuals[lv].std().clamp(min=1e-6)

    @torch.no_grad()
    def _quantize(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        self.module.eval()
        codes, residuals, _ = self.module.quantize(self.module.encoder(x))
        last = torch.cdist(residuals[-1], self.module.codebooks[-1])
        return codes.cpu().numpy(), last.cpu().numpy()

    def _index(self, x: torch.Tensor) -> ItemIndex:
        cfg = self.cfg
        raw, last = self._quantize(x)
        resolved, sizes = unique_codes(raw, last, [cfg.codebook_size] * cfg.levels)
        stats = code_stats(raw, resolved, sizes)
        if self.log:
            stats.update({f"final_{k}_loss": v for k, v in self.log[-1].items() if k != "epoch"})
            stats["first_recon_loss"] = self.log[0]["recon"]
        config = {**cfg.model_dump(), "seed_used": self.seed}
        self.index = ItemIndex.from_codes(self.method, resolved, sizes, stats=stats, config=config, raw_codes=raw)
        return self.index

    # new items -------------------------------------------------------------------------
    def encode(self, x: np.ndarray, taken: set[tuple[int, ...]] | None = None) -> np.ndarray:
        """Codes for new items from embeddings [M, d] of the kind the index was built on
        (``cfg.input``); deterministic, unique against ``taken`` (default: the catalogue's
        tuples) and against each other."""
        if self.module is None or self.index is None:
            raise RuntimeError("encode called before build or load")
        x = np.asarray(x, dtype=np.float32)
        in_dim = self.module.encoder[0].in_features
        if x.ndim != 2 or x.shape[1] != in_dim:
            raise ValueError(f"expected [M, {in_dim}] {self.cfg.input} embeddings, got {x.shape}")
        dev = next(self.module.parameters()).device
        raw, last = self._quantize(standardise(x, self.mean, self.scale, dev))
        return assign_new_codes(raw, last, self.index.codes, taken)

    # persistence -----------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        if self.module is None or self.index is None:
            raise RuntimeError("save called before build")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "method": self.method,
            "config": self.cfg.model_dump(),
            "seed": self.seed,
            "in_dim": self.module.encoder[0].in_features,
            "llm_dim": self.module.proj[0].in_features if self.module.proj is not None else 0,
            "scale": self.scale,
            "log": self.log,
        }
        (folder / INDEXER_FILE).write_text(json.dumps(meta, indent=1))
        save_tensors(folder / MODEL_FILE, self.module.state_dict())
        np.savez(folder / STATE_FILE, mean=self.mean)
        self.index.save(folder)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> RQVAEIndexer:
        folder = Path(folder)
        meta = json.loads((folder / INDEXER_FILE).read_text())
        out = cls(RQVAEConfig(**{**meta["config"], "device": device}))
        out.seed, out.scale, out.log = meta["seed"], float(meta["scale"]), meta["log"]
        out.module = RQVAE(meta["in_dim"], meta["llm_dim"], out.cfg)
        out.module.load_state_dict(_weights(folder))
        out.module.to(pick_device(device)).eval()
        with np.load(folder / STATE_FILE, allow_pickle=False) as z:
            out.mean = z["mean"]
        out.index = ItemIndex.load(folder)
        return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """The RQ-VAE's state dict: rqvae.safetensors, or an older version's rqvae.pt read weights-only."""
    if (folder / MODEL_FILE).is_file() or not (folder / OLD_MODEL_FILE).is_file():
        return load_tensors(folder / MODEL_FILE)
    return load_weights_only(folder / OLD_MODEL_FILE, "rebuild the index (genrec index build ... --force)")
