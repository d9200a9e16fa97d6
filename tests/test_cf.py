"""Graph CF models: the training graph, BPR sampling, LightGCN and DCCF, the embedding artifact."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.cf.dccf import DCCF, DCCFBaseline, DCCFConfig
from genrec.cf.graph import BipartiteGraph, BPRSampler, normalized_adjacency, training_pairs
from genrec.cf.lightgcn import LightGCN, LightGCNBaseline, LightGCNConfig
from genrec.data.dataset import Dataset
from genrec.training.config import TrainConfig
from genrec.training.trainer import fit

QUIET = {"progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_dataset(seqs: list[list[int]], n_items: int) -> Dataset:
    """A Dataset from per-user chronological item sequences."""
    rows = [(u, i, t) for u, s in enumerate(seqs) for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    items = pd.DataFrame({"item_id": [str(i) for i in range(n_items)], "title": [f"t{i}" for i in range(n_items)]})
    return Dataset(items, np.array([f"u{u}" for u in range(len(seqs))]), inter)


def grouped_dataset(groups: int = 4, users_per_group: int = 30, items_per_group: int = 12, length: int = 8,
                    seed: int = 0) -> Dataset:
    """Disjoint user groups, each interacting only with its own disjoint item set."""
    rng = np.random.default_rng(seed)
    seqs = []
    for g in range(groups):
        for _ in range(users_per_group):
            seqs.append((g * items_per_group + rng.choice(items_per_group, length, replace=False)).tolist())
    return make_dataset(seqs, groups * items_per_group)


@pytest.fixture(scope="module")
def grouped() -> Dataset:
    return grouped_dataset()


# graph -------------------------------------------------------------------------------
def test_adjacency_matches_hand_built_graph():
    # training parts: u0 {0, 1} (item 0 twice), u1 {1, 2}; items 3 and 4 only in valid/test
    ds = make_dataset([[0, 1, 0, 3, 4], [1, 2, 4, 3]], n_items=5)
    users, items = training_pairs(ds)
    assert list(zip(users.tolist(), items.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    adj = normalized_adjacency(users, items, ds.n_users, ds.n_items).to_dense().numpy()
    # nodes: u0=0, u1=1, i0=2, i1=3, i2=4, i3=5, i4=6; degrees u0 2, u1 2, i0 1, i1 2, i2 1
    expected = np.zeros((7, 7))
    for u, i, value in [(0, 2, 1 / math.sqrt(2 * 1)), (0, 3, 1 / math.sqrt(2 * 2)),
                        (1, 3, 1 / math.sqrt(2 * 2)), (1, 4, 1 / math.sqrt(2 * 1))]:
        expected[u, i] = expected[i, u] = value
    np.testing.assert_allclose(adj, expected, rtol=1e-6)
    # the edge-list product agrees with the sparse tensor, and its values' gradient with autograd
    graph = BipartiteGraph(torch.from_numpy(users), torch.from_numpy(items), ds.n_users, ds.n_items)
    x = torch.randn(7, 3, dtype=torch.float32)
    np.testing.assert_allclose(graph.propagate(x).numpy(), expected.astype(np.float32) @ x.numpy(), rtol=1e-5)
    w = torch.rand(graph.n_edges, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    (graph.spmm(w, xg) ** 2).sum().backward()
    w2 = w.detach().clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    dense = torch.zeros(7, 7).index_put((graph.heads, graph.tails), w2)
    ((dense @ x2) ** 2).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(xg.grad, x2.grad)


def test_graph_uses_only_training_interactions(grouped):
    users, items = training_pairs(grouped)
    train = {(u, i) for u, s in enumerate(grouped.train_sequences()) for i in s.tolist()}
    assert set(zip(users.tolist(), items.tolist(), strict=True)) == train
    for u, s in enumerate(grouped.sequences):  # validation and test items are never edges
        for i in s[-2:].tolist():
            assert (u, i) not in train
    adj = normalized_adjacency(users, items, grouped.n_users, grouped.n_items).coalesce()
    assert adj.values().numel() == 2 * len(train)
    model = LightGCN(grouped.n_items, grouped.n_users, LightGCNConfig(dim=4))
    model.prepare(grouped)
    pairs = set(zip(model.edge_users.tolist(), model.edge_items.tolist(), strict=True))
    assert pairs == train


def test_bpr_negatives_are_never_training_positives():
    ds = grouped_dataset(groups=2, users_per_group=20, items_per_group=10, length=9)  # 7 of 10 items each
    users, items = training_pairs(ds)
    sampler = BPRSampler(users, items, ds.n_users, ds.n_items)
    train = [set(s.tolist()) for s in ds.train_sequences()]
    batches = list(sampler.batches(64, np.random.default_rng(0), n=5000))
    u = torch.cat([b["users"] for b in batches]).numpy()
    p = torch.cat([b["pos"] for b in batches]).numpy()
    n = torch.cat([b["neg"] for b in batches]).numpy()
    assert len(u) == 5000
    assert all(pi in train[ui] for ui, pi in zip(u, p, strict=True))
    assert not any(ni in train[ui] for ui, ni in zip(u, n, strict=True))
    assert len(np.unique(n)) > 10  # negatives reach items outside the user's group too


# models ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_cls", "cfg"),
    [(LightGCN, LightGCNConfig(dim=16)), (DCCF, DCCFConfig(dim=16, intents=8))],
)
def test_loss_falls(grouped, model_cls, cfg):
    torch.manual_seed(0)
    model = model_cls(grouped.n_items, grouped.n_users, cfg)
    model.prepare(grouped)
    batch = next(model._sampler.batches(512, np.random.default_rng(1)))

    def bpr() -> float:
        with torch.no_grad():
            users, items = model.propagate_fp32()
            return float(model.bpr(users[batch["users"]], items[batch["pos"]], items[batch["neg"]]))

    before = bpr()
    # fit keeps the epoch with the best validation NDCG@10; unmasked, that is a late one here
    log = fit(model, grouped, TrainConfig(epochs=15, batch_size=64, lr=1e-2, patience=100, mask_history=False, **QUIET),
              log=lambda s: None)
    losses = [h["loss"] for h in log["history"]]
    # DCCF's total is mostly InfoNCE at temperature 1, which has a high floor on 48 items
    assert losses[-1] < 0.9 * losses[0], losses
    assert bpr() < 0.5 * before, (before, bpr())


@pytest.mark.parametrize("baseline", [LightGCNBaseline, DCCFBaseline])
def test_save_load_gives_identical_scores(grouped, tmp_path, baseline):
    cfg = {"dim": 8} if baseline is LightGCNBaseline else {"dim": 8, "intents": 4}
    model = baseline(cfg, {"epochs": 2, "batch_size": 64, **QUIET})
    model.fit(grouped, seed=1, log=lambda s: None)
    model.save(tmp_path / "m")
    back = baseline.load(tmp_path / "m", device="cpu")
    users = np.arange(grouped.n_users)
    before, after = model.score([], users), back.score([], users)
    assert before.shape == (grouped.n_users, grouped.n_items)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(model.item_embeddings(), back.item_embeddings())


def test_eval_cache_follows_parameter_updates(grouped):
    model = LightGCN(grouped.n_items, grouped.n_users, LightGCNConfig(dim=8))
    model.prepare(grouped)
    first = model.score([], np.arange(3))
    assert np.array_equal(first, model.score([], np.arange(3)))
    with torch.no_grad():
        model.item_emb.weight.add_(1.0)
    assert not np.allclose(first, model.score([], np.arange(3)))


def test_dccf_puts_co_interacted_items_closer(grouped):
    model = DCCFBaseline({"dim": 16, "intents": 8}, {"epochs": 30, "batch_size": 128, "lr": 1e-2, **QUIET})
    model.fit(grouped, seed=0, log=lambda s: None)
    emb = model.item_embeddings()
    assert emb.shape == (grouped.n_items, 16) and emb.dtype == np.float32
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = unit @ unit.T
    co = set()
    for s in grouped.train_sequences():
        co.update((a, b) for a in s.tolist() for b in s.tolist() if a < b)
    co_mean = float(np.mean([cos[a, b] for a, b in co]))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, grouped.n_items, (2, 5000))
    keep = a != b
    random_mean = float(cos[a[keep], b[keep]].mean())
    assert co_mean > random_mean + 0.3, (co_mean, random_mean)


# artifact and command ----------------------------------------------------------------
def test_cf_train_command_writes_embeddings_and_skips_rerun(cli, grouped, tmp_path):
    data = tmp_path / "data"
    grouped.save(data)
    out = tmp_path / "emb"
    code, stdout, err = cli("cf", "train", "dccf", "--data", data, "--out", out, "--dim", "8", "--epochs", "2")
    assert code == 0, err
    emb = np.load(out / "item_embeddings.npy")
    assert emb.shape == (grouped.n_items, 8) and emb.dtype == np.float32
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"] == "dccf" and manifest["config"]["dim"] == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"valid", "test"} <= set(metrics) and "NDCG@10" in metrics["test"]["metrics"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "train_log.txt").read_text()
    assert "NDCG@10" in stdout and str(out) in stdout
    code, stdout2, err = cli("cf", "train", "dccf", "--data", data, "--out", out, "--dim", "8", "--epochs", "2")
    assert code == 0, err
    assert "up to date" in stdout2
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_cf_train_sasrec_embeddings(grouped, tmp_path):
    from genrec.config import CFSection
    from genrec.stages import stage_cf

    data = tmp_path / "data"
    grouped.save(data)
    res = stage_cf(data, tmp_path / "sas", CFSection(model="sasrec", dim=8, train={"epochs": 1, **QUIET}), log=None)
    emb = np.load(res.path / "item_embeddings.npy")
    assert emb.shape == (grouped.n_items, 8) and not res.skipped


@pytest.mark.parametrize("model", ["lightgcn", "dccf"])
def test_a_killed_cf_stage_resumes_to_the_uninterrupted_embeddings(grouped, tmp_path, model):
    from genrec.config import CFSection
    from genrec.stages import stage_cf

    data = tmp_path / "data"
    grouped.save(data)
    train = {"epochs": 4, "patience": 100, **QUIET}
    whole = stage_cf(data, tmp_path / "whole", CFSection(model=model, dim=8, train=train), log=None)

    def kill_at_epoch_3(line: str) -> None:
        if " epoch 3:" in line:
            raise KeyboardInterrupt(line)

    with pytest.raises(KeyboardInterrupt):
        stage_cf(data, tmp_path / "cut", CFSection(model=model, dim=8, train=train), log=kill_at_epoch_3)
    assert not (tmp_path / "cut").exists() and len(list(tmp_path.glob(".ckpt-cut-*/last.pt"))) == 1
    lines: list[str] = []
    resumed = stage_cf(data, tmp_path / "cut", CFSection(model=model, dim=8, train=train), log=lines.append)
    assert lines[0].startswith("resumed from") and "at epoch 3" in lines[0] and len(lines) == 3  # epochs 3 and 4
    np.testing.assert_allclose(np.load(resumed.path / "item_embeddings.npy"), np.load(whole.path / "item_embeddings.npy"),
                               rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".ckpt-cut-*"))  # the checkpoint goes once the stage is built
