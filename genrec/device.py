"""Where tensors go: one rule for every model, tokenizer and backbone."""

from __future__ import annotations

import torch


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else (cpu, cuda:1, ...) is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def launch_rank() -> tuple[int, int]:
    """(rank, world size) of this process under ``accelerate launch`` / torchrun; (0, 1) otherwise."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
