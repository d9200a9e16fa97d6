"""Alignment tokenization (stage one of the reference paper), as read in docs/method.md (Item tokenization).

L cascaded codebooks of K codes quantise an item's behaviour embedding coarse to fine:
``r_1 = e``, ``c_l = argmin_k ||r_l - C_l[k]||``, ``r_{l+1} = r_l - C_l[c_l]``. There is no
encoder or decoder (the paper's "ED" ablation adds one; see :mod:`genrec.index.rqvae`).

Losses, summed over levels:

- behaviour alignment: ``||sg(r_l) - C_l[c_l]||^2 + beta * ||r_l - sg(C_l[c_l])||^2`` (codes move
  to their items' residuals; the commitment term flows back into earlier levels' codes);
- LLM alignment (weight ``llm_weight``; 0 is the "w/o LA" ablation): a symmetric InfoNCE, across
  the batch, between the cumulative reconstruction ``z_l = sum_{j<=l} C_j[c_j]`` and the item's
  LLM embedding (mean input-layer embedding over title and description) brought into the code
  space by a learned projection. Contrast across items keeps the projection from collapsing
  (a constant projection scores log B, the worst value), and it pulls codes of semantically
  close items together, so they come to share prefixes.

Each level is initialised by k-means on the residuals left by the levels above it; codes no
item uses are re-seeded from random residuals during training. After training, collisions (two
items with one tuple) are measured, then resolved by moving later duplicates to their next
nearest free last-level code. New items are encoded from the codebooks alone (no retraining):
from a behaviour embedding, from the mean embedding of co-interacted items, or, lacking both,
from text through a ridge map from LLM embedding to behaviour embedding fitted on the catalogue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from genrec.device import pick_device
from genrec.errors import DataError
from genrec.index.base import ItemIndex, collision_rate, perplexity, unique_codes
from genrec.index.configs import AlignmentConfig
from genrec.index.inputs import IndexInputs
from genrec.index.kmeans import kmeans
from genrec.safefiles import load_tensors, save_tensors

#: a fitted tokenizer's files (see :meth:`AlignmentTokenizer.save`); older versions pickled it all to ``tokenizer.pt``
TENSORS_FILE, META_FILE, OLD_FILE = "tokenizer.safetensors", "tokenizer.json", "tokenizer.pt"
#: the tokenizer's array attributes saved beside the module's weights; those kept as numpy arrays, the rest tensors
ARRAYS = ("mean", "llm_mean", "llm_std", "item_emb", "text_map", "codes")
NUMPY_ARRAYS = {"item_emb", "text_map", "codes"}


class CascadedCodebooks(nn.Module):
    """The codebooks plus the LLM projection; ``forward`` returns codes and losses."""

    def __init__(self, dim: int, llm_dim: int, cfg: AlignmentConfig):
        super().__init__()
        self.cfg = cfg
        self.codebooks = nn.ParameterList(nn.Parameter(torch.zeros(cfg.codebook_size, dim)) for _ in range(cfg.levels))
        self.proj = nn.Sequential(nn.Linear(llm_dim, cfg.proj_hidden), nn.GELU(), nn.Linear(cfg.proj_hidden, dim))

    @torch.no_grad()
    def init_kmeans(self, e: torch.Tensor, generator: torch.Generator) -> None:
        r = e
        for cb in self.codebooks:
            cb.copy_(kmeans(r, cb.shape[0], generator=generator))
            r = r - cb[torch.cdist(r, cb).argmin(1)]

    def quantize(
        self, e: torch.Tensor, p: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """codes [N, L], per-level residuals (inputs), per-level chosen code vectors.

        Without ``p`` a code is the nearest to the residual. With ``p`` (the items' normalised,
        projected LLM embeddings) the choice minimises the same objective training does:
        squared distance plus ``llm_weight`` times the misalignment ``1 - cos(z_l, p)`` of the
        cumulative reconstruction, so semantics can decide between behaviourally close codes.
        """
        r, z, codes, residuals, chosen = e, torch.zeros_like(e), [], [], []
        for cb in self.codebooks:
            cbd = cb.detach()
            dist = torch.cdist(r.detach(), cbd) ** 2
            if p is not None and self.cfg.llm_weight > 0:
                # cos(z + c_k, p) from dot products, without a [B, K, d] tensor
                zd, pd = z.detach(), p.detach()
                norm2 = (zd * zd).sum(1, keepdim=True) + 2 * zd @ cbd.T + (cbd * cbd).sum(1)
                cos = ((zd * pd).sum(1, keepdim=True) + pd @ cbd.T) / norm2.clamp(min=1e-12).sqrt()
                dist = dist + self.cfg.llm_weight * (1 - cos)
            c = dist.argmin(1)
            q = cb[c]
            codes.append(c)
            residuals.append(r)
            chosen.append(q)
            r = r - q
            z = z + q
        return torch.stack(codes, 1), residuals, chosen

    def project(self, llm: torch.Tensor | None) -> torch.Tensor | None:
        return None if llm is None or self.cfg.llm_weight <= 0 else nn.functional.normalize(self.proj(llm), dim=1)

    def losses(self, e: torch.Tensor, llm: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.project(llm)
        codes, residuals, chosen = self.quantize(e, p)
        ba = e.new_zeros(())
        for r, q in zip(residuals, chosen, strict=True):
            ba = ba + ((r.detach() - q) ** 2).sum(1).mean() + self.cfg.beta * ((r - q.detach()) ** 2).sum(1).mean()
        la = e.new_zeros(())
        if p is not None:
            z = torch.zeros_like(e)
            target = torch.arange(len(e), device=e.device)
            for q in chosen:
                z = z + q
                logits = nn.functional.normalize(z, dim=1) @ p.T / self.cfg.temperature
                la = la + 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))
            la = la / len(chosen)
        return codes, ba, la


class AlignmentTokenizer:
    """Fit on behaviour embeddings (+ LLM embeddings), produce an :class:`ItemIndex`, encode new items."""

    method = "alignment"

    def __init__(self, cfg: AlignmentConfig | None = None):
        self.cfg = cfg or AlignmentConfig()
        self.module: CascadedCodebooks | None = None
        self.mean: torch.Tensor | None = None
        self.scale: float = 1.0
        self.item_emb: np.ndarray | None = None  # standardised behaviour embeddings of the catalogue
        self.text_map: np.ndarray | None = None  # ridge map [llm_dim + 1, dim] from LLM to behaviour space
        self.llm_mean: torch.Tensor | None = None
        self.llm_std: torch.Tensor | None = None
        self.codes: np.ndarray | None = None
        self._catalogue: set[tuple[int, ...]] | None = None  # the catalogue's tuples, built on first encode
        self.log: list[dict] = []

    # fitting ---------------------------------------------------------------------------
    def standardise_llm(self, llm: np.ndarray) -> torch.Tensor:
        return (torch.as_tensor(llm, dtype=torch.float32) - self.llm_mean) / self.llm_std

    def standardise(self, e: np.ndarray) -> torch.Tensor:
        return (torch.as_tensor(e, dtype=torch.float32) - self.mean) / self.scale

    def fit(self, behaviour: np.ndarray, llm: np.ndarray | None = None) -> ItemIndex:
        cfg = self.cfg
        if llm is not None and len(llm) != len(behaviour):
            raise ValueError(f"{len(behaviour)} behaviour embeddings but {len(llm)} LLM embeddings")
        seed = cfg.seed or 0
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        dev = pick_device(self.cfg.device)
        raw = torch.as_tensor(behaviour, dtype=torch.float32)
        self.mean = raw.mean(0)
        self.scale = float((raw - self.mean).norm(dim=1).mean().clamp(min=1e-8))
        e = self.standardise(behaviour).to(dev)
        llm_t = None
        if llm is not None:
            raw_llm = torch.as_tensor(llm, dtype=torch.float32)
            self.llm_mean, self.llm_std = raw_llm.mean(0), raw_llm.std(0).clamp(min=1e-6)
            llm_t = self.standardise_llm(llm).to(dev)
        self.module = CascadedCodebooks(e.shape[1], llm_t.shape[1] if llm_t is not None else 1, cfg).to(dev)
        self.module.init_kmeans(e, gen)
        opt = torch.optim.Adam(self.module.parameters(), lr=cfg.lr)
        n = len(e)
        bar = tqdm(range(cfg.epochs), desc="alignment tokenizer", disable=None if cfg.progress else True)
        for epoch in bar:
            perm = torch.randperm(n, generator=gen).to(dev)
            used = [torch.zeros(cfg.codebook_size, dtype=torch.bool, device=dev) for _ in range(cfg.levels)]
            tot_ba = tot_la = 0.0
            for s in range(0, n, cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                if len(idx) < 2:
                    continue
                codes, ba, la = self.module.losses(e[idx], llm_t[idx] if llm_t is not None else None)
                loss = ba + cfg.llm_weight * la
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for lv in range(cfg.levels):
                    used[lv][codes[:, lv]] = True
                tot_ba += float(ba.detach()) * len(idx)
                tot_la += float(la.detach()) * len(idx)
            if cfg.reset_dead_codes and epoch < cfg.epochs - 1:
                self._reset_dead(e, used, gen, llm_t)
            self.log.append({"epoch": epoch + 1, "behaviour_loss": tot_ba / n, "llm_loss": tot_la / n})
            bar.set_postfix(ba=f"{tot_ba / n:.4f}", la=f"{tot_la / n:.3f}")
        if llm is not None:
            self.text_map = self._fit_text_map(llm, self.standardise(behaviour).numpy())
        self.item_emb = self.standardise(behaviour).numpy()
        return self._index(e, llm_t)

    @torch.no_grad()
    def _reset_dead(self, e: torch.Tensor, used: list[torch.Tensor], gen: torch.Generator, llm: torch.Tensor | None) -> None:
        """Re-seed unused codes with residuals of random items, so the whole codebook stays in play."""
        codes, residuals, _ = self.module.quantize(e, self.module.project(llm))
        for lv, cb in enumerate(self.module.codebooks):
            dead = (~used[lv]).nonzero().flatten()
            if len(dead):
                pick = torch.randint(len(e), (len(dead),), generator=gen).to(e.device)
                noise = torch.randn(len(dead), e.shape[1], generator=gen).to(e.device) * 1e-2
                cb[dead] = residuals[lv][pick] + noise

    @staticmethod
    def _fit_text_map(llm: np.ndarray, target: np.ndarray, alpha: float = 1.0) -> np.ndarray:
        """Ridge regression LLM embedding -> standardised behaviour embedding (with bias row)."""
        x = np.hstack([llm.astype(np.float64), np.ones((len(llm), 1))])
        a = x.T @ x + alpha * np.eye(x.shape[1])
        return np.linalg.solve(a, x.T @ target.astype(np.float64)).astype(np.float32)

    @torch.no_grad()
    def _index(self, e: torch.Tensor, llm: torch.Tensor | None) -> ItemIndex:
        codes, residuals, _ = self.module.quantize(e, self.module.project(llm))
        codes = codes.cpu().numpy()
        before = collision_rate(codes)
        last = torch.cdist(residuals[-1], self.module.codebooks[-1]).cpu().numpy()
        resolved, sizes = unique_codes(codes, last, [self.cfg.codebook_size] * self.cfg.levels)
        self.codes = resolved
        stats = {
            "collision_rate_before": before,
            "collision_rate_after": collision_rate(resolved),
            "perplexity": [perplexity(codes[:, lv], self.cfg.codebook_size) for lv in range(self.cfg.levels)],
            "appended_level": len(sizes) > self.cfg.levels,
            "final_behaviour_loss": self.log[-1]["behaviour_loss"] if self.log else None,
            "final_llm_loss": self.log[-1]["llm_loss"] if self.log else None,
        }
        return ItemIndex.from_codes(self.method, resolved, sizes, stats=stats, config=self.cfg.model_dump(),
                                    raw_codes=codes)

    def build(self, inputs: IndexInputs) -> ItemIndex:
        """The index stage's entry point (same for every indexer)."""
        if self.cfg.seed is None:
            self.cfg = self.cfg.model_copy(update={"seed": inputs.seed})
        return self.fit(inputs.require("behaviour", self.method), inputs.llm)

    # new items -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        behaviour: np.ndarray | None = None,
        neighbours: list[list[int]] | None = None,
        llm: np.ndarray | None = None,
        taken: set[tuple[int, ...]] | None = None,
    ) -> np.ndarray:
        """Codes [M, L] for new items from behaviour embeddings [M, d], or else lists of co-interacted
        catalogue items, or else LLM embeddings [M, llm_dim] alone (through the text map). LLM
        embeddings given with either of the others take part in the choice of codes as in training.
        Deterministic, unique against ``taken`` (default: the catalogue's tuples) and each other."""
        if self.module is None:
            raise RuntimeError("encode called before fit or load")
        if behaviour is not None:
            z = self.standardise(behaviour)
        elif neighbours is not None:
            rows = []
            for nb in neighbours:
                if not nb:
                    raise ValueError("a new item needs at least one co-interacted item")
                rows.append(self.item_emb[np.asarray(nb)].mean(0))
            z = torch.as_tensor(np.stack(rows))
        elif llm is not None:
            if self.text_map is None:
                raise ValueError("this tokenizer was fitted without LLM embeddings: encode from behaviour instead")
            x = np.hstack([llm, np.ones((len(llm), 1), dtype=np.float32)])
            z = torch.as_tensor(x @ self.text_map)
        else:
            raise ValueError("encode needs behaviour embeddings, neighbours or LLM embeddings")
        dev = next(self.module.parameters()).device
        p = None
        if llm is not None and self.llm_mean is not None:
            p = self.module.project(self.standardise_llm(llm).to(dev))
        codes, residuals, _ = self.module.quantize(z.to(dev), p)
        codes = codes.cpu().numpy()
        if taken is None:
            if self._catalogue is None:
                self._catalogue = set(map(tuple, self.codes.tolist()))
            taken = self._catalogue
        fresh: set[tuple[int, ...]] = set()  # this call's codes; ``taken`` itself is never changed
        used: dict[tuple[int, ...], int] | None = None  # tuples taken under each prefix, built at the first collision

        def count(t: tuple[int, ...]) -> None:
            for lv in range(len(t)):
                used[t[:lv]] = used.get(t[:lv], 0) + 1

        out = codes.copy()
        for i in range(len(codes)):
            t = tuple(int(c) for c in codes[i])
            if t in taken or t in fresh:
                if used is None:
                    used = {}
                    for x in (*taken, *fresh):
                        count(x)
                t = self._nearest_free(t, [r[i] for r in residuals], lambda x: x in taken or x in fresh, used)
            out[i] = t
            fresh.add(t)
            if used is not None:
                count(t)
        return out

    def _nearest_free(self, t: tuple[int, ...], inputs: list[torch.Tensor], blocked, used: dict) -> tuple[int, ...]:
        """The free tuple keeping the longest prefix of ``t``: another last code by distance, else
        another code one level up (the levels below re-chosen nearest first), and so on."""
        cbs = [cb.detach() for cb in self.module.codebooks]
        sizes = [len(cb) for cb in cbs]
        capacity = [int(np.prod(sizes[lv:])) for lv in range(len(cbs) + 1)]

        def below(prefix: tuple[int, ...], r: torch.Tensor) -> tuple[int, ...] | None:
            lv = len(prefix)
            if lv == len(cbs):
                return None if blocked(prefix) else prefix
            if used.get(prefix, 0) >= capacity[lv]:
                return None  # every tuple under this prefix is taken
            for c in torch.cdist(r[None], cbs[lv])[0].argsort(stable=True).tolist():
                found = below((*prefix, c), r - cbs[lv][c])
                if found is not None:
                    return found
            return None

        for depth in range(len(cbs) - 1, -1, -1):
            found = below(t[:depth], inputs[depth])
            if found is not None:
                return found
        raise ValueError("code space exhausted: every code tuple is taken; rebuild the index with more levels")

    # persistence -----------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """``tokenizer.safetensors``: the codebooks and LLM projection (``module.*``), the
        standardisation (``mean``, ``llm_mean``, ``llm_std``), the catalogue's standardised
        behaviour embeddings (``item_emb``), the ridge ``text_map`` and the catalogue's ``codes``
        (those fitted without LLM embeddings lack the LLM ones); ``tokenizer.json``: the
        settings, the dimensions, the scale and the training log."""
        folder = Path(folder)
        tensors = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        for name in ARRAYS:
            value = getattr(self, name)
            if value is not None:
                tensors[name] = torch.as_tensor(value)
        save_tensors(folder / TENSORS_FILE, tensors)
        meta = {"config": self.cfg.model_dump(), "dim": self.module.codebooks[0].shape[1],
                "llm_dim": self.module.proj[0].in_features, "scale": self.scale, "log": self.log}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> AlignmentTokenizer:
        folder = Path(folder)
        if not (folder / TENSORS_FILE).is_file() and (folder / OLD_FILE).is_file():
            raise DataError(folder / OLD_FILE, None, "an alignment tokenizer of an older genrec, pickled with numpy "
                            "arrays, which is not loaded (unpickling can run code); rebuild the index with `genrec index "
                            "build ... --force` to write tokenizer.safetensors and tokenizer.json (its codes can change: "
                            "retrain models built on the old ones)")
        meta = json.loads((folder / META_FILE).read_text())
        tensors = load_tensors(folder / TENSORS_FILE)
        tok = cls(AlignmentConfig(**{**meta["config"], "device": device}))
        tok.module = CascadedCodebooks(meta["dim"], meta["llm_dim"], tok.cfg)
        tok.module.load_state_dict({k.removeprefix("module."): v for k, v in tensors.items() if k.startswith("module.")})
        tok.module.to(device)
        tok.scale, tok.log = float(meta["scale"]), meta["log"]
        for name in ARRAYS:
            value = tensors.get(name)
            setattr(tok, name, value.numpy() if value is not None and name in NUMPY_ARRAYS else value)
        return tok
