"""Trie-constrained batched beam search against exhaustive scoring and Hugging Face generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.decode.beam import Decoder, beam_search
from genrec.index.trie import Trie

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 40


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper distributions than the default init, so rankings are not near-ties
        m.lm_head.weight.mul_(20)
    return m


def exhaustive(model, prompt: list[int], sequences: list[list[int]]) -> np.ndarray:
    """log p(sequence | prompt) of every item, one unpadded forward each: the slow obvious way."""
    out = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([prompt + seq])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            out.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(seq)))
    return np.array(out)


def code_items(n: int, levels: int, size: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    tuples = sorted({tuple(int(x) for x in rng.integers(0, size, levels)) for _ in range(n * 3)})[:n]
    return [[10 + lv * size + c for lv, c in enumerate(t)] for t in tuples]  # level-specific tokens


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=int(rng.integers(3, 12))).tolist() for _ in range(n)]


def assert_exhaustive(model, ps: list[list[int]], items: list[list[int]]) -> None:
    """With as many beams as items, every user's list is every item ranked by its exact score."""
    res = beam_search(Decoder.from_hf(model), ps, Trie(items), beams=len(items), k=len(items))
    for u, p in enumerate(ps):
        ref = exhaustive(model, p, items)
        order = np.argsort(-ref, kind="stable")
        assert res.items[u].tolist() == order.tolist()
        np.testing.assert_allclose(res.scores[u], ref[order], rtol=1e-4, atol=1e-4)


def test_all_beams_equals_exhaustive_scoring(model):
    # prompts of different lengths: left padding must not change any score
    assert_exhaustive(model, prompts(5, seed=2), code_items(14, 3, 4, seed=1))


def test_a_shared_prompt_prefix_changes_nothing(model):
    head = [5, 6, 7, 8, 9, 10, 11]  # a system prompt every user has
    assert_exhaustive(model, [head + p for p in prompts(4, seed=8)] + [head + [12]], code_items(10, 3, 4, seed=7))


def test_variable_length_items_with_end_token(model):
    end = 3
    rng = np.random.default_rng(5)
    seqs = sorted({tuple(rng.integers(4, 12, size=int(rng.integers(1, 4))).tolist()) for _ in range(30)})
    items = [list(s) + [end] for s in seqs]
    ps = prompts(3, seed=6)
    res = beam_search(Decoder.from_hf(model), ps, Trie(items), beams=len(items), k=5)
    for u, p in enumerate(ps):
        ref = exhaustive(model, p, items)
        assert res.items[u].tolist() == np.argsort(-ref, kind="stable")[:5].tolist()


def test_top_k_equals_huggingface_generate_with_a_trie(model):
    items = code_items(60, 3, 6, seed=3)
    trie = Trie(items)
    ps = prompts(4, seed=4)
    beams, k = 8, 5
    ours = beam_search(Decoder.from_hf(model), ps, trie, beams=beams, k=k)
    for u, p in enumerate(ps):
        ids = torch.tensor([p])

        def allowed(_batch, sent, n=len(p)):
            return trie.allowed(sent[n:].tolist())

        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, num_return_sequences=k,
                                 max_new_tokens=3, do_sample=False, length_penalty=0.0, early_stopping=True,
                                 prefix_allowed_tokens_fn=allowed, pad_token_id=0)
        hf = [trie.lookup(g[len(p) :].tolist()) for g in gen]
        assert ours.items[u].tolist() == hf


@settings(max_examples=25, deadline=None)
@given(
    n_items=st.integers(1, 25),
    beams=st.integers(1, 6),
    k=st.integers(1, 8),
    seed=st.integers(0, 10_000),
)
def test_only_valid_distinct_items_come_out(model, n_items, beams, k, seed):
    rng = np.random.default_rng(seed)
    end = 3
    seqs = sorted({tuple(rng.integers(4, VOCAB, size=int(rng.integers(1, 4))).tolist()) for _ in range(n_items)})
    items = [list(s) + [end] for s in seqs]
    res = beam_search(Decoder.from_hf(model), prompts(2, seed), Trie(items), beams=beams, k=k)
    for row, sc in zip(res.items, res.scores, strict=True):
        found = row[row >= 0]
        assert len(set(found.tolist())) == len(found)
        assert all(0 <= i < len(items) for i in found)
        assert len(found) >= min(k, beams, len(items))
        assert np.all(np.diff(sc[row >= 0]) <= 1e-9)  # best first


