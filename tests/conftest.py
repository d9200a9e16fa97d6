from __future__ import annotations

from pathlib import Path

import pytest

from genrec.cli import main

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str) -> Path:
    """Path of a benchmark dataset under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"benchmark data {path} is absent (it lives in ../shared/data beside the repo)")
    return path


def tiny_shop(root: Path, codes_per_level: int = 8, mean_length: int = 6):
    """(dataset, index) of a small seeded synthetic shop saved under ``root`` (``data/``, ``index/``):
    40 users, 30 items, 2-core, and a 2-level alignment index of distinct random codes."""
    import numpy as np

    from genrec.data.loaders import load_raw
    from genrec.data.preprocess import PrepareConfig, preprocess
    from genrec.data.synth import SynthConfig, write
    from genrec.index.base import ItemIndex

    write(SynthConfig(n_users=40, n_items=30, seed=2, mean_length=mean_length), root / "raw")
    ds = preprocess(load_raw(root / "raw"), PrepareConfig(kcore=2))
    ds.save(root / "data")
    rng = np.random.default_rng(0)
    n = codes_per_level
    codes = np.array(sorted({(int(a), int(b)) for a, b in rng.integers(0, n, size=(400, 2))})[: ds.n_items])
    index = ItemIndex.from_codes("alignment", codes[rng.permutation(len(codes))], [n, n])
    index.save(root / "index")
    return ds, index


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """(root, dataset) of :func:`tiny_shop`, built once per test module."""
    root = tmp_path_factory.mktemp("shop")
    ds, _ = tiny_shop(root)
    return root, ds


@pytest.fixture
def cli(capsys):
    """Run the genrec CLI in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def real_tokenizer(tmp_path_factory):
    """The default backbone's real tokenizer (read once from the GGUF file, then from a folder)."""
    pytest.importorskip("transformers")
    from genrec.llm.backbone import load_tokenizer

    tok = load_tokenizer("default")
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def tokenizer(real_tokenizer):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_tokenizer)


