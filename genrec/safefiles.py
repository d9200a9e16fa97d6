"""Model files that load without running code: tensors in safetensors files, settings in JSON.

A pickle (``torch.save``) can run arbitrary code when it is loaded, so genrec writes none that a
model folder, an index folder or the server reads. Files of older versions are still read, but
only through ``torch.load(..., weights_only=True)``, which builds tensors, numbers, strings,
lists, tuples and dicts and refuses everything else; a file that needs more is a DataError
saying how to make a new one, never a reason to unpickle it in full. The pickles genrec still
writes are training checkpoints' (a fine-tune's optimizer state, a neural baseline's ``last.pt``
and ``best.pt``): tensors, numbers, strings, lists and dicts, read weights-only by the trainer
that wrote them.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genrec.errors import DataError


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write named tensors to a safetensors file, through a temporary file so a kill never leaves
    a torn one. Each is copied to the CPU and made contiguous, so tensors that share memory (tied
    weights) are stored apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(plain, tmp)
    os.replace(tmp, path)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The named tensors of a safetensors file (a DataError if it is not one)."""
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError) as e:
        raise DataError(path, None, f"expected a safetensors file ({e})") from None


def load_weights_only(path: str | Path, remedy: str) -> object:
    """A file written by ``torch.save``, read with ``weights_only=True`` onto the CPU: tensors,
    numbers, strings and containers of them. Anything else (numpy arrays, arbitrary classes, a
    crafted pickle) is a DataError naming the file and ``remedy``, with nothing of it run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(path, None, f"a pickle that holds more than tensors, numbers, strings, lists and dicts "
                                    f"({_refused(e)}); it is not loaded, as unpickling it could run code; {remedy}") from None
    except (RuntimeError, EOFError, ValueError) as e:  # torn or not a torch.save file at all
        raise DataError(path, None, f"cannot be read ({type(e).__name__}: {str(e)[:120]}); {remedy}") from None


def _refused(error: Exception) -> str:
    """What the weights-only loader refused, in a few words (its message goes on to suggest
    loading the file in full, which genrec never does)."""
    text = str(error)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it refers to {found.group(1)}"
    if found := re.search(r"Unsupported operand (\d+)", text):
        return f"pickle operation {found.group(1)} is not allowed"
    return type(error).__name__