@pytest.mark.parametrize("beams, k", [(6, 4), (20, 10)])
def test_shared_prompt_steps_equal_the_per_beam_cache(model, beams, k):
    """The shared-prompt attention (one prompt KV per user, read by all its beams) gives the same
    lists and scores as Hugging Face's own cache with a prompt copy per beam."""
    from genrec.decode.beam import SharedPromptSteps

    assert SharedPromptSteps.supports(model.get_decoder())
    items = code_items(60, 3, 5, seed=4)
    ps = prompts(5, seed=9)
    ps = [[5, 6, 7] + p for p in ps]  # a shared prefix too
    fast = beam_search(Decoder.from_hf(model), ps, Trie(items), beams=beams, k=k)
    slow_dec = Decoder.from_hf(model)
    slow_dec.shared_prompt = False
    slow = beam_search(slow_dec, ps, Trie(items), beams=beams, k=k)
    assert fast.items.tolist() == slow.items.tolist()
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5, atol=1e-5)


class _Ranker:
    """A stand-in for the generative recommender: a fixed list per user, the calls counted, and a
    simulated kill after ``die_after`` calls."""

    def __init__(self, n_items: int, die_after: int | None = None):
        from types import SimpleNamespace

        self.decoder = SimpleNamespace(device=torch.device("cpu"))
        self.n_items, self.die_after, self.users = n_items, die_after, []

    def rank(self, histories, users, k):
        if self.die_after is not None and len(self.users) >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.users.append([int(u) for u in users])
        return np.array([[(7 * int(u) + 3 * j) % self.n_items for j in range(k)] for u in users])


def test_a_killed_evaluation_resumes_where_it_stopped_with_the_same_result(tmp_path):
    import json

    from genrec.data.loaders import load_raw
    from genrec.data.preprocess import PrepareConfig, preprocess
    from genrec.data.synth import SynthConfig, write
    from genrec.decode.recommender import evaluate_generative, partial_seconds
    from genrec.evaluate import Evaluator

    write(SynthConfig(n_users=50, n_items=40, seed=1, mean_length=6), tmp_path / "raw")
    ds = preprocess(load_raw(tmp_path / "raw"), PrepareConfig(kcore=2))
    ev = Evaluator(ds, ks=(1, 5, 10), progress=False)
    whole = evaluate_generative(_Ranker(ds.n_items), ev, "test")
    partial, key = tmp_path / "partial", {"model": "m1"}
    with pytest.raises(KeyboardInterrupt):
        evaluate_generative(_Ranker(ds.n_items, die_after=2), ev, "test", resume_dir=partial, key=key, chunk_users=8)
    assert partial_seconds(partial, key, "test", 10) >= 0 and len((partial / "part-0.jsonl").read_text().splitlines()) == 2
    with open(partial / "part-0.jsonl", "a") as f:  # the chunk being written when it was killed
        f.write('{"users": [1, 2], "ite')
    again = _Ranker(ds.n_items)
    res = evaluate_generative(again, ev, "test", resume_dir=partial, key=key, chunk_users=8)
    decoded = sum(again.users, [])
    assert len(decoded) == ds.n_users - 16 and not set(decoded) & set(range(16))  # only the users left
    assert json.dumps(res.metrics, sort_keys=True) == json.dumps(whole.metrics, sort_keys=True)
    # lists kept for another model are not reused
    other = _Ranker(ds.n_items)
    evaluate_generative(other, ev, "test", resume_dir=partial, key={"model": "m2"}, chunk_users=8)
    assert len(sum(other.users, [])) == ds.n_users and partial_seconds(partial, key, "test", 10) == 0.0


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_scoring_given_sequences_equals_exhaustive_scoring(model, shared_prompt):
    """Each user's own candidates of different lengths (-1 after the end), prompts of different
    lengths with a shared prefix: every score is the one-forward-per-sequence log-probability,
    on the shared-prompt path and on the generic per-slot cache."""
    from genrec.decode.beam import score_sequences

    rng = np.random.default_rng(11)
    ps = [[5, 6, 7] + p for p in prompts(4, seed=12)]
    K, D = 5, 4
    seqs = np.full((len(ps), K, D), -1, dtype=np.int64)
    for u in range(len(ps)):
        for j in range(K):
            n = int(rng.integers(1, D + 1))
            seqs[u, j, :n] = rng.integers(3, VOCAB, size=n)
    dec = Decoder.from_hf(model)
    dec.shared_prompt = shared_prompt
    got = score_sequences(dec, ps, seqs)
    for u, p in enumerate(ps):
        ref = exhaustive(model, p, [[int(t) for t in row if t >= 0] for row in seqs[u]])
        np.testing.assert_allclose(got[u], ref, rtol=1e-4, atol=1e-4)


