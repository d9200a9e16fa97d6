"""Loaders, one module per on-disk format, and format detection.

Each module defines ``FORMAT`` (its name), ``detect(folder) -> bool`` and
``load(path, **options) -> RawData``. Adding a format touches one file and :data:`LOADERS`.
"""

from __future__ import annotations

from pathlib import Path

from genrec.data.loaders import amazon2018, amazon2023, lcrec, recbole, tabular
from genrec.data.raw import RawData
from genrec.errors import DataError

#: Detection order matters: the most specific file patterns come first.
LOADERS = {m.FORMAT: m for m in (lcrec, recbole, amazon2023, amazon2018, tabular)}


def detect_format(path: str | Path) -> str:
    """Name the format of a raw data folder (or file), or raise a DataError listing what is known."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "no such file or folder")
    folder = path if path.is_dir() else path.parent
    for name, mod in LOADERS.items():
        if mod.detect(folder):
            return name
    raise DataError(path, None, f"could not recognise the data format; pass --format (one of {', '.join(LOADERS)})")


def load_raw(path: str | Path, format: str | None = None, **options) -> RawData:
    """Read raw data in ``format`` (detected when None) from a folder."""
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in LOADERS:
        raise DataError(None, None, f"unknown format {fmt!r}; expected one of {', '.join(LOADERS)}")
    if not path.exists():
        raise DataError(path, None, "no such file or folder")
    return LOADERS[fmt].load(path, **options)
