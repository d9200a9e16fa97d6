"""Sequential neural baselines: causality, learning on a deterministic log, save/load, BERT4Rec's layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.baselines.bert4rec import BERT4Rec, BERT4RecBaseline, BERT4RecConfig
from genrec.baselines.fmlp import FMLPBaseline, FMLPConfig, FMLPRec
from genrec.baselines.gru4rec import GRU4Rec, GRU4RecBaseline, GRU4RecConfig
from genrec.baselines.sasrec import SASRec, SASRecBCE, SASRecCE, SASRecConfig
from genrec.data.dataset import Dataset
from genrec.evaluate import Evaluator

N_ITEMS, N_USERS, SEQ_LEN, MAX_LEN = 24, 72, 10, 8
#: the baselines under test, by their registry names (imported directly, not via BASELINES)
BASELINES = {
    cls.name: cls for cls in (SASRecBCE, SASRecCE, BERT4RecBaseline, GRU4RecBaseline, FMLPBaseline)
}


def cycle_dataset() -> Dataset:
    """Every user walks the same item cycle 0 -> 1 -> ... -> 23 -> 0 from its own start."""
    users, items = [], []
    for u in range(N_USERS):
        users += [u] * SEQ_LEN
        items += [(u + k) % N_ITEMS for k in range(SEQ_LEN)]
    inter = pd.DataFrame({"user_idx": users, "item_idx": items, "timestamp": np.tile(np.arange(SEQ_LEN), N_USERS)})
    catalogue = pd.DataFrame({"title": [f"item {i}" for i in range(N_ITEMS)]})
    return Dataset(catalogue, np.array([f"u{u}" for u in range(N_USERS)]), inter)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return cycle_dataset()


pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"max_len": MAX_LEN, "dim": 32, "dropout": 0.1}
FAST = {"lr": 1e-2, "batch_size": 16, "patience": 1000, "progress": False, "device": "cpu"}
#: name -> (model config, training settings): a few epochs suffice on the cycle data, except
#: for BERT4Rec, whose attention needs a few hundred steps to find the neighbouring positions
CASES = {
    "sasrec": ({**SMALL, "heads": 2}, {**FAST, "epochs": 10}),
    "sasrec-ce": ({**SMALL, "heads": 2}, {**FAST, "epochs": 8}),
    "bert4rec": ({**SMALL, "mask_prob": 0.3}, {**FAST, "epochs": 60, "lr": 1e-3, "batch_size": 8}),
    "gru4rec": ({**SMALL, "hidden": 32}, {**FAST, "epochs": 8}),
    "fmlp": (SMALL, {**FAST, "epochs": 5, "batch_size": 32}),
}


@pytest.fixture(scope="module")
def fitted(dataset) -> dict:
    """Each model trained once on the cycle data (shared by the tests below)."""
    out = {}
    for name, (config, train) in CASES.items():
        model = BASELINES[name](config, train)
        model.fit(dataset, log=lambda *_: None)
        out[name] = model
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_loss_falls_and_beats_random(name, fitted, dataset):
    model = fitted[name]
    losses = [row["loss"] for row in model.log["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    res = Evaluator(dataset, progress=False).evaluate(model, stage="test")
    random_hr10 = 10 / N_ITEMS
    assert res.metrics["HR@10"] > 2 * random_hr10, res.metrics
    assert res.metrics["NDCG@10"] > 0.5, res.metrics


@pytest.mark.parametrize("name", list(CASES))
def test_save_load_identical_scores(name, fitted, dataset, tmp_path):
    """Saved as model.json + model.safetensors (no pickle), loaded back to the same scores; an older
    version's folder (model.pt by torch.save) loads weights-only to the same scores too."""
    model = fitted[name]
    model.save(tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["model.json", "model.safetensors"]
    old = tmp_path / "old"
    shutil.copytree(tmp_path / name, old)
    (old / "model.safetensors").unlink()
    torch.save(model.model.state_dict(), old / "model.pt")
    split = dataset.eval_split("test")
    users = np.arange(N_USERS)
    expected = model.score(split.histories, users)
    for folder in (tmp_path / name, old):
        back = BASELINES[name].load(folder, device="cpu")
        assert np.array_equal(back.score(split.histories, users), expected)


def test_a_killed_fit_resumes_from_its_checkpoint_to_the_uninterrupted_scores(dataset, tmp_path):
    """Killed after epoch 2's checkpoint, a fit resumes at epoch 3 to the scores of one that ran
    through (dropout: the RNG states come back too), from this version's last.pt (the numpy RNG
    state as JSON text) and from an older one's (the state as a dict); a planted last.pt is
    refused and runs nothing."""
    from genrec.errors import DataError
    from tests.conftest import plant_pickle

    config, train = CASES["sasrec-ce"]
    train = {**train, "epochs": 4}
    split = dataset.eval_split("test")
    users = np.arange(N_USERS)

    def fit(folder, log=lambda *_: None):
        model = BASELINES["sasrec-ce"](config, train)
        model.fit(dataset, checkpoint_dir=folder, log=log)
        return model.score(split.histories, users)

    def kill_at_epoch_3(line: str) -> None:
        if " epoch 3:" in line:
            raise KeyboardInterrupt(line)

    whole = fit(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut", kill_at_epoch_3)
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and isinstance(state["rng"], str)
    shutil.copytree(tmp_path / "cut", tmp_path / "old")
    torch.save({**state, "rng": json.loads(state["rng"])}, tmp_path / "old" / "last.pt")  # as older versions wrote
    for folder in ("cut", "old"):
        lines: list[str] = []
        resumed = fit(tmp_path / folder, lines.append)
        assert lines[0].startswith("resumed from") and "at epoch 3" in lines[0]
        np.testing.assert_allclose(resumed, whole, rtol=1e-5, atol=1e-6)
    marker = tmp_path / "planted-code-ran"
    plant_pickle(tmp_path / "old" / "last.pt", marker)
    with pytest.raises(DataError, match=r"last\.pt"):
        fit(tmp_path / "old")
    assert not marker.exists()


def causal_models() -> dict:
    torch.manual_seed(0)
    return {
        "sasrec": SASRec(N_ITEMS, N_USERS, SASRecConfig(**SMALL, heads=2)),
        "gru4rec": GRU4Rec(N_ITEMS, N_USERS, GRU4RecConfig(**SMALL, hidden=32)),
    }


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_no_future_leakage(name):
    model = causal_models()[name].eval()
    rng = np.random.default_rng(0)
    seq = torch.from_numpy(rng.integers(1, N_ITEMS + 1, size=(4, MAX_LEN)))
    seq[1, :3] = 0  # some left padding too
    with torch.no_grad():
        base = model.encode(seq)
        for t in range(3, MAX_LEN - 1):
            changed = seq.clone()
            changed[:, t + 1] = changed[:, t + 1] % N_ITEMS + 1
            out = model.encode(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"position {t} saw position {t + 1}"
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_gru4rec_ignores_padding_length():
    model = causal_models()["gru4rec"].eval()
    items = torch.tensor([[3, 7, 1, 9]])
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), items], dim=1)
    with torch.no_grad():
        assert torch.allclose(model.encode(items), model.encode(padded)[:, 4:], atol=1e-6)


