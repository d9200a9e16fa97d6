"""ItemIndex, collision handling, the trie, and the alignment tokenizer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.index.alignment import AlignmentConfig, AlignmentTokenizer
from genrec.index.base import (
    ItemIndex,
    append_disambiguation,
    code_token,
    collision_rate,
    perplexity,
    prefix_sharing,
    resolve_collisions,
    with_id_level,
)
from genrec.index.trie import Trie


def test_code_tokens_and_strings():
    assert code_token(0, 12) == "<a_12>" and code_token(3, 0) == "<d_0>" and code_token(26, 1) == "<aa_1>"
    idx = ItemIndex.from_codes("x", np.array([[1, 2], [0, 3]]), [4, 4])
    assert idx.item_strings == ["<a_1><b_2>", "<a_0><b_3>"]
    assert len(idx.new_tokens) == 8 and idx.new_tokens[0] == "<a_0>" and idx.new_tokens[-1] == "<b_3>"


def test_collision_rate_and_resolution_by_hand():
    codes = np.array([[0, 1], [0, 1], [0, 1], [1, 0]])
    assert collision_rate(codes) == pytest.approx(3 / 4)
    # last-level distances: item 1 prefers code 1 (taken) then 3; item 2 prefers 1, then 3 (now taken), then 0
    dist = np.array([[9, 0, 9, 9], [5, 0, 9, 1], [2, 0, 9, 1], [0, 9, 9, 9]], dtype=float)
    out = resolve_collisions(codes, dist)
    assert out.tolist() == [[0, 1], [0, 3], [0, 0], [1, 0]]
    assert collision_rate(out) == 0


def test_resolution_moves_up_a_level_when_the_last_is_full():
    codes = np.array([[0, 0], [0, 1], [0, 0]])  # K = 2 at the last level: prefix 0 is full
    out = resolve_collisions(codes, np.zeros((3, 2)), sizes=[2, 2])
    assert out.tolist()[:2] == [[0, 0], [0, 1]] and out[2, 0] != 0 and collision_rate(out) == 0


def test_append_disambiguation():
    out = append_disambiguation(np.array([[3], [3], [1], [3]]))
    assert out.tolist() == [[3, 0], [3, 1], [1, 0], [3, 2]]


def test_id_level_gives_each_item_its_own_last_token():
    idx = ItemIndex.from_codes("x", np.array([[1, 2], [1, 3], [0, 2]]), [2, 4], config={"levels": 2})
    out = with_id_level(idx)
    assert out.codes.tolist() == [[1, 2, 0], [1, 3, 1], [0, 2, 2]] and out.sizes == [2, 4, 3]
    assert out.item_strings == ["<a_1><b_2><c_0>", "<a_1><b_3><c_1>", "<a_0><b_2><c_2>"]
    assert out.new_tokens[-3:] == ["<c_0>", "<c_1>", "<c_2>"] and len(out.new_tokens) == 2 + 4 + 3
    assert out.config == {"levels": 2, "id_level": True} and idx.codes.shape == (3, 2)  # the input is left alone
    # under a prefix, the trie offers exactly that prefix's items, each by its own token
    trie = with_id_level(ItemIndex.from_codes("x", np.array([[1], [1], [0]]), [2])).trie()
    assert trie.allowed([1]) == [0, 1] and trie.allowed([0]) == [2]
    # on the codes before collision handling: no appended disambiguation level, no moved item
    raw = np.array([[1], [1], [0]])
    resolved = ItemIndex.from_codes("x", append_disambiguation(raw), [2, 2], raw_codes=raw)
    assert with_id_level(resolved).codes.tolist() == [[1, 0], [1, 1], [0, 2]] and with_id_level(resolved).sizes == [2, 3]
    with pytest.raises(ValueError, match="no codes"):
        with_id_level(ItemIndex(method="tid", item_strings=["a", "b"]))


def test_perplexity_and_prefix_sharing():
    assert perplexity(np.array([0, 1, 2, 3]), 8) == pytest.approx(4)
    assert perplexity(np.array([5, 5, 5]), 8) == pytest.approx(1)
    codes = np.array([[0, 1, 2], [0, 1, 3], [1, 1, 2]])
    assert prefix_sharing(codes, np.array([[0, 1], [0, 2]])) == pytest.approx((2 + 0) / 2)


def test_trie_by_hand():
    t = Trie([[5, 7], [5, 8], [6, 7]])
    assert t.allowed([]) == [5, 6] and t.allowed([5]) == [7, 8] and t.allowed([6]) == [7]
    assert t.allowed([7]) == [] and t.allowed([5, 7]) == []
    assert t.lookup([5, 8]) == 1 and t.lookup([6, 7]) == 2 and t.lookup([5]) == -1 and t.lookup([9]) == -1
    with pytest.raises(ValueError, match="prefix"):
        Trie([[1, 2], [1]])
    with pytest.raises(ValueError, match="same token sequence"):
        Trie([[1, 2], [1, 2]])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30, unique=True))
def test_trie_matches_brute_force(seqs):
    t = Trie([list(s) for s in seqs])
    for depth in range(3):
        for prefix in itertools.product(range(4), repeat=depth):
            expect = sorted({s[depth] for s in seqs if s[:depth] == prefix})
            assert t.allowed(list(prefix)) == expect
    for i, s in enumerate(seqs):
        assert t.lookup(list(s)) == i


def clustered(n=600, d=16, k=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    labels = rng.integers(k, size=n)
    beh = (centres[labels] + rng.normal(size=(n, d))).astype(np.float32)
    llm = np.hstack([np.eye(k)[labels] * 2, rng.normal(size=(n, 20))]).astype(np.float32)
    return beh, llm, labels


CFG = dict(levels=3, codebook_size=16, epochs=15, batch_size=256, progress=False, device="cpu")


def test_alignment_unique_deterministic_and_roundtrip(tmp_path):
    beh, llm, _ = clustered()
    a = AlignmentTokenizer(AlignmentConfig(**CFG)).fit(beh, llm)
    b = AlignmentTokenizer(AlignmentConfig(**CFG)).fit(beh, llm)
    assert a.is_unique() and len({tuple(r) for r in a.codes.tolist()}) == len(beh)
    assert np.array_equal(a.codes, b.codes)
    assert a.stats["collision_rate_after"] == 0
    tok = AlignmentTokenizer(AlignmentConfig(**CFG))
    idx = tok.fit(beh, llm)
    idx.save(tmp_path / "idx")
    tok.save(tmp_path / "tok")
    back, tok2 = ItemIndex.load(tmp_path / "idx"), AlignmentTokenizer.load(tmp_path / "tok")
    assert back.item_strings == idx.item_strings and np.array_equal(back.codes, idx.codes)
    new = beh[:5] + 0.01
    assert np.array_equal(tok.encode(behaviour=new), tok2.encode(behaviour=new))
    assert np.array_equal(tok.encode(llm=llm[:3]), tok2.encode(llm=llm[:3]))


def test_alignment_new_items_are_unique_and_near_their_source():
    beh, llm, labels = clustered()
    tok = AlignmentTokenizer(AlignmentConfig(**CFG))
    idx = tok.fit(beh, llm)
    # a copy of item 0's embedding collides with item 0 and must move to another last-level code
    codes = tok.encode(behaviour=beh[[0, 0]])
    assert tuple(codes[0]) != tuple(idx.codes[0]) and tuple(codes[0]) != tuple(codes[1])
    assert codes[0, 0] == idx.codes[0, 0] and codes[0, 1] == idx.codes[0, 1]  # same prefix
    # from co-interacted items: the mean of items of one cluster lands in that cluster's first code
    members = np.flatnonzero(labels == labels[0])[:5]
    nb = tok.encode(neighbours=[members.tolist()])
    assert nb[0, 0] in set(idx.codes[members, 0])


def test_llm_alignment_pulls_semantic_neighbours_together():
    # behaviour carries no information about the label; LLM embeddings do
    rng = np.random.default_rng(1)
    labels = rng.integers(6, size=500)
    beh = rng.normal(size=(500, 16)).astype(np.float32)
    llm = (np.eye(6)[labels] * 3 + 0.1 * rng.normal(size=(500, 6))).astype(np.float32)
    cfg = dict(CFG, epochs=40, levels=2)

    def same_label_first_code(weight):
        idx = AlignmentTokenizer(AlignmentConfig(**cfg, llm_weight=weight)).fit(beh, llm)
        c = idx.codes[:, 0]
        same = labels[:, None] == labels[None, :]
        share = c[:, None] == c[None, :]
        off = ~np.eye(len(c), dtype=bool)
        return share[same & off].mean() - share[~same & off].mean()

    assert same_label_first_code(3.0) > same_label_first_code(0.0) + 0.1


def test_index_trie_holds_exactly_the_items():
    beh, llm, _ = clustered(n=200)
    idx = AlignmentTokenizer(AlignmentConfig(**CFG)).fit(beh, llm)
    trie = idx.trie()
    assert trie.n_items == 200
    assert all(trie.lookup(row) == i for i, row in enumerate(idx.codes.tolist()))
    first = sorted(set(idx.codes[:, 0].tolist()))
    assert trie.allowed([]) == first


def test_alignment_new_item_under_a_full_prefix_moves_up_a_level_and_a_full_space_is_an_error():
    """With every last-level code under the item's prefix taken, the new item keeps the longest
    prefix that still has room (checked by brute force over all tuples), and when no tuple is free
    at all, encode says so."""
    import itertools

    beh, llm, _ = clustered()
    cfg = dict(CFG, levels=2, codebook_size=8)
    tok = AlignmentTokenizer(AlignmentConfig(**cfg))
    idx = tok.fit(beh[:40], llm[:40])
    t = tuple(int(c) for c in tok.encode(behaviour=beh[:1], taken=set())[0])  # its own choice, nothing taken
    full_prefix = {(t[0], c) for c in range(8)}
    taken = set(map(tuple, idx.codes.tolist())) | full_prefix
    got = tuple(int(c) for c in tok.encode(behaviour=beh[:1], taken=taken)[0])
    assert got not in taken and got[0] != t[0]
    free = [x for x in itertools.product(range(8), range(8)) if x not in taken]
    assert got in free
    everything = set(itertools.product(range(8), range(8)))
    with pytest.raises(ValueError, match="code space exhausted"):
        tok.encode(behaviour=beh[:1], taken=everything)
