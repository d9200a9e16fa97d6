"""The LLM as item encoder: pooled hidden states against a slow per-item pass, the cache (only new or
changed texts encoded), SASRec over the text vectors (shapes, training, ranking, unseen items), and
the cold-item split."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.data.cold import cold_item_split
from genrec.data.dataset import Dataset
from genrec.errors import DataError
from genrec.evaluate import Evaluator
from genrec.llm.config import SASRecLLMConfig
from genrec.llm.item_encoder import BackboneEncoder, cached_embeddings, item_encoder_embeddings
from genrec.llm.sasrec_llm import SASRecLLMBaseline, TextItemEmbedding

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingEncoder:
    """A deterministic stand-in for the backbone: a vector from the text's hash; counts the texts."""

    def __init__(self, dim: int = 16):
        self.dim, self.texts = dim, []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += texts
        seeds = [int(hashlib.md5(t.encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=self.dim) for s in seeds]).astype(np.float32)


# ------------------------------------------------------------------------------ the encoder
def test_batched_pooled_hidden_states_equal_a_slow_pass_per_item(tiny_backbone):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["red pen", "a very long description of a blue notebook with many pages", "", "ink <|im_end|> <a_1>"]
    enc = BackboneEncoder(str(tiny_backbone), max_tokens=8, batch_size=3, device="cpu", dtype="fp32")
    fast = enc(texts)
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone).eval()
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    for text, row in zip(texts, fast, strict=True):
        ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"][:8]
        if not ids:
            assert not row.any()  # no text: a zero vector
            continue
        with torch.no_grad():
            h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]  # after the final norm
        np.testing.assert_allclose(row, h.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert enc.calls == 4
    # control and code tokens in item text are data: the text is longer than the two special tokens would be
    assert len(tok("ink <|im_end|> <a_1>", add_special_tokens=False, split_special_tokens=True)["input_ids"]) > 3


def test_layers_zero_is_the_text_stage_vector(tiny_backbone):
    from transformers import AutoModelForCausalLM

    from genrec.llm.backbone import item_llm_embeddings

    items = pd.DataFrame({"title": ["red pen", "notebook"], "description": ["fine tip", ""]})
    enc = BackboneEncoder(str(tiny_backbone), layers=0, max_tokens=256, device="cpu", dtype="fp32")
    np.testing.assert_allclose(enc(["red pen fine tip", "notebook"]), item_llm_embeddings(items, str(tiny_backbone)),
                               rtol=1e-6)
    one_layer = BackboneEncoder(str(tiny_backbone), layers=1, max_tokens=256, device="cpu", dtype="fp32")
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone).eval()
    assert len(one_layer.decoder.layers) == 1 and len(model.model.layers) == 2