def test_edge_priors_by_hand():
    from genrec.decode.beam import edge_prior

    trie = Trie([[11, 12], [11, 13], [14, 15]])  # items 0, 1, 2 with weights 1, 2, 3
    prior = edge_prior(trie, np.array([1.0, 2.0, 3.0]))
    by_edge = {}
    for n in range(trie.n_nodes):
        toks, _ = trie.children(n)
        for j, t in enumerate(toks):
            by_edge[(n, int(t))] = prior[trie.child_ptr[n] + j]
    a, b = trie.step(0, 11), trie.step(0, 14)
    assert by_edge[(0, 11)] == pytest.approx(np.log(3 / 6)) and by_edge[(0, 14)] == pytest.approx(np.log(3 / 6))
    assert by_edge[(a, 12)] == pytest.approx(np.log(1 / 3)) and by_edge[(a, 13)] == pytest.approx(np.log(2 / 3))
    assert by_edge[(b, 15)] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="positive"):
        edge_prior(trie, np.array([1.0, 0.0, 3.0]))


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_popularity_adjusted_search_ranks_by_score_minus_alpha_log_share(model, alpha):
    """pop_alpha: with as many beams as items, the ranking is by log p(item) - alpha * log(w / sum w),
    computed here from the exhaustive scores."""
    from genrec.decode.beam import TrieTensors

    items = code_items(12, 2, 4, seed=3)
    weight = np.random.default_rng(4).integers(1, 50, size=len(items)).astype(float)
    tt = TrieTensors.of(Trie(items), torch.device("cpu"), item_weight=weight)
    ps = prompts(3, seed=9)
    res = beam_search(Decoder.from_hf(model), ps, tt, beams=len(items), k=len(items), pop_alpha=alpha)
    for u, p in enumerate(ps):
        ref = exhaustive(model, p, items) - alpha * np.log(weight / weight.sum())
        order = np.argsort(-ref, kind="stable")
        assert res.items[u].tolist() == order.tolist()
        np.testing.assert_allclose(res.scores[u], ref[order], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="pop_alpha"):
        beam_search(Decoder.from_hf(model), ps, Trie(items), beams=4, k=4, pop_alpha=alpha)


def test_excluded_items_never_come_out_and_free_their_slots(model):
    """exclude: with as many beams as items, each user's list is the exhaustive ranking without the
    user's excluded items; with few beams, excluded items take no slot (k items still come out)."""
    items = code_items(12, 2, 4, seed=5)
    ps = prompts(3, seed=11)
    excl = [[0, 3, 7], [], list(range(10))]
    res = beam_search(Decoder.from_hf(model), ps, Trie(items), beams=len(items), k=len(items), exclude=excl)
    for u, p in enumerate(ps):
        ref = exhaustive(model, p, items)
        order = [i for i in np.argsort(-ref, kind="stable").tolist() if i not in excl[u]]
        got = [i for i in res.items[u].tolist() if i >= 0]
        assert got == order
    narrow = beam_search(Decoder.from_hf(model), ps, Trie(items), beams=3, k=3, exclude=excl)
    for u in range(3):
        got = [i for i in narrow.items[u].tolist() if i >= 0]
        assert not set(got) & set(excl[u])
        if u < 2:  # a few exclusions: the 3 slots are still filled
            assert len(got) == 3