@pytest.fixture(scope="session")
def tiny_backbone(real_tokenizer, tmp_path_factory):
    """A tiny randomly initialised Llama with the real tokenizer, saved as a local model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def recipe_run(tiny_backbone, tmp_path_factory):
    """A finished `genrec run` of the recipe of configs/scientific.yaml on a tiny synthetic shop (codes prompt, trie
    softmax, a 1-layer cut of the tiny backbone, SASRec-CE distillation), with a two-level code index in place of
    the recipe's cluster-then-item levels, so the new-item tests that share it have codebooks for every level
    (the item level is run end to end in tests/test_recipe.py): the run folder, with its config beside it as
    ``run.yaml``. Read-only for the tests that share it."""
    import yaml

    from genrec.cli import main

    root = tmp_path_factory.mktemp("recipe")
    cfg = {
        "name": "recipe", "run_dir": str(root / "run"), "seed": 0,
        "data": {"source": "synth", "synth": {"n_users": 60, "n_items": 40, "seed": 3}, "prepare": {"kcore": 2}},
        "baselines": [], "backbone": str(tiny_backbone),
        "baseline_params": {"sasrec-ce": {"train": {"epochs": 2}}},
        "cf": {"model": "lightgcn", "dim": 8, "train": {"epochs": 2}},
        "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 8, "epochs": 3, "progress": False}},
        "tasks": {"tasks": ["seq"], "layout": "all_positions", "negatives_per_positive": 0, "prompt": "codes"},
        "train": {"mode": "full", "train_text_rows": False, "softmax": "trie", "layers": 1, "dtype": "fp32", "lr": 3e-3,
                  "code_init": "scaled", "untie_codes": True, "code_lr": 1e-2, "epochs": 3, "batch_size": 8,
                  "select_users": 20, "select_beams": 5, "patience": 2, "save_every": 1000, "distill": {"weight": 0.5}},
        "decode": {"beams": 5, "batch_users": 8, "pop_alpha": [0.0, 0.5, 2.0], "select_users": 20},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def idlevel_run(tiny_backbone, tmp_path_factory):
    """A finished `genrec run` of the shipped index form (configs/scientific.yaml) on a tiny synthetic shop:
    an alignment index of one cluster level (4 codes), then each item's own token; a trie-softmax full
    fine-tune of a 1-layer cut of the tiny Llama; evaluated with beam 5. Read-only for the tests that share it."""
    import yaml

    from genrec.cli import main

    root = tmp_path_factory.mktemp("idlevel")
    cfg = {
        "name": "idlevel", "run_dir": str(root / "run"), "seed": 0,
        "data": {"source": "synth", "synth": {"n_users": 40, "n_items": 30, "seed": 3}, "prepare": {"kcore": 2}},
        "baselines": [], "backbone": str(tiny_backbone),
        "cf": {"model": "lightgcn", "dim": 8, "train": {"epochs": 2}},
        "index": {"method": "alignment", "config": {"levels": 1, "codebook_size": 4, "epochs": 2, "progress": False},
                  "id_level": True},
        "tasks": {"tasks": ["seq"], "layout": "all_positions", "negatives_per_positive": 0, "prompt": "codes"},
        "train": {"mode": "full", "train_text_rows": False, "softmax": "trie", "layers": 1, "dtype": "fp32", "lr": 3e-3,
                  "code_init": "scaled", "untie_codes": True, "code_lr": 1e-2, "epochs": 2, "batch_size": 8,
                  "save_every": 1000},
        "decode": {"beams": 5, "batch_users": 8},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def query_run(tiny_backbone, tmp_path_factory):
    """A finished `genrec run` of the recipe's prompt form with the ``seq_query`` task beside ``seq``
    (requests in words, the first position of each sequence with no history) on a tiny synthetic
    shop, without distillation or model selection: the run folder. Read-only for the tests that share it."""
    import yaml

    from genrec.cli import main

    root = tmp_path_factory.mktemp("query")
    cfg = {
        "name": "query", "run_dir": str(root / "run"), "seed": 0,
        "data": {"source": "synth", "synth": {"n_users": 40, "n_items": 24, "seed": 4}, "prepare": {"kcore": 2}},
        "baselines": [], "backbone": str(tiny_backbone),
        "cf": {"model": "lightgcn", "dim": 8, "train": {"epochs": 2}},
        "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 8, "epochs": 2, "progress": False}},
        "tasks": {"tasks": ["seq", "seq_query"], "layout": "all_positions", "negatives_per_positive": 0, "prompt": "codes"},
        "train": {"mode": "full", "train_text_rows": False, "softmax": "trie", "layers": 1, "dtype": "fp32", "lr": 3e-3,
                  "code_init": "scaled", "untie_codes": True, "code_lr": 1e-2, "epochs": 2, "batch_size": 8,
                  "save_every": 1000, "task_fraction": {"seq_query": 0.5}},
        "decode": {"beams": 5, "batch_users": 8},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a busy 2-core machine (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def launch_two(*args: str, timeout: int = 600):
    """Run ``python -m genrec ARGS`` as 2 processes under `accelerate launch` (gloo on a CPU machine:
    --multi_gpu selects accelerate's torchrun launcher; --cpu would start one process)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genrec", *map(str, args)]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout)


class _RunsOnLoad:
    """Unpickling this runs a shell command: what a pickle planted in a model folder could do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def plant_pickle(path: Path, marker: Path) -> Path:
    """Write to ``path`` a torch.save file whose unpickling creates ``marker``."""
    import shlex

    import torch

    torch.save({"payload": _RunsOnLoad(f"touch {shlex.quote(str(marker))}")}, path)
    return path


def unpickle_in_full(path: Path) -> None:
    """Unpickle a torch.save file with the plain pickle module: what loading it without
    ``weights_only`` would do, to show that a planted file is live."""
    import pickle
    import zipfile

    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pickle.loads(z.read(name))


class LiveServer:
    """An app served by uvicorn on a free loopback port in a thread (real concurrency, one event
    loop, as `genrec serve` runs it); ``get``/``post`` return (status, JSON body, seconds)."""

    def __init__(self, app):
        import socket
        import threading
        import time

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("the test server did not start")

    def request(self, method: str, path: str, body=None, timeout: float = 60):
        import json
        import time
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, json.loads(raw), time.perf_counter() - start  # every answer is JSON (a 500 would not be)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body, **kw):
        return self.request("POST", path, body, **kw)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live():
    """``live(app)`` serves ``app`` for the test (see LiveServer); stopped afterwards."""
    servers = []

    def start(app) -> LiveServer:
        servers.append(LiveServer(app))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