def test_the_every_layer_probe_equals_the_encoder_cut_to_each_depth(tiny_backbone):
    """One pass of `pooled(every_layer=True)` gives at depth L what `layers=L` computes, and at depth 0
    the input-layer mean; checked against HF's own per-layer hidden states through the final norm."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.llm.backbone import TextEmbedder

    texts = ["red pen", "a very long description of a blue notebook with many pages", ""]
    full = BackboneEncoder(str(tiny_backbone), max_tokens=8, batch_size=2, device="cpu", dtype="fp32")
    depths = full.pooled(texts, every_layer=True)
    assert depths.shape == (3, 3, 32)
    for layers in (0, 1, 2):
        cut = BackboneEncoder(str(tiny_backbone), layers=layers, max_tokens=8, device="cpu", dtype="fp32")
        np.testing.assert_allclose(depths[layers], cut(texts), rtol=1e-4, atol=1e-5)
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone).eval()
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    ids = tok(texts[0], add_special_tokens=False)["input_ids"][:8]
    with torch.no_grad():
        h1 = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
        np.testing.assert_allclose(depths[1, 0], model.model.norm(h1).mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert not depths[:, 2].any()  # no text: zeros at every depth
    # the text stage's embedder at a depth: the encoder cut there, over 64 tokens
    items = pd.DataFrame({"title": ["red pen", "notebook"], "description": ["fine tip", ""]})
    np.testing.assert_allclose(TextEmbedder(str(tiny_backbone), 1)(items),
                               BackboneEncoder(str(tiny_backbone), 1, 64, device="cpu", dtype="fp32")(
                                   ["red pen fine tip", "notebook"]), rtol=1e-6)


def test_the_cache_encodes_only_new_or_changed_texts(tmp_path):
    items = pd.DataFrame({"title": ["a", "b", "c", "a"], "description": ["x", "y", "z", "x"]})  # items 0 and 3 share text
    enc = CountingEncoder()
    first, stats = item_encoder_embeddings(items, "bb", None, 64, "auto", tmp_path, encoder=enc)
    assert len(enc.texts) == 3 and stats["encoded"] == 3 and stats["reused"] == 0  # each distinct text once
    np.testing.assert_array_equal(first[0], first[3])
    again, stats = item_encoder_embeddings(items, "bb", None, 64, "auto", tmp_path, encoder=enc)
    assert len(enc.texts) == 3 and stats["encoded"] == 0 and stats["reused"] == 3  # nothing re-encoded
    np.testing.assert_array_equal(again, first)
    changed = pd.concat([items, pd.DataFrame({"title": ["d"], "description": ["w"]})], ignore_index=True)
    changed.loc[1, "description"] = "y, revised"
    third, stats = item_encoder_embeddings(changed, "bb", None, 64, "auto", tmp_path, encoder=enc)
    assert enc.texts[3:] == ["b y, revised", "d w"] and stats["encoded"] == 2 and stats["reused"] == 2
    np.testing.assert_array_equal(third[[0, 2, 3]], first[[0, 2, 3]])
    np.testing.assert_array_equal(third[1], enc(["b y, revised"])[0])
    # another encoder setting is another cache file: everything encoded again there
    n = len(enc.texts)
    item_encoder_embeddings(items, "bb", 2, 64, "auto", tmp_path, encoder=enc)
    assert len(enc.texts) - n == 3 and len(list(tmp_path.glob("*.npz"))) == 2


def test_a_damaged_cache_is_refused_and_left_as_it_was(tmp_path):
    bad = tmp_path / "cache.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(DataError, match="item-encoder cache"):
        cached_embeddings(["x"], CountingEncoder(), bad)
    assert bad.read_bytes() == b"not an npz"
    good = tmp_path / "good.npz"
    cached_embeddings(["x"], CountingEncoder(8), good)
    before = good.read_bytes()
    with pytest.raises(DataError, match="another encoder"):
        cached_embeddings(["y"], CountingEncoder(4), good)
    assert good.read_bytes() == before


# ------------------------------------------------------------------------------ SASRec over the vectors
N_ITEMS, N_USERS, SEQ_LEN = 24, 72, 10
TWIN, OF = 24, 5  # item 24: never interacted, the same text as item 5


def cycle_with_twin() -> Dataset:
    """Every user walks the cycle 0 -> 1 -> ... -> 23 -> 0 from its own start; item 24 is in the catalogue
    with item 5's text and no interaction at all."""
    users, items = [], []
    for u in range(N_USERS):
        users += [u] * SEQ_LEN
        items += [(u + k) % N_ITEMS for k in range(SEQ_LEN)]
    inter = pd.DataFrame({"user_idx": users, "item_idx": items, "timestamp": np.tile(np.arange(SEQ_LEN), N_USERS)})
    titles = [f"item {i}" for i in range(N_ITEMS)] + [f"item {OF}"]
    catalogue = pd.DataFrame({"item_id": [str(i) for i in range(N_ITEMS + 1)], "title": titles, "description": ""})
    return Dataset(catalogue, np.array([f"u{u}" for u in range(N_USERS)]), inter)


SMALL = {"max_len": 8, "dim": 32, "dropout": 0.1, "heads": 2}
FAST = {"lr": 1e-2, "batch_size": 16, "patience": 1000, "progress": False, "device": "cpu", "epochs": 10}


