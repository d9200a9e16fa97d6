"""TIGER-style encoder-decoder on an item index's codes: it learns a deterministic log, its beam
search equals exhaustive scoring of every item's code tuple, and save/load keeps its lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.decode.tiger import BOS, TigerBaseline, code_tokens
from genrec.evaluate import Evaluator
from genrec.index.base import ItemIndex
from genrec.registry import BASELINES
from tests.test_sequential_baselines import N_ITEMS, N_USERS, cycle_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    ds = cycle_dataset()
    folder = tmp_path_factory.mktemp("tiger")
    rng = np.random.default_rng(0)
    codes = np.array([(i // 6, (i * 5) % 6) for i in rng.permutation(N_ITEMS)])  # 4 x 6 codes, all distinct
    ItemIndex.from_codes("alignment", codes, [4, 6]).save(folder / "index")
    model = TigerBaseline({"index": str(folder / "index"), "max_len": 8, "dim": 32, "heads": 2, "ff": 64, "layers": 1,
                           "dropout": 0.0, "beams": 8},
                          {"lr": 1e-2, "batch_size": 32, "epochs": 12, "eval_every": 4, "patience": 1000, "progress": False,
                           "device": "cpu"})
    model.fit(ds, log=lambda *_: None)
    return ds, model, folder


def test_code_tokens_by_hand():
    codes = np.array([[0, 2], [3, 0]])
    assert code_tokens(codes, [4, 6]).tolist() == [[2, 8], [5, 6]]  # level 1 starts after 2 + 4


def test_learns_the_cycle_and_goes_through_the_shared_evaluator(fitted):
    ds, model, _ = fitted
    losses = [row["loss"] for row in model.log["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    res = Evaluator(ds, progress=False).evaluate(model, stage="test")
    assert res.metrics["HR@1"] > 0.5, res.metrics  # random: 1/24
    assert "tiger" in BASELINES


def test_beam_search_equals_exhaustive_scoring_and_survives_save_load(fitted, tmp_path):
    ds, model, _ = fitted
    net = model.model.eval()
    saved_cfg = net.cfg
    net.cfg = net.cfg.model_copy(update={"beams": N_ITEMS})  # nothing pruned: the exact ranking
    split = ds.eval_split("test")
    hist = [split.histories[u] for u in range(5)]
    ranked = net.rank(hist, np.arange(5), k=N_ITEMS)
    with torch.no_grad():
        enc = net.history_tokens(hist)
        for r in range(5):
            memory, pad = net.encode(enc[r : r + 1])
            scores = []
            for item in range(N_ITEMS):
                tup = net.tokens[item]
                written = torch.cat([torch.tensor([BOS]), tup[:-1]])[None]
                logp = torch.log_softmax(net.logits(net.decode(written, memory, pad))[0], -1)
                scores.append(float(sum(logp[j, tup[j]] for j in range(len(tup)))))
            assert ranked[r].tolist() == np.argsort(-np.array(scores), kind="stable").tolist()
    net.cfg = saved_cfg
    model.save(tmp_path / "m")
    back = TigerBaseline.load(tmp_path / "m", device="cpu")
    users = np.arange(N_USERS)
    assert np.array_equal(back.rank(split.histories, users, 10), model.rank(split.histories, users, 10))
