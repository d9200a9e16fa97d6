"""Repository hygiene: model weights and optimizer states never enter git.

carry/ keeps at most a finished run's small adapter, the index it decodes with and its metrics
(scripts/carry_run.sh); checkpoints, baseline and CF weights and full fine-tunes stay in runs/.
Report copies under benchmarks/results keep summaries, not full logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".gguf", ".onnx", ".pkl", ".pickle", ".npz")
MAX_BYTES = 20 * 2**20


def violations(files: dict[str, int]) -> list[str]:
    """Every rule a set of tracked files (path -> size in bytes) breaks, one line each."""
    out = []
    for path, size in sorted(files.items()):
        parts = path.split("/")
        if size > MAX_BYTES:
            out.append(f"{path}: {size / 2**20:.0f} MB, more than {MAX_BYTES // 2**20} MB")
        if any(p.startswith(".ckpt-") for p in parts):
            out.append(f"{path}: a training checkpoint")
        if parts[0] == "carry":
            allowed = len(parts) >= 4 and (parts[2] in ("model", "index")
                                           or parts[2:] in (["evaluate", "metrics.json"], ["evaluate", "manifest.json"]))
            if not allowed:
                out.append(f"{path}: carry/<run>/ keeps only model/, index/ and evaluate/metrics.json")
        elif path.endswith(WEIGHTS):
            out.append(f"{path}: model weights outside carry/<run>/model or index")
        if parts[0] == "benchmarks" and parts[1:2] == ["results"] and path.endswith((".log", "/log.txt")):
            out.append(f"{path}: a full log in a report copy")
    return out


def test_rules_catch_each_kind_of_violation():
    ok = {"carry/sci/model/trainable.safetensors": 12 * 2**20, "carry/sci/index/codes.npy": 10_000,
          "carry/sci/evaluate/metrics.json": 500, "genrec/cli.py": 30_000, "benchmarks/results/recipe.md": 9_000}
    assert violations(ok) == []
    bad = {"carry/sci/model/.ckpt-00100/state.safetensors": 1_000,      # a checkpoint
           "carry/sci/baselines/sasrec/model.safetensors": 1_000,       # baseline weights in carry
           "carry/sci/evaluate/test_users.parquet": 1_000,              # an evaluation dump
           "benchmarks/sasrec.pt": 1_000,                               # weights outside carry
           "benchmarks/results/report/runs/x/run.log": 1_000,           # a full log
           "carry/sci/model/full.safetensors": 300 * 2**20}             # a full fine-tune
    found = violations(bad)
    for path in bad:
        assert any(line.startswith(path + ":") for line in found), path


def test_git_holds_no_weights_or_checkpoints():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    files = {n: (ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file()}
    assert violations(files) == []


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "carry_run.sh"), *args], cwd=tmp, capture_output=True, text=True)


def test_carry_script_keeps_only_a_small_finished_model(tmp_path):
    run = tmp_path / "runs" / "sci"
    assert _run(tmp_path, "save", "runs/sci").returncode != 0          # nothing finished: nothing carried
    for rel, size in {"model/manifest.json": 10, "model/trainable.safetensors": 1_000, "model/.ckpt-00100/state.bin": 1_000,
                      "index/codes.npy": 10, "evaluate/metrics.json": 10, "evaluate/test_users.parquet": 10,
                      "baselines/sasrec-ce/model/model.safetensors": 10, "cf/dccf/model/model.safetensors": 10}.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(b"x" * size)
    done = _run(tmp_path, "save", "runs/sci")
    assert done.returncode == 0, done.stderr
    kept = {str(p.relative_to(tmp_path)) for p in (tmp_path / "carry").rglob("*") if p.is_file()}
    assert kept == {"carry/sci/model/manifest.json", "carry/sci/model/trainable.safetensors", "carry/sci/index/codes.npy",
                    "carry/sci/evaluate/metrics.json"}
    assert violations({k: 1 for k in kept}) == []
    with open(run / "model" / "full.safetensors", "wb") as f:        # a full fine-tune: refused, carry/ untouched
        f.truncate(60 * 2**20)
    refused = _run(tmp_path, "save", "runs/sci")
    assert refused.returncode != 0 and "50 MB" in refused.stderr
    assert (tmp_path / "carry" / "sci" / "model" / "trainable.safetensors").is_file()
    shutil.rmtree(run)
    assert _run(tmp_path, "restore", "runs/sci").returncode == 0
    assert sorted(os.listdir(run)) == ["evaluate", "index", "model"]