def test_projection_shapes_and_the_masked_id_part():
    feats = torch.randn(6, 10)
    for mode in ("replace", "add"):
        emb = TextItemEmbedding(feats, 4, mode)
        assert emb.weight.shape == (7, 4) and not emb.weight[0].any()  # row 0: padding
        assert emb(torch.tensor([[0, 3], [6, 1]])).shape == (2, 2, 4)
        assert emb.proj.weight.shape == (4, 10)
        assert (emb.ids is None) == (mode == "replace")
    emb.id_mask[2] = 0  # item 2 (row 3) unseen in training: its text's projection alone
    z = (feats - feats.mean(0)) / feats.std(0)
    torch.testing.assert_close(emb.weight[3], emb.proj(z[2]))
    torch.testing.assert_close(emb.weight[4], emb.proj(z[3]) + emb.ids.weight[3])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ds = cycle_with_twin()
    out = {}
    for mode in ("replace", "add"):
        model = SASRecLLMBaseline({**SMALL, "mode": mode, "cache": str(tmp_path_factory.mktemp(mode))}, FAST,
                                  encoder=CountingEncoder(24))
        model.fit(ds, log=lambda *_: None)
        out[mode] = model
    return ds, out


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_a_tiny_model_trains_and_ranks(trained, mode):
    ds, models = trained
    m = models[mode]
    assert m.log["encoder"]["encoded"] == N_ITEMS  # 25 items, 24 distinct texts
    res = Evaluator(ds, ks=(1, 5), mask_history=False, progress=False).evaluate(m, stage="test")
    assert res.metrics["HR@5"] > 0.9  # random would be 5/25
    assert res.n_users == N_USERS


def test_an_unseen_item_gets_its_texts_score(trained):
    ds, models = trained
    split = ds.eval_split("test")
    hist = [split.histories[u] for u in range(N_USERS)]
    users = np.arange(N_USERS)
    # replace: item 24 is item 5's text and nothing else, so it scores exactly as item 5 does; users whose
    # next item is 5 get it in their top 2 although it was never trained on
    scores = models["replace"].score(hist, users)
    np.testing.assert_allclose(scores[:, TWIN], scores[:, OF], rtol=1e-5)
    to_five = split.targets == OF
    assert to_five.any()
    assert all(TWIN in np.argsort(-s)[:2] for s in scores[to_five])
    # add: item 24's vector is its text's projection (its ID part held at zero), a real score
    m = models["add"].model
    assert m.item_emb.id_mask[TWIN].item() == 0 and m.item_emb.id_mask[OF].item() == 1
    scores = models["add"].score(hist, users)
    with torch.no_grad():
        m.eval()
        from genrec.baselines.sequential import left_pad

        h = m.encode(torch.from_numpy(left_pad(hist, SMALL["max_len"])))[:, -1]
        twin = m.item_emb.proj(m.item_emb.standardised[TWIN])
    np.testing.assert_allclose(scores[:, TWIN], (h @ twin).numpy(), rtol=1e-4, atol=1e-5)
    assert np.std(scores[:, TWIN]) > 0.1 and np.isfinite(scores[:, TWIN]).all()


