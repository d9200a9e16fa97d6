"""Fetch raw Amazon review dumps (2018 or 2023) from their public locations.

Each file streams into a hidden temporary file beside its destination and is renamed into
place only once complete, so an interrupted or failed download never leaves a partial file.
Files already present are not fetched again.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from genrec.errors import GenrecError

#: Public base URL of each source.
DEFAULT_BASES = {
    "amazon2018": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2",
    "amazon2023": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023",
}
_CATEGORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_&-]*$")
_CHUNK = 1 << 20


def source_urls(
    source: str, category: str, base_url: str | None = None, five_core: bool = False
) -> list[str]:
    """The reviews URL and the metadata URL of ``category`` in ``source``."""
    if source not in DEFAULT_BASES:
        raise GenrecError(f"unknown download source {source!r}; expected one of {', '.join(DEFAULT_BASES)}")
    if not _CATEGORY.match(category):
        raise GenrecError(
            f"invalid category {category!r}; expected a name such as Musical_Instruments (letters, digits, _)"
        )
    base = (base_url or DEFAULT_BASES[source]).rstrip("/")
    if source == "amazon2018":
        reviews = (
            f"{base}/categoryFilesSmall/{category}_5.json.gz"
            if five_core
            else f"{base}/categoryFiles/{category}.json.gz"
        )
        return [reviews, f"{base}/metaFiles2/meta_{category}.json.gz"]
    if five_core:
        raise GenrecError("five_core is only available for amazon2018; amazon2023 has full review files only")
    return [
        f"{base}/raw/review_categories/{category}.jsonl.gz",
        f"{base}/raw/meta_categories/meta_{category}.jsonl.gz",
    ]


def _reason(err: BaseException) -> str:
    """A one-line reason for a network failure."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        if not isinstance(err.reason, BaseException):
            return " ".join(str(err.reason).split())
        err = err.reason
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join((str(err) or type(err).__name__).split())


def _fetch(url: str, dest: Path, out: Path, timeout: float) -> None:
    """Stream ``url`` into a temporary file in ``dest.parent``, then rename it to ``dest``."""

    def failed(reason: str) -> GenrecError:
        return GenrecError(
            f"could not download {url}: {reason}; check the internet connection, "
            f"or download the files by hand into {out}"
        )

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            opener = urllib.request.build_opener()
            try:
                response = opener.open(url, timeout=timeout)
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
                if isinstance(err, urllib.error.HTTPError):
                    err.close()
                raise failed(_reason(err)) from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except (OSError, http.client.HTTPException) as err:
                            raise failed(_reason(err)) from None
                        if not chunk:
                            break
                        try:
                            f.write(chunk)
                        except OSError as err:
                            raise GenrecError(f"could not write {dest}: {err}") from None
                        received += len(chunk)
                        bar.update(len(chunk))
            if total is not None and received < total:
                raise failed(f"the connection closed after {received} of {total} bytes")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def download(
    source: str,
    category: str,
    out: Path,
    base_url: str | None = None,
    five_core: bool = False,
    timeout: float = 30,
) -> list[Path]:
    """Download the reviews and metadata files of ``category`` from ``source`` into ``out``.

    ``source`` is ``amazon2018`` or ``amazon2023``; ``five_core`` picks the 2018 5-core reviews
    file. Returns the paths of both files (already present ones are kept, not refetched).
    Raises :class:`GenrecError` with one line on any network failure.
    """
    urls = source_urls(source, category, base_url, five_core)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GenrecError(f"could not create the download folder {out}: {err}") from None
    paths = []
    for url in urls:
        dest = out / url.rsplit("/", 1)[-1]
        if not dest.is_file():
            _fetch(url, dest, out, timeout)
        paths.append(dest)
    return paths
