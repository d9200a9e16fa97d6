"""Decoding arithmetic: bf16 (autocast) and int8 (dynamically quantised linear layers) keep every
item's score within a tolerance of fp32's, so their lists are near-optimal under fp32's scores;
bf16 falls back to fp32 on a CPU without native bf16. On the tiny trained recipe run (trie
softmax, codes prompt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.errors import GenrecError

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"bf16": 0.03, "int8": 0.05}  # nats; observed on this model: about 0.005 and 0.007


def load(run, **kw):
    from genrec.decode.recommender import GenerativeRecommender

    return GenerativeRecommender.load(run / "model", run / "index", device="cpu", **kw)


@pytest.fixture(scope="module")
def users(recipe_run):
    from genrec.data.dataset import Dataset

    ds = Dataset.load(recipe_run / "data")
    split = ds.eval_split("test")
    return [split.histories[u] for u in np.flatnonzero(split.targets >= 0)[:12]], ds.n_items


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_precision_scores_stay_within_tolerance_and_lists_stay_near_optimal(recipe_run, users, precision):
    from genrec.llm.backbone import cpu_has_bf16

    histories, n_items = users
    every = np.tile(np.arange(n_items), (len(histories), 1))
    ref_rec, rec = load(recipe_run, precision="fp32"), load(recipe_run, precision=precision)
    ref, got = ref_rec.score_items(histories, every), rec.score_items(histories, every)
    err = np.abs(got - ref).max()
    assert err <= TOL[precision]
    if precision == "int8" or cpu_has_bf16():
        assert err > 0  # the arithmetic did change
    if precision == "int8":  # a quantised copy of the body decodes; the model itself is left alone
        from torch.ao.nn.quantized.dynamic import Linear as QuantisedLinear

        mods = list(rec.decoder.module.modules())
        assert any(isinstance(m, QuantisedLinear) for m in mods)
        assert not any(type(m) is torch.nn.Linear for m in mods)
        assert any(isinstance(m, torch.nn.Linear) for m in rec.lm.body.modules())
    k = 5
    res = rec.rank_scored(histories, k, beams=n_items)  # beams >= items: the exact ranking under its own scores
    best = -np.sort(-ref, axis=1)[:, :k]
    # int8 quantises activations with one scale per batch of rows: other rows batched, other rounding
    batch_tol = 1e-2 if precision == "int8" else 1e-4
    for u in range(len(histories)):
        np.testing.assert_allclose(res.scores[u], got[u, res.items[u]], rtol=0, atol=batch_tol)
        # every score within err of fp32's: the i-th item it picks is within 2 err of fp32's i-th best
        assert np.all(ref[u, res.items[u]] >= best[u] - 2 * (err + batch_tol))


def test_bf16_falls_back_to_fp32_where_the_cpu_has_no_native_bf16(recipe_run, users, monkeypatch):
    import genrec.llm.backbone as backbone

    histories, n_items = users
    every = np.tile(np.arange(n_items), (len(histories), 1))
    ref = load(recipe_run, precision="fp32").score_items(histories, every)
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda *a: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        rec = load(recipe_run, precision="bf16")
    assert rec.dtype == torch.float32
    np.testing.assert_array_equal(rec.score_items(histories, every), ref)
    assert load(recipe_run, precision="auto").dtype == torch.float32
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda *a: True)
    assert load(recipe_run, precision="auto").dtype == torch.bfloat16
    assert load(recipe_run, precision="bf16").dtype == torch.bfloat16


def test_an_unknown_precision_is_refused_naming_it(recipe_run):
    with pytest.raises(GenrecError, match="precision 'fp8'"):
        load(recipe_run, precision="fp8")


def test_genrec_evaluate_takes_a_precision(recipe_run, cli):
    import json

    args = ["evaluate", "--model", recipe_run / "model", "--index", recipe_run / "index", "--data", recipe_run / "data",
            "--users", 8, "--beams", 4, "--json"]
    code, own, err = cli(*args)
    assert code == 0, err
    code, fp32, err = cli(*args, "--precision", "fp32")  # the tiny run trained in fp32: its own precision
    assert code == 0, err
    assert json.loads(fp32)["precision"] == "fp32" and json.loads(own)["precision"] is None
    assert json.loads(fp32)["metrics"] == json.loads(own)["metrics"]
    code, int8, err = cli(*args, "--precision", "int8")
    assert code == 0, err
    assert json.loads(int8)["n_users"] == json.loads(own)["n_users"] and 0 <= json.loads(int8)["metrics"]["NDCG@10"] <= 1
    code, _, err = cli(*args, "--precision", "fp8")
    assert code != 0 and "--precision 'fp8'" in err


def test_save_pretrained_keeps_the_precision(recipe_run, tmp_path):
    import json

    from genrec.decode.recommender import GenerativeRecommender

    folder = load(recipe_run, precision="int8").save_pretrained(tmp_path / "rec")
    assert json.loads((folder / "recommender.json").read_text())["precision"] == "int8"
    assert GenerativeRecommender.from_pretrained(folder, device="cpu").precision == "int8"
    assert GenerativeRecommender.from_pretrained(folder, device="cpu", precision="fp32").dtype == torch.float32
