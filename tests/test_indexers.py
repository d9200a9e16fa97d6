"""Item indexers: uniqueness, determinism, persistence, encoding of new items, and the
behaviours particular to each method (RQ-VAE training, CID structure, TID text handling)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genrec.data.dataset import Dataset
from genrec.data.preprocess import PrepareConfig, load_dataset
from genrec.data.synth import SynthConfig, write
from genrec.errors import GenrecError
from genrec.index import collaborative
from genrec.index.base import (
    ItemIndex,
    append_disambiguation,
    codes_to_strings,
    collision_rate,
    resolve_collisions,
    unique_codes,
)
from genrec.index.collaborative import CIDConfig, CIDIndexer, cooccurrence_graph
from genrec.index.inputs import IndexInputs
from genrec.index.registry import CONFIGS, INDEXERS, make_indexer
from genrec.index.rqvae import RQVAEConfig, RQVAEIndexer
from genrec.index.trie import Trie
from genrec.index.trivial import END_TOKEN, TIDIndexer

#: Small settings so every method builds in about a second on one thread.
SMALL: dict[str, dict] = {
    "alignment": {"levels": 3, "codebook_size": 16, "epochs": 5, "batch_size": 64, "progress": False},
    "rqvae": {
        "hidden": [64, 32],
        "latent_dim": 16,
        "levels": 3,
        "codebook_size": 16,
        "epochs": 40,
        "batch_size": 32,
        "progress": False,
    },
    "semid": {"levels": 3, "codebook_size": 16},
    "cid": {"n_clusters": 8},
    "rid": {},
    "tid": {},
    "iid": {},
}
ENCODERS = {"rqvae", "semid"}  # code-based indexers that encode new items from embeddings


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> IndexInputs:
    """The synthetic demo data (300 users, 120 items) with random behaviour and LLM embeddings."""
    folder = tmp_path_factory.mktemp("synth")
    write(SynthConfig(n_users=300, n_items=120, seed=3), folder)
    ds = load_dataset(folder, prepare=PrepareConfig(kcore=0))
    rng = np.random.default_rng(0)
    return IndexInputs(
        dataset=ds,
        behaviour=rng.standard_normal((ds.n_items, 24)).astype(np.float32),
        llm=rng.standard_normal((ds.n_items, 48)).astype(np.float32),
        seed=7,
    )


def make_dataset(seqs: list[list[int]], titles: list[object]) -> Dataset:
    """A Dataset from per-user chronological item sequences and item titles."""
    rows = [(u, i, t) for u, s in enumerate(seqs) for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(titles))], "title": titles})
    return Dataset(items, np.array([f"u{u}" for u in range(len(seqs))]), inter)


def build(method: str, inputs: IndexInputs, **extra) -> tuple[object, ItemIndex]:
    indexer = make_indexer(method, {**SMALL[method], **extra})
    return indexer, indexer.build(inputs)


def assert_same_index(a: ItemIndex, b: ItemIndex) -> None:
    assert a.method == b.method
    assert a.item_strings == b.item_strings
    assert a.new_tokens == b.new_tokens
    assert a.sizes == b.sizes
    assert a.end_token == b.end_token
    assert a.stats == b.stats
    assert a.config == b.config
    if a.codes is None:
        assert b.codes is None
    else:
        np.testing.assert_array_equal(a.codes, b.codes)


# every method ------------------------------------------------------------------------------
def test_registry_names_and_errors() -> None:
    assert set(INDEXERS) == set(CONFIGS) == {"alignment", "rqvae", "semid", "cid", "rid", "tid", "iid"}
    for name, cls in INDEXERS.items():
        assert cls.method == name
    with pytest.raises(GenrecError, match="unknown indexer"):
        make_indexer("nope")
    with pytest.raises(GenrecError, match="codebook_sz"):
        make_indexer("rqvae", {"codebook_sz": 3})
    with pytest.raises(GenrecError, match="levels"):
        make_indexer("semid", {"levels": 0})


@pytest.mark.parametrize("method", list(SMALL))
def test_unique_and_deterministic(method: str, inputs: IndexInputs) -> None:
    _, index = build(method, inputs)
    n = inputs.dataset.n_items
    assert index.method == method
    assert index.n_items == n and index.is_unique()
    assert len(set(index.new_tokens)) == len(index.new_tokens)
    assert index.stats["collision_rate_after"] == 0.0
    assert {"collision_rate_before", "collision_rate_after"} <= set(index.stats)
    if index.codes is not None:
        assert index.codes.shape[0] == n
        assert collision_rate(index.codes) == 0.0
        assert len(index.stats["perplexity"]) == index.levels
        assert len(index.sizes) == index.levels
        assert (index.codes >= 0).all() and (index.codes < np.asarray(index.sizes)).all()
        Trie(index.codes.tolist())  # unique and prefix-free as token sequences
        if method != "iid":
            assert index.item_strings == codes_to_strings(index.codes)
            assert set("".join(index.item_strings).replace("><", ">\n<").split("\n")) <= set(index.new_tokens)
    else:
        assert index.end_token == END_TOKEN and index.new_tokens == [END_TOKEN]
        assert not set(index.item_strings) & set(index.new_tokens)
    _, again = build(method, inputs)
    assert_same_index(index, again)


@pytest.mark.parametrize("method", [m for m in SMALL if m != "alignment"])
def test_save_load_round_trip(method: str, inputs: IndexInputs, tmp_path: Path) -> None:
    indexer, index = build(method, inputs)
    indexer.save(tmp_path)
    loaded = INDEXERS[method].load(tmp_path)
    assert_same_index(index, loaded.index)
    assert_same_index(index, ItemIndex.load(tmp_path))  # the folder is also a plain index artifact
    if method in ENCODERS:
        new = np.random.default_rng(5).standard_normal((6, inputs.llm.shape[1])).astype(np.float32)
        np.testing.assert_array_equal(indexer.encode(new), loaded.encode(new))
    elif method == "rid":
        assert indexer.encode(5) == loaded.encode(5)
    elif method == "tid":
        assert indexer.encode(["x", ""]) == loaded.encode(["x", ""])


@pytest.mark.parametrize("with_llm", [True, False])
def test_alignment_save_load(inputs: IndexInputs, tmp_path: Path, with_llm: bool) -> None:
    """The fitted tokenizer goes through tokenizer.safetensors + tokenizer.json (no pickle) and
    comes back the same: the same arrays, and the same codes for the catalogue and for new items
    from each kind of input."""
    fitted_on = inputs if with_llm else IndexInputs(inputs.dataset, inputs.behaviour, None, inputs.seed)
    indexer, index = build("alignment", fitted_on)
    indexer.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer.safetensors"]
    loaded = INDEXERS["alignment"].load(tmp_path)
    np.testing.assert_array_equal(loaded.codes, index.codes)
    assert loaded.scale == indexer.scale and loaded.log == indexer.log
    assert loaded.cfg.model_dump(exclude={"device"}) == indexer.cfg.model_dump(exclude={"device"})  # loaded onto the CPU
    absent = set() if with_llm else {"llm_mean", "llm_std", "text_map"}  # fitted without LLM embeddings
    for name in ("mean", "llm_mean", "llm_std", "item_emb", "text_map"):
        a, b = getattr(indexer, name), getattr(loaded, name)
        assert (a is None) == (b is None) == (name in absent)
        if a is not None:
            assert type(a) is type(b)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state, again = indexer.module.state_dict(), loaded.module.state_dict()
    assert set(state) == set(again) and all(torch.equal(state[k], again[k]) for k in state)
    beh = inputs.behaviour[:4] + 0.01
    np.testing.assert_array_equal(indexer.encode(behaviour=beh), loaded.encode(behaviour=beh))
    nb = [[0, 1], [5], [7, 8, 9]]
    np.testing.assert_array_equal(indexer.encode(neighbours=nb), loaded.encode(neighbours=nb))
    if with_llm:
        llm = np.random.default_rng(4).standard_normal((4, inputs.llm.shape[1])).astype(np.float32)
        np.testing.assert_array_equal(indexer.encode(llm=llm), loaded.encode(llm=llm))
        np.testing.assert_array_equal(indexer.encode(behaviour=beh, llm=llm), loaded.encode(behaviour=beh, llm=llm))


def test_an_old_pickled_alignment_tokenizer_is_refused_unread(inputs: IndexInputs, tmp_path: Path) -> None:
    """tokenizer.pt (older versions pickled numpy arrays in it) is never unpickled: loading says to
    rebuild the index, and a planted one runs nothing."""
    from genrec.errors import DataError
    from tests.conftest import plant_pickle, unpickle_in_full

    indexer, _ = build("alignment", inputs)
    torch.save({"config": indexer.cfg.model_dump(), "state": indexer.module.state_dict(), "codes": indexer.codes,
                "item_emb": indexer.item_emb, "log": indexer.log}, tmp_path / "tokenizer.pt")  # as older versions wrote
    with pytest.raises(DataError, match=r"tokenizer\.pt.*rebuild the index"):
        INDEXERS["alignment"].load(tmp_path)
    marker = tmp_path / "planted-code-ran"
    plant_pickle(tmp_path / "tokenizer.pt", marker)
    with pytest.raises(DataError, match=r"tokenizer\.pt"):
        INDEXERS["alignment"].load(tmp_path)
    assert not marker.exists()
    unpickle_in_full(tmp_path / "tokenizer.pt")  # the planted file is live: loaded in full, it runs
    assert marker.exists()


def test_rqvae_weights_are_safetensors_and_old_ones_load_weights_only(inputs: IndexInputs, tmp_path: Path) -> None:
    """rqvae.safetensors holds the RQ-VAE's weights; an older folder's rqvae.pt of plain tensors
    still loads (weights-only) to the same codes, and a planted rqvae.pt runs nothing."""
    from genrec.errors import DataError
    from tests.conftest import plant_pickle

    indexer, index = build("rqvae", inputs)
    indexer.save(tmp_path / "new")
    assert not list((tmp_path / "new").glob("*.pt"))
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    (old / "rqvae.safetensors").unlink()
    torch.save({k: v.detach().cpu() for k, v in indexer.module.state_dict().items()}, old / "rqvae.pt")
    new_items = np.random.default_rng(5).standard_normal((6, inputs.llm.shape[1])).astype(np.float32)
    for folder in (tmp_path / "new", old):
        np.testing.assert_array_equal(INDEXERS["rqvae"].load(folder).encode(new_items), indexer.encode(new_items))
    marker = tmp_path / "planted-code-ran"
    plant_pickle(old / "rqvae.pt", marker)
    with pytest.raises(DataError, match=r"rqvae\.pt.*rebuild the index"):
        INDEXERS["rqvae"].load(old)
    assert not marker.exists()


@pytest.mark.parametrize("method", sorted(ENCODERS))
def test_encode_new_items_unique(method: str, inputs: IndexInputs) -> None:
    indexer, index = build(method, inputs)
    x = inputs.llm
    # the catalogue's own embeddings collide with the catalogue: every new tuple must move
    codes = indexer.encode(x[:10])
    assert codes.shape == (10, index.levels)
    catalogue = set(map(tuple, index.codes.tolist()))
    assert not set(map(tuple, codes.tolist())) & catalogue
    assert len(set(map(tuple, codes.tolist()))) == 10
    np.testing.assert_array_equal(codes, indexer.encode(x[:10]))  # deterministic
    # against nothing taken, item 0 (always first of its group) gets its own tuple back
    np.testing.assert_array_equal(indexer.encode(x[:1], taken=set())[0], index.codes[0])
    with pytest.raises(ValueError):
        indexer.encode(x[:2, :5])


def test_seed_comes_from_inputs_unless_configured(inputs: IndexInputs) -> None:
    other = IndexInputs(inputs.dataset, inputs.behaviour, inputs.llm, seed=inputs.seed + 1)
    a = make_indexer("rid").build(inputs)
    b = make_indexer("rid").build(other)
    c = make_indexer("rid", {"seed": inputs.seed}).build(other)
    assert a.item_strings != b.item_strings
    assert a.item_strings == c.item_strings


# RQ-VAE ------------------------------------------------------------------------------------
def test_rqvae_trains(inputs: IndexInputs) -> None:
    rng = np.random.default_rng(1)
    low_rank = (rng.standard_normal((inputs.dataset.n_items, 4)) @ rng.standard_normal((4, 48))).astype(np.float32)
    indexer, index = build("rqvae", IndexInputs(inputs.dataset, llm=low_rank, seed=0))
    log = indexer.log
    assert len(log) == SMALL["rqvae"]["epochs"]
    assert log[-1]["recon"] < 0.5 * log[0]["recon"]
    assert index.stats["final_recon_loss"] == log[-1]["recon"]
    assert index.config["input"] == "llm"


def test_rqvae_behaviour_input_with_llm_alignment(inputs: IndexInputs) -> None:
    indexer, index = build("rqvae", inputs, input="behaviour", llm_weight=0.1, epochs=5)
    assert index.is_unique()
    assert indexer.module.encoder[0].in_features == inputs.behaviour.shape[1]
    assert all(np.isfinite(e["align"]) and e["align"] > 0 for e in indexer.log)
    codes = indexer.encode(inputs.behaviour[:3])
    assert codes.shape == (3, index.levels)
    no_llm = IndexInputs(inputs.dataset, behaviour=inputs.behaviour, seed=0)
    with pytest.raises(ValueError, match="llm"):
        RQVAEIndexer(RQVAEConfig(**{**SMALL["rqvae"], "input": "behaviour", "llm_weight": 0.1})).build(no_llm)
    with pytest.raises(ValueError, match="llm"):
        RQVAEIndexer(RQVAEConfig(**SMALL["rqvae"])).build(no_llm)


def test_rqvae_keeps_the_callers_rng(inputs: IndexInputs) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("rqvae", inputs, epochs=1)
    torch.testing.assert_close(torch.rand(3), expected)


# CID ---------------------------------------------------------------------------------------
def test_cooccurrence_uses_window_and_counts() -> None:
    w = cooccurrence_graph([np.array([0, 1, 2, 3]), np.array([1, 0])], 5, window=2).toarray()
    assert w[0, 1] == w[1, 0] == 2  # adjacent in both sequences
    assert w[0, 2] == 1 and w[0, 3] == 0  # 0 and 3 are 3 apart
    assert w[4].sum() == 0 and np.diag(w).sum() == 0
    assert cooccurrence_graph([np.array([0, 1, 2, 3])], 4, window=None).toarray()[0, 3] == 1


def test_cid_separates_disjoint_groups_and_places_isolated_items() -> None:
    rng = np.random.default_rng(0)
    seqs = []
    group_items = [np.arange(0, 20), np.arange(20, 40)]
    for g in range(2):
        for _ in range(40):
            seqs.append(rng.choice(group_items[g], size=6, replace=False).tolist())
    # items 40..44 are only ever validation / test targets: no training co-occurrence
    for j, i in enumerate(range(40, 45)):
        seqs.append([int(group_items[j % 2][0]), int(group_items[j % 2][1]), i, (i + 1 - 40) % 5 + 40])
    ds = make_dataset(seqs, [f"t{i}" for i in range(45)])
    index = CIDIndexer(CIDConfig(n_clusters=4)).build(IndexInputs(ds, seed=0))
    first = index.codes[:, 0]
    assert not set(first[:20]) & set(first[20:40])
    assert not set(first[40:]) & set(first[:40])  # isolated items have their own chain
    assert index.stats["isolated_items"] == 5
    assert index.is_unique() and collision_rate(index.codes) == 0.0
    assert index.sizes == [4] * index.levels
    Trie(index.codes.tolist())


def disjoint_groups_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(20) + 20 * g, size=6, replace=False).tolist() for g in range(2) for _ in range(40)]
    return make_dataset(seqs, [f"t{i}" for i in range(40)])


def test_cid_sparse_eigensolver_and_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = disjoint_groups_dataset()
    cfg = CIDConfig(n_clusters=4, dense_limit=2)  # every split goes through eigsh
    index = CIDIndexer(cfg).build(IndexInputs(ds, seed=0))
    assert not set(index.codes[:20, 0]) & set(index.codes[20:, 0])
    assert index.is_unique()

    def no_convergence(*args, **kwargs):
        raise collaborative.ArpackNoConvergence("no convergence", np.zeros(0), None)

    monkeypatch.setattr(collaborative, "eigsh", no_convergence)
    index = CIDIndexer(cfg).build(IndexInputs(ds, seed=0))
    assert index.is_unique() and collision_rate(index.codes) == 0.0
    assert not set(index.codes[:20, 0]) & set(index.codes[20:, 0])  # components still come first


def test_cid_small_catalogue_is_one_leaf() -> None:
    ds = make_dataset([[0, 1, 2, 0], [2, 1, 0, 1]], ["a", "b", "c"])
    index = CIDIndexer(CIDConfig(n_clusters=4)).build(IndexInputs(ds, seed=0))
    np.testing.assert_array_equal(index.codes, [[0], [1], [2]])


# collision handling ------------------------------------------------------------------------
def test_resolve_collisions_by_hand() -> None:
    codes = np.array([[0, 0], [0, 0], [1, 0], [0, 0]])
    dist = np.array([[0.0, 0.9, 0.9], [0.1, 0.5, 0.2], [0.0, 0.9, 0.9], [0.1, 0.2, 0.9]])
    out = resolve_collisions(codes, dist)
    np.testing.assert_array_equal(out, [[0, 0], [0, 2], [1, 0], [0, 1]])
    np.testing.assert_array_equal(codes, [[0, 0], [0, 0], [1, 0], [0, 0]])  # input untouched
    # without distances the last level's size is the largest code seen plus one (here 2): under
    # prefix (2,) both codes are taken, so the duplicate moves to the first free tuple a level up
    np.testing.assert_array_equal(resolve_collisions(np.array([[2, 1], [2, 1], [2, 0]])), [[2, 1], [0, 0], [2, 0]])
    np.testing.assert_array_equal(resolve_collisions(np.array([[2, 1], [2, 1], [2, 2]])), [[2, 1], [2, 0], [2, 2]])
    # the last level under (0, .) is full: move up a level
    full = np.array([[0, 0], [0, 1], [0, 1], [1, 0]])
    np.testing.assert_array_equal(resolve_collisions(full, np.zeros((4, 2))), [[0, 0], [0, 1], [1, 1], [1, 0]])
    with pytest.raises(ValueError, match="exhausted"):
        resolve_collisions(np.zeros((3, 2), dtype=np.int64), np.zeros((3, 2)))


def test_append_disambiguation_by_hand() -> None:
    out = append_disambiguation(np.array([[1, 2], [1, 2], [3, 4], [1, 2]]))
    np.testing.assert_array_equal(out, [[1, 2, 0], [1, 2, 1], [3, 4, 0], [1, 2, 2]])
    codes, sizes = unique_codes(np.zeros((3, 2), dtype=np.int64), np.zeros((3, 2)), [1, 2])
    np.testing.assert_array_equal(codes, [[0, 0, 0], [0, 0, 1], [0, 0, 2]])
    assert sizes == [1, 2, 3]
    codes, sizes = unique_codes(np.array([[0, 0], [0, 0]]), np.zeros((2, 2)), [1, 2])
    np.testing.assert_array_equal(codes, [[0, 0], [0, 1]])
    assert sizes == [1, 2]


# text and token indexers -------------------------------------------------------------------
def test_tid_duplicates_empty_and_special_text() -> None:
    titles = ["Foo", "Foo", "  Foo \n", "", None, "Bar <a_12>", "<|im_end|>", END_TOKEN, "Foo (2)", "  "]
    ds = make_dataset([list(range(len(titles)))], titles)
    tid = TIDIndexer()
    index = tid.build(IndexInputs(ds))
    assert index.item_strings == [
        "Foo",
        "Foo (2)",
        "Foo (3)",
        "item i3",
        "item i4",
        "Bar <a_12>",  # data text stays plain text; tokenization splits it later
        "<|im_end|>",
        f"{END_TOKEN} (2)",  # never equal to a new token
        "Foo (2) (2)",
        "item i9",
    ]
    assert index.is_unique() and not set(index.item_strings) & set(index.new_tokens)
    assert index.codes is None and index.end_token == END_TOKEN
    assert index.stats["collision_rate_before"] == pytest.approx(3 / 10)
    assert index.stats["empty_titles"] == 3
    assert tid.encode(["Foo", "Baz", "Baz", ""], ["n1", "n2", "n3", "n4"]) == ["Foo (4)", "Baz", "Baz (2)", "item n4"]


def test_rid_fixed_length_digits(inputs: IndexInputs) -> None:
    index = make_indexer("rid").build(inputs)
    assert all(s.isdigit() and len(s) == 4 and s[0] != "0" for s in index.item_strings)
    rid = make_indexer("rid", {"digits": 6})
    index = rid.build(inputs)
    assert {len(s) for s in index.item_strings} == {6}
    new = rid.encode(20)
    assert len(set(new)) == 20 and not set(new) & set(index.item_strings)
    with pytest.raises(ValueError, match="do not fit"):
        make_indexer("rid", {"digits": 1}).build(inputs)


def test_iid_tokens(inputs: IndexInputs) -> None:
    index = make_indexer("iid").build(inputs)
    n = inputs.dataset.n_items
    assert index.item_strings == index.new_tokens == [f"<item_{i}>" for i in range(n)]
    np.testing.assert_array_equal(index.codes[:, 0], np.arange(n))
    assert index.sizes == [n]
    assert index.stats["perplexity"] == [pytest.approx(n)]
