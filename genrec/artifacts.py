"""Run directories, stage artifacts and their manifests.

A run directory holds one folder per stage. Each folder is written whole into a temporary
sibling and renamed into place only when the stage succeeded, so a killed or failed stage
never leaves a half artifact and never damages the previous one. ``manifest.json`` records
the stage's config, the fingerprints of its inputs, library versions, wall time and metrics;
its ``fingerprint`` (a hash of config and inputs) lets a rerun skip a stage whose inputs and
config are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from genrec.version import __version__

MANIFEST = "manifest.json"
_VERSIONED = ("numpy", "pandas", "pyarrow", "torch", "transformers", "peft", "accelerate")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "genrec": __version__}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | Path) -> str:
    """A content hash of a file, of a folder's files, or the recorded fingerprint of an artifact."""
    path = Path(path)
    manifest = path / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["fingerprint"]
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(file_sha256(p).encode())
        return h.hexdigest()
    raise FileNotFoundError(path)


def config_hash(config: dict, inputs: dict[str, str]) -> str:
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file beside ``path`` (ending in ``suffix``: some writers insist on theirs)
    that replaces ``path`` only if the block succeeds; it is removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: object) -> None:
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def read_manifest(folder: str | Path) -> dict | None:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def swap_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` in ``target``'s place: the folder there (if any) is renamed
    aside, ``tmp`` renamed in, then the old one removed, so there is no moment with neither."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        swap_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class StageResult:
    path: Path
    manifest: dict
    skipped: bool


def run_stage(
    folder: str | Path,
    stage: str,
    config: dict,
    inputs: dict[str, str | Path],
    build: Callable[[Path], dict | None],
    force: bool = False,
    spent: float = 0.0,
) -> StageResult:
    """Build the artifact ``folder`` with ``build(tmp_folder) -> metrics`` unless it is up to date.

    Up to date means: a manifest exists whose fingerprint equals the hash of ``config`` and the
    fingerprints of ``inputs``. ``build`` writes everything into the folder it is given.
    ``spent``: seconds already spent on this artifact before ``build`` (resumable training), added
    to the manifest's ``wall_seconds``.
    """
    folder = Path(folder)
    input_prints = {name: fingerprint(p) for name, p in inputs.items()}
    fp = config_hash(config, input_prints)
    old = read_manifest(folder)
    if not force and old is not None and old.get("fingerprint") == fp:
        return StageResult(folder, old, skipped=True)
    start = time.time()
    with atomic_dir(folder) as tmp:
        metrics = build(tmp) or {}
        manifest = {
            "stage": stage,
            "fingerprint": fp,
            "config": config,
            "inputs": {name: {"path": str(p), "fingerprint": input_prints[name]} for name, p in inputs.items()},
            "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            "wall_seconds": round(spent + time.time() - start, 3),
            "metrics": metrics,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return StageResult(folder, manifest, skipped=False)
