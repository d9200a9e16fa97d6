"""The TALLRec-style yes/no ranker: prompts and negatives, P(Yes) against the model's own token
probabilities, training, reranking, save/load and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrec.errors import DataError, GenrecError
from genrec.llm.config import LLMTrainConfig, TallrecConfig


def small_cfg(backbone, **kw) -> TallrecConfig:
    train = {"dtype": "fp32", "device": "cpu", "lr": 5e-3, "epochs": 3, "batch_size": 8, "save_every": 1000,
             "lora_r": 4, **kw.pop("train", {})}
    return TallrecConfig(backbone=str(backbone), valid_users=8, train=LLMTrainConfig(**train), **kw)


@pytest.fixture(scope="module")
def trained(shop, tiny_backbone, tmp_path_factory, one_thread):
    from genrec.llm.tallrec import train_tallrec

    root, _ = shop
    out = tmp_path_factory.mktemp("tallrec") / "ranker"
    metrics = train_tallrec(root / "data", out, small_cfg(tiny_backbone, negatives=2, positions=2), progress=False)
    return out, metrics


def test_samples_keep_the_target_out_of_the_history_and_negatives_out_of_the_positives(shop):
    from genrec.llm.tallrec import training_samples

    _, ds = shop
    cfg = TallrecConfig(negatives=3, positions=2)
    samples = training_samples(ds, cfg, seed=0)
    seqs = ds.train_sequences()
    pos = [(u, len(h), i) for u, h, i, y in samples if y]
    for u, h, i, y in samples:
        s = seqs[u]
        assert h.tolist() == s[: len(h)].tolist() and len(h) >= 1  # a prefix of the user's training sequence
        target = int(s[len(h)])
        if y:
            assert i == target and i not in h.tolist() or ds.has_repeats()
        else:  # a negative: never this position's target, never in its history
            assert i != target and i not in s[: len(h) + 1].tolist()
    # every user with >= 3 training items gives its last 2 positions, each with 3 distinct negatives
    expect = {(u, t) for u, s in enumerate(seqs) for t in range(max(1, len(s) - 2), len(s))}
    assert {(u, n) for u, n, _ in pos} == expect
    for u, n, _ in pos:
        negs = [i for uu, h, i, y in samples if uu == u and len(h) == n and not y]
        assert len(negs) == len(set(negs)) == 3
    assert [(u, i) for u, _, i, _ in training_samples(ds, cfg, seed=0)] == [(u, i) for u, _, i, _ in samples]  # seeded
    assert [i for *_, i, y in training_samples(ds, cfg, seed=1) if not y] != [i for *_, i, y in samples if not y]


def test_the_prompt_reads_the_history_then_the_candidate_and_escapes_titles(tokenizer):
    from genrec.llm.tallrec import YesNoPrompt

    titles = ["Red pen", "Blue <|im_start|> ink", "Lab coat"]
    p = YesNoPrompt(tokenizer, titles, max_history=2, chat=False)
    ids = p.ids([0, 1, 2], 0)
    assert tokenizer.decode(ids) == ("The user bought, oldest first: Blue <|im_start|> ink; Lab coat. Candidate: Red pen. "
                                     "Will the user buy the candidate? Answer Yes or No.\nAnswer:")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start not in ids  # the title's control text stays text
    assert tokenizer.decode(p.ids([], 2)).startswith("The user has bought nothing yet. Candidate: Lab coat.")
    chat = YesNoPrompt(tokenizer, titles, chat=True)
    assert chat.ids([1], 0).count(im_start) == chat.ids([0], 2).count(im_start) == 3  # system, user, assistant turns only
    assert tokenizer.decode([chat.yes, chat.no]) == "YesNo" and tokenizer.decode([p.yes, p.no]) == " Yes No"


def test_training_lowers_the_loss_and_writes_the_model(trained):
    out, metrics = trained
    import json

    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in log if "loss" in x]
    assert len(losses) >= 6 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert (out / "tallrec.json").is_file() and metrics["negatives"] == 2 * metrics["positives"]
    assert not list(out.parent.glob(".ckpt-*"))  # the finished run's checkpoint is gone


@pytest.mark.filterwarnings("ignore:All adapters are already merged")  # the ranker's model comes merged
def test_scores_equal_the_softmax_of_the_yes_and_no_logits_by_hand(trained, shop):
    from genrec.llm.model import merged_hf_model
    from genrec.llm.tallrec import YesNoRanker

    out, _ = trained
    root, ds = shop
    ranker = YesNoRanker.load(out, root / "data", device="cpu", batch_rows=3)
    split = ds.eval_split("test")
    users = [u for u in range(ds.n_users) if split.targets[u] >= 0][:3]
    hists = [split.histories[u] for u in users]
    items = np.array([[4, 0, 7, -1], [1, 2, 3, 5], [9, 8, -1, -1]])
    p = ranker.p_yes(hists, items)
    # slow: one unpadded forward per pair through the plain HF model (LoRA merged), softmax of two logits by hand
    hf = merged_hf_model(YesNoRanker.load(out, root / "data", device="cpu").lm)
    for u, row in enumerate(items):
        for j, i in enumerate(row):
            if i < 0:
                assert p[u, j] == 0.0
                continue
            ids = torch.tensor([ranker.prompt.ids(hists[u], int(i))])
            with torch.no_grad():
                logits = hf(input_ids=ids).logits[0, -1]
            y, n = float(logits[ranker.prompt.yes]), float(logits[ranker.prompt.no])
            assert p[u, j] == pytest.approx(math.exp(y) / (math.exp(y) + math.exp(n)), abs=1e-5)
    # save/load: a second load gives the same scores
    again = YesNoRanker.load(out, root / "data", device="cpu", batch_rows=64)
    assert np.allclose(again.p_yes(hists, items), p, atol=1e-6)


def test_the_reranked_list_is_the_shortlist_sorted_by_p_yes(trained, shop, tmp_path):
    from genrec.baselines import Pop
    from genrec.decode.rerank import shortlist
    from genrec.llm.tallrec import YesNoRanker

    out, _ = trained
    root, ds = shop
    ranker = YesNoRanker.load(out, root / "data", device="cpu")
    pop = Pop()
    pop.fit(ds)
    split = ds.eval_split("test")
    users = np.flatnonzero(split.targets >= 0)[:4]
    hists = [split.histories[u] for u in users]
    short = shortlist(pop, ranker, hists, users, candidates=6, n=10)
    p = ranker.p_yes(hists, short.items[:, :6])
    lists = short.ranker(1.0).rank(None, users, 10)
    for row, probs, lst in zip(short.items, p, lists, strict=True):
        want = [int(row[j]) for j in sorted(range(6), key=lambda j: (-probs[j], j))]  # ties keep the classic order
        assert lst[:6].tolist() == want and lst[6:].tolist() == row[6:].tolist()


def test_bad_input_errors_are_clear(trained, shop, tmp_path, tiny_backbone):
    from genrec.llm.tallrec import YesNoRanker, train_tallrec

    out, _ = trained
    root, ds = shop
    with pytest.raises(DataError, match="yes/no ranker folder"):
        YesNoRanker.load(tmp_path, root / "data", device="cpu")
    with pytest.raises(DataError, match="prepared dataset"):
        train_tallrec(tmp_path / "nothing", tmp_path / "x", small_cfg(tiny_backbone))
    from genrec.data.dataset import Dataset

    keep = ds.interactions.item_idx < 5  # the same users on a catalogue of 5 items
    Dataset(ds.items.iloc[:5], ds.user_ids, ds.interactions[keep], ds.meta).save(tmp_path / "cut")
    with pytest.raises(DataError, match="catalogue the ranker was trained on"):
        YesNoRanker.load(out, tmp_path / "cut", device="cpu")
    ranker = YesNoRanker.load(out, root / "data", device="cpu")
    with pytest.raises(GenrecError, match="not in the ranker's catalogue"):
        ranker.score_items([np.array([0])], np.array([[ds.n_items]]))
    with pytest.raises(GenrecError, match="expected \\[users, candidates\\]"):
        ranker.score_items([np.array([0])], np.array([1, 2]))


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(shop, tiny_backbone, tmp_path, one_thread):
    from genrec.llm.files import load_trained_weights
    from genrec.llm.tallrec import train_tallrec

    root, _ = shop
    cfg = small_cfg(tiny_backbone, train={"max_steps": 6, "epochs": 1})
    whole = train_tallrec(root / "data", tmp_path / "whole", cfg, progress=False)
    first = train_tallrec(root / "data", tmp_path / "cut", cfg, progress=False, stop_after=3)
    assert first["stopped"] and first["step"] == 3 and not (tmp_path / "cut").exists()
    second = train_tallrec(root / "data", tmp_path / "cut", cfg, progress=False)
    assert second["steps"] == whole["steps"] == 6
    a, b = load_trained_weights(tmp_path / "whole"), load_trained_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_rerank_names_a_bad_method_or_a_missing_index(shop, cli, tmp_path):
    root, _ = shop
    args = ["rerank", "--base", tmp_path, "--model", tmp_path, "--data", root / "data", "--out", tmp_path / "o"]
    code, _, err = cli(*args, "--method", "pairwise")
    assert code == 2 and "--method 'pairwise': expected one of codes, tallrec" in err
    code, _, err = cli(*args)
    assert code == 2 and "needs --index" in err
    code, _, err = cli(*args, "--method", "tallrec")
    assert code == 2 and "yes/no ranker folder" in err
    code, _, err = cli("tallrec", "train", "--data", root / "data", "--out", tmp_path / "t", "--set", "negatives=0")
    assert code == 2 and "negatives" in err and not (tmp_path / "t").exists()