def test_bert4rec_is_bidirectional_in_training_layout():
    torch.manual_seed(0)
    model = BERT4Rec(N_ITEMS, N_USERS, BERT4RecConfig(**SMALL)).eval()
    seq = torch.tensor([[0, 0, 4, 5, model.mask_id, 7, 8, 9]])
    later = seq.clone()
    later[0, 6] = 20
    with torch.no_grad():
        assert not torch.allclose(model.encode(seq)[0, 4], model.encode(later)[0, 4])


def test_bert4rec_inference_mask_sees_whole_history():
    torch.manual_seed(0)
    model = BERT4Rec(N_ITEMS, N_USERS, BERT4RecConfig(**SMALL))
    history = np.arange(MAX_LEN - 1)
    first_changed = history.copy()
    first_changed[0] = 20
    users = np.zeros(1, dtype=np.int64)
    base = model.score([history], users)
    assert not np.allclose(base, model.score([first_changed], users))
    # the mask takes the last slot: only the most recent max_len - 1 items are seen
    longer = np.concatenate([[15, 16, 17], history])
    assert np.array_equal(base, model.score([longer], users))


def test_bert4rec_batches_mask_items_only(dataset):
    model = BERT4Rec(N_ITEMS, N_USERS, BERT4RecConfig(**SMALL))
    for batch in model.batches(dataset, 16, np.random.default_rng(0)):
        inp, tgt = batch["input"], batch["target"]
        masked = inp == model.mask_id
        assert torch.equal(masked, tgt > 0)
        assert masked.any(dim=1).all()
        assert (tgt[masked] >= 1).all() and (tgt[masked] <= N_ITEMS).all()


def test_fmlp_trains_on_every_prefix(dataset):
    model = FMLPRec(N_ITEMS, N_USERS, FMLPConfig(**SMALL))
    rows = []
    for batch in model.batches(dataset, 16, np.random.default_rng(0)):
        rows += list(zip(batch["input"].tolist(), batch["target"].tolist(), strict=True))
    train = dataset.train_sequences()
    assert len(rows) == sum(len(s) - 1 for s in train)
    expected = sorted(
        (tuple([0] * max(MAX_LEN - k, 0) + [int(i) + 1 for i in s[max(k - MAX_LEN, 0) : k]]), int(s[k]) + 1)
        for s in train
        for k in range(1, len(s))
    )
    assert sorted((tuple(i), t) for i, t in rows) == expected


def test_registered():
    from genrec.registry import BASELINES as registry

    for name, cls in BASELINES.items():
        assert registry[name] is cls