@pytest.mark.parametrize("k", [1, 3, 7])
def test_the_pruned_last_level_equals_exhaustive_scoring(model, k):
    """beams >= items with k < items: the last level is stepped a few beams at a time and beams that
    cannot reach the top k are skipped; the top k is still every item ranked by its exact score."""
    items = code_items(20, 2, 6, seed=13)
    ps = prompts(4, seed=14)
    for round_beams in (1, 3, None):
        res = beam_search(Decoder.from_hf(model), ps, Trie(items), beams=len(items), k=k, round_beams=round_beams)
        for u, p in enumerate(ps):
            ref = exhaustive(model, p, items)
            order = np.argsort(-ref, kind="stable")[:k]
            assert res.items[u].tolist() == order.tolist()
            np.testing.assert_allclose(res.scores[u], ref[order], rtol=1e-4, atol=1e-4)


def test_pruning_skips_beams_and_changes_no_list(model, monkeypatch):
    """With fewer beams than items, stepping the last level in rounds (with and without the
    popularity adjustment, whose priors can raise a score, and excluded items) gives the lists and
    scores of stepping every beam at once, while stepping fewer beam rows."""
    from genrec.decode.beam import SharedPromptSteps, TrieTensors

    rows = []
    step = SharedPromptSteps.step
    monkeypatch.setattr(SharedPromptSteps, "step", lambda self, tokens, *a, **kw: (rows.append(len(tokens)),
                                                                                    step(self, tokens, *a, **kw))[1])
    items = code_items(80, 3, 5, seed=21)
    weight = np.random.default_rng(22).integers(1, 100, size=len(items)).astype(float)
    tt = TrieTensors.of(Trie(items), torch.device("cpu"), item_weight=weight)
    ps = prompts(6, seed=23)
    excl = [[0, 5, 9], [], [1], list(range(20)), [], [3]]
    for alpha, exclude in ((0.0, None), (0.7, None), (0.0, excl), (0.7, excl)):
        rows.clear()
        full = beam_search(Decoder.from_hf(model), ps, tt, beams=8, k=4, pop_alpha=alpha, exclude=exclude, round_beams=None)
        n_full = sum(rows)
        for round_beams in (1, 2, 5):
            rows.clear()
            got = beam_search(Decoder.from_hf(model), ps, tt, beams=8, k=4, pop_alpha=alpha, exclude=exclude,
                              round_beams=round_beams)
            assert got.items.tolist() == full.items.tolist()
            np.testing.assert_allclose(got.scores, full.scores, rtol=1e-6, atol=1e-5)  # other row counts: other rounding
            if round_beams == 1:
                assert sum(rows) < n_full  # some last-level beams were never stepped


def test_a_renormalised_beams_only_child_finishes_without_a_step(model, monkeypatch):
    """Renormalised over the trie's children (softmax="trie"), an only child has log-probability 0:
    under a last level of one token per item (codes that collide get several), such beams finish
    with no model row, and the lists and scores are those of stepping every beam."""
    from genrec.decode.beam import SharedPromptSteps

    rows = []
    step = SharedPromptSteps.step
    monkeypatch.setattr(SharedPromptSteps, "step", lambda self, tokens, *a, **kw: (rows.append(len(tokens)),
                                                                                    step(self, tokens, *a, **kw))[1])
    rng = np.random.default_rng(31)
    codes = [tuple(int(x) for x in rng.integers(0, 4, 2)) for _ in range(20)]  # some codes collide
    items = [[10 + c[0], 14 + c[1], 18 + j] for j, c in enumerate(codes)]  # item j's own last token
    assert any(codes.count(c) > 1 for c in codes) and any(codes.count(c) == 1 for c in codes)
    ps = prompts(5, seed=32)
    dec = Decoder.from_hf(model)
    dec.renorm = True
    full = beam_search(dec, ps, Trie(items), beams=8, k=6, round_beams=None)
    n_full = sum(rows)
    rows.clear()
    got = beam_search(dec, ps, Trie(items), beams=8, k=6, round_beams=3)
    assert got.items.tolist() == full.items.tolist()
    np.testing.assert_allclose(got.scores, full.scores, rtol=1e-6, atol=1e-5)
    assert sum(rows) < n_full
