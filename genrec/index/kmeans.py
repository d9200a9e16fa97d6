"""k-means with k-means++ seeding, in torch (so it runs on whatever device holds the data)."""

from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, iters: int = 50, generator: torch.Generator | None = None) -> torch.Tensor:
    """[k, d] centres of ``x`` [n, d]. With fewer distinct points than k, the extra centres are
    jittered copies of data points (they stay available as codes for later)."""
    n = x.shape[0]
    x = x.float()
    g = generator
    first = torch.randint(n, (1,), generator=g, device="cpu").item()
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            idx = torch.randint(n, (1,), generator=g, device="cpu").item()
            jitter = torch.randn(x.shape[1], generator=g, device="cpu").to(x) * 1e-3
            centres.append(x[idx] + jitter)
            continue
        idx = torch.multinomial((d2 / total).cpu(), 1, generator=g).item()
        centres.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x).unsqueeze(1)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        if torch.allclose(moved, c):
            break
        c = moved
    return c