def test_save_load_gives_the_same_scores(trained, tmp_path):
    ds, models = trained
    split = ds.eval_split("test")
    hist = [split.histories[u] for u in range(5)]
    models["add"].save(tmp_path / "m")
    loaded = SASRecLLMBaseline.load(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(loaded.score(hist, np.arange(5)), models["add"].score(hist, np.arange(5)), rtol=1e-5)


def test_precomputed_vectors_from_a_file_and_bad_ones_refused(tmp_path):
    ds = cycle_with_twin()
    vecs = CountingEncoder(12)([f"item {i}" for i in range(N_ITEMS + 1)])
    np.save(tmp_path / "v.npy", vecs)
    model = SASRecLLMBaseline({**SMALL, "embeddings": str(tmp_path / "v.npy")}, {**FAST, "epochs": 1})
    feats, info = model.item_features(ds)
    np.testing.assert_array_equal(feats, vecs)
    np.save(tmp_path / "short.npy", vecs[:3])
    with pytest.raises(DataError, match="n_items=25"):
        SASRecLLMBaseline({"embeddings": str(tmp_path / "short.npy")}).item_features(ds)
    assert SASRecLLMConfig().loss == "ce" and SASRecLLMConfig().mode == "add"


def test_the_registry_and_cli_run_it(tmp_path, cli):
    from genrec.registry import SPECS

    assert SPECS["sasrec-llm"].load() is SASRecLLMBaseline
    ds = cycle_with_twin()
    ds.save(tmp_path / "data")
    np.save(tmp_path / "v.npy", CountingEncoder(12)([f"item {i}" for i in range(N_ITEMS + 1)]))
    code, out, err = cli("baselines", "run", "sasrec-llm", "--data", tmp_path / "data", "--out", tmp_path / "b",
                         "--set", f"config.embeddings={tmp_path / 'v.npy'}", "--set", "train.epochs=1",
                         "--set", "train.progress=false", "--fairness")
    assert code == 0, err
    assert "HR" in out and "tail share@10" in out


# ------------------------------------------------------------------------------ the cold-item split
def test_cold_item_split_by_hand():
    seqs = {0: [0, 1, 2, 3, 4], 1: [3, 0, 1], 2: [1, 2, 0], 3: [4, 3, 2, 1], 4: [2, 1, 0]}
    rows = [(u, i, t) for u, s in seqs.items() for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    items = pd.DataFrame({"item_id": list("abcde"), "title": "", "description": ""})
    ds = Dataset(items, np.array(list("vwxyz")), inter)
    for seed in range(20):  # find the seed that picks item 3 alone (1 of 5 items at share 0.2)
        split = cold_item_split(ds, share=0.2, seed=seed)
        if split.cold_items.tolist() == [3]:
            break
    assert split.cold_items.tolist() == [3]
    cut = split.dataset
    # user 0: cut after item 3 -> [0, 1, 2, 3]; user 1: 3 first, nothing before it -> [3], not evaluated;
    # user 3: [4, 3]; users 2 and 4 keep their sequences
    assert [s.tolist() for s in cut.sequences] == [[0, 1, 2, 3], [3], [1, 2, 0], [4, 3], [2, 1, 0]]
    assert split.users.tolist() == [0, 3]
    assert cut.item_popularity()[3] == 0  # never in training
    valid = cut.eval_split("valid").targets
    assert 3 not in valid.tolist()
    assert cut.eval_split("test").targets[[0, 3]].tolist() == [3, 3]
    with pytest.raises(ValueError):
        cold_item_split(ds, share=1.5)


def test_cold_split_keeps_every_cold_item_out_of_training_on_random_data():
    rng = np.random.default_rng(1)
    seqs = [rng.choice(40, size=rng.integers(2, 12), replace=False) for _ in range(80)]
    rows = [(u, int(i), t) for u, s in enumerate(seqs) for t, i in enumerate(s)]
    items = pd.DataFrame({"item_id": [str(i) for i in range(40)], "title": "", "description": ""})
    ds = Dataset(items, np.array([str(u) for u in range(80)]), pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]))
    split = cold_item_split(ds, share=0.2, seed=3)
    cold = set(split.cold_items.tolist())
    assert len(cold) == 8
    cut = split.dataset
    assert not cold & set(np.flatnonzero(cut.item_popularity() > 0).tolist())
    assert not cold & set(cut.eval_split("valid").targets.tolist())
    # the evaluated users: exactly those whose original sequence has a cold item after position 0
    expected = [u for u, s in enumerate(seqs) if any(i in cold for i in s) and next(p for p, i in enumerate(s) if i in cold) >= 1]
    assert split.users.tolist() == expected
    for u in expected:
        first = next(p for p, i in enumerate(seqs[u]) if i in cold)
        assert cut.sequences[u].tolist() == seqs[u][: first + 1].tolist()


def test_a_killed_build_keeps_the_chunks_it_finished(tmp_path):
    texts = [f"t{i}" for i in range(10)]
    calls = []

    def dies_on_third_chunk(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return CountingEncoder(4)(batch)

    with pytest.raises(KeyboardInterrupt):
        cached_embeddings(texts, dies_on_third_chunk, tmp_path / "c.npz", chunk=4)
    enc = CountingEncoder(4)
    vectors, stats = cached_embeddings(texts, enc, tmp_path / "c.npz", chunk=4)
    assert stats == {**stats, "encoded": 2, "reused": 8} and enc.texts == ["t8", "t9"]
    np.testing.assert_array_equal(vectors, CountingEncoder(4)(texts))
