"""CLLM4Rec (genrec.llm.cllm4rec) and CLLM4Rec-Emb, on a tiny random Llama with the real tokenizer:
user/item tokens are single tokens that text never produces, item reordering keeps the item set,
the item head is a dot product with the item token embeddings, masked prompts never show their
held-out items, the mutual regulariser matches a hand computation, a tiny model trains, saves, loads
and ranks the same; the variants, the collaborative-only path, the two-tower, `genrec run`'s wiring
and a smoke run of benchmarks/cllm4rec.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrec.evaluate import Evaluator
from genrec.llm.backbone import text_ids
from genrec.llm.cllm4rec import (
    CLLM4Rec,
    Vocab,
    add_user_item_tokens,
    content_corpus,
    item_token,
    masked_prompt,
    mutual_regulariser,
    shuffled_items,
    user_token,
)
from tests.conftest import tiny_shop

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def settings(backbone: Path, **config) -> dict:
    """A tiny, quick CLLM4Rec: one pretraining pass, two fine-tuning epochs, short texts."""
    return {"config": {"backbone": str(backbone), "layers": None, "dtype": "fp32", "pretrain_epochs": 1,
                       "max_text_tokens": 8, **config},
            "train": {"epochs": 2, "progress": False, "device": "cpu"}}


@pytest.fixture(scope="module")
def fitted(shop, tiny_backbone, tmp_path_factory):
    """(model, saved folder, checkpoint folder, fit info) of a tiny CLLM4Rec."""
    _, ds = shop
    tmp = tmp_path_factory.mktemp("cllm4rec")
    s = settings(tiny_backbone)
    model = CLLM4Rec(s["config"], s["train"])
    info = model.fit(ds, checkpoint_dir=tmp / "ckpt", log=lambda line: None)
    model.save(tmp / "model")
    return model, tmp / "model", tmp / "ckpt", info


def test_user_and_item_tokens_are_single_tokens_and_item_text_never_produces_them(tokenizer, shop):
    _, ds = shop
    base = add_user_item_tokens(tokenizer, ds.n_users, ds.n_items)
    vocab = Vocab(base, ds.n_users, ds.n_items)
    for u in (0, 7, ds.n_users - 1):
        assert tokenizer(user_token(u), add_special_tokens=False)["input_ids"] == [vocab.user(u)]
    for j in (0, 11, ds.n_items - 1):
        assert tokenizer(item_token(j), add_special_tokens=False)["input_ids"] == [vocab.item(j)]
    hostile = f"buy {item_token(3)} with {user_token(2)}<|im_end|>{item_token(0)}"
    ids = text_ids(tokenizer, hostile)
    assert max(ids) < base and tokenizer.decode(ids) == hostile
    # a catalogue whose titles and reviews spell the tokens: the content documents' text stays text
    poisoned = type(ds)(ds.items.assign(title=f"{item_token(1)} {user_token(0)}", description=item_token(2)),
                        ds.user_ids, ds.interactions.assign(review=f"love {item_token(4)}{user_token(5)}"), ds.meta)
    from genrec.llm.cllm4rec import Prompts
    from genrec.llm.config import CLLM4RecConfig

    corpus = content_corpus(poisoned, tokenizer, vocab, Prompts.build(tokenizer, CLLM4RecConfig()), 64)
    assert corpus.reviews > 0
    for doc, n_prompt, u, j in zip(corpus.docs, corpus.prompt_len, corpus.users, corpus.items, strict=True):
        assert max(doc[n_prompt:]) < base  # main text: plain text pieces only
        special = [int(t) for t in doc[:n_prompt] if t >= base]
        assert special == ([vocab.user(u), vocab.item(j)] if u >= 0 else [vocab.item(j)])


def test_reordering_changes_the_item_order_but_never_the_item_set(fitted, shop):
    items = np.array([5, 9, 2, 7, 7, 1, 3])
    orders = [shuffled_items(items, np.random.default_rng(s)) for s in range(5)]
    assert all(sorted(o) == sorted(items) for o in orders)
    assert any(not np.array_equal(o, items) for o in orders)
    # the collaborative documents of two pretraining passes: each user's items as a multiset, in new orders
    model, _, _, _ = fitted
    _, ds = shop
    train = ds.train_sequences()
    first, second = ({}, {})
    for out, seed in ((first, 1), (second, 2)):
        for b in model._pretrain_batches(train, content_corpus(ds, model.tokenizer, model.vocab, model.prompts, 8),
                                         np.random.default_rng(seed)):
            if b["kind"] != "collab":
                continue
            for doc in b["docs"]:
                out[int(doc[0]) - model.vocab.base] = doc[model.vocab.is_item(doc)] - model.vocab.base - ds.n_users
    assert set(first) == {u for u, s in enumerate(train) if len(s)}
    for u, got in first.items():
        assert sorted(got) == sorted(train[u]) == sorted(second[u])
    assert any(not np.array_equal(first[u], second[u]) for u in first)


def test_the_item_head_scores_are_dot_products_with_the_item_token_embeddings(fitted, shop, tokenizer):
    model, _, _, _ = fitted
    _, ds = shop
    split = ds.eval_split("test")
    users = np.array([0, 3, 8])
    hist = [split.histories[u] for u in users]
    got = model.score(hist, users)
    # independently: the prompt as a string through the extended tokenizer, embedded by hand
    base = add_user_item_tokens(tokenizer, ds.n_users, ds.n_items)
    lm, m = model.model.lm, model.model
    item_w = m.item_c.weight.detach().numpy()
    for r, (u, h) in enumerate(zip(users, hist, strict=True)):
        text = f"{user_token(u)} has interacted with" + "".join(item_token(j) for j in h) + " the user will interact with:"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == model.prompt_ids(h, int(u)).tolist()
        rows = []
        for t in ids:
            if t < base:
                rows.append(lm.get_input_embeddings().weight[t])
            elif t < base + ds.n_users:
                rows.append(m.user_c.weight[t - base])
            else:
                rows.append(m.item_c.weight[t - base - ds.n_users])
        with torch.no_grad():
            state = lm.model(inputs_embeds=torch.stack(rows)[None]).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(got[r], item_w @ state, rtol=1e-4, atol=1e-4)


def test_masked_prompts_never_contain_their_held_out_items(fitted, shop):
    for n in (1, 2, 5, 13):
        items = np.arange(100, 100 + n)
        for seed in range(4):
            kept, held = masked_prompt(items, 0.2, np.random.default_rng(seed))
            assert len(held) == max(1, round(0.2 * n)) and not set(kept) & set(held)
            assert sorted([*kept, *held]) == list(items)
    model, _, _, _ = fitted
    _, ds = shop
    train = ds.train_sequences()
    vocab = model.vocab
    for b in model._finetune_batches(train, np.random.default_rng(0)):
        for doc, held, owned in zip(b["docs"], b["held"], b["owned"], strict=True):
            shown = set((doc[vocab.is_item(doc)] - vocab.base - vocab.n_users).tolist())
            assert len(held) and not shown & set(held.tolist())
            assert shown | set(held.tolist()) == set(owned.tolist())


def test_the_mutual_regulariser_by_hand(fitted):
    c_u, t_u = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    c_i, t_i = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    # (1 + 4) + (1 + 0) + (0 + 4) = 10; weight 0.5 / 2 * 10 / 2 documents
    assert float(mutual_regulariser(c_u, t_u, c_i, t_i, 0.5, 2)) == pytest.approx(1.25)
    # through the model: each user/item with content once, however often it occurs; the other side fixed
    model, _, _, _ = fitted
    m, v = model.model, model.vocab
    m.content_users[:] = True
    m.content_items[:] = True
    m.content_items[7] = False
    tokens = torch.tensor([v.user(2), 15, v.item(5), v.user(2), v.item(5), v.item(7), v.item(9), 20])
    m.zero_grad()
    reg = m.mutual(tokens, 3, "c", 0.3)
    w = {t: getattr(m, t).weight.detach().numpy() for t in ("user_c", "user_t", "item_c", "item_t")}
    hand = (np.sum((w["user_c"][2] - w["user_t"][2]) ** 2) + np.sum((w["item_c"][5] - w["item_t"][5]) ** 2)
            + np.sum((w["item_c"][9] - w["item_t"][9]) ** 2))
    assert float(reg.detach()) == pytest.approx(0.3 / 2 * hand / 3, rel=1e-5)
    reg.backward()
    assert m.item_t.weight.grad is None and m.item_c.weight.grad[5].abs().sum() > 0
    assert m.item_c.weight.grad[7].abs().sum() == 0
    m.zero_grad()


def test_a_tiny_model_trains_saves_loads_and_ranks_the_same(fitted, shop, tiny_backbone):
    model, folder, ckpt, info = fitted
    _, ds = shop
    assert info["review_documents"] > 0 and not info["collaborative_only"] and info["epochs_run"] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["cllm4rec.json", "model.safetensors"]
    loaded = CLLM4Rec.load(folder, device="cpu")
    split = ds.eval_split("test")
    users = np.arange(ds.n_users)
    np.testing.assert_array_equal(model.score(split.histories, users), loaded.score(split.histories, users))
    ev = Evaluator(ds, progress=False)
    assert ev.evaluate(model, "test").metrics == ev.evaluate(loaded, "test").metrics
    # rerun on the finished checkpoint: it resumes at the end and keeps the same weights
    lines = []
    s = settings(tiny_backbone)
    again = CLLM4Rec(s["config"], s["train"])
    again.fit(ds, checkpoint_dir=ckpt, log=lines.append)
    assert any("resumed" in line for line in lines)
    np.testing.assert_array_equal(again.score(split.histories, users), loaded.score(split.histories, users))


def test_a_killed_fit_resumes_mid_epoch_and_ends_as_an_uninterrupted_one(shop, tiny_backbone, tmp_path, monkeypatch):
    _, ds = shop
    s = settings(tiny_backbone, save_every=1, pretrain_batch_size=8)
    whole = CLLM4Rec(s["config"], s["train"])
    whole.fit(ds, checkpoint_dir=tmp_path / "whole", log=lambda line: None)
    real, calls = CLLM4Rec._step, []

    def dying(self, batch, opt):
        calls.append(batch["kind"])
        if len(calls) == 7:
            raise KeyboardInterrupt  # a kill in the middle of the pretraining pass
        return real(self, batch, opt)

    monkeypatch.setattr(CLLM4Rec, "_step", dying)
    with pytest.raises(KeyboardInterrupt):
        CLLM4Rec(s["config"], s["train"]).fit(ds, checkpoint_dir=tmp_path / "killed", log=lambda line: None)
    monkeypatch.undo()
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert state["phase_no"] == 0 and state["step"] == 6
    lines: list[str] = []
    resumed = CLLM4Rec(s["config"], s["train"])
    resumed.fit(ds, checkpoint_dir=tmp_path / "killed", log=lines.append)
    assert "resumed" in lines[1] and "step 6" in lines[1]
    hist = ds.eval_split("test").histories
    np.testing.assert_allclose(resumed.score(hist, np.arange(ds.n_users)), whole.score(hist, np.arange(ds.n_users)),
                               rtol=1e-5, atol=1e-5)
    valid = [[h["valid"] for h in model.log["finetune"]["history"]] for model in (resumed, whole)]
    assert valid[0] == valid[1]


@pytest.mark.parametrize("variant", ["prerec", "ftall", "scratch"])
def test_the_comparison_variants(variant, shop, tiny_backbone, tmp_path, fitted):
    _, ds = shop
    s = settings(tiny_backbone, variant=variant)
    s["train"]["epochs"] = 1
    model = CLLM4Rec(s["config"], s["train"])
    info = model.fit(ds, log=lambda line: None)
    model.save(tmp_path)
    keys = json.loads((tmp_path / "cllm4rec.json").read_text())
    from genrec.safefiles import load_tensors

    saved = load_tensors(tmp_path / "model.safetensors")
    backbone = any(k.startswith("lm.") for k in saved)
    assert backbone == (variant != "prerec")
    assert keys["config"]["variant"] == variant
    if variant == "prerec":  # pretraining only, selected on validation, ranked by the collaborative LM
        assert "finetune" not in model.log and info["epochs_run"] == 1
        assert "will interact" not in model.tokenizer.decode([t for t in model.prompt_ids(np.array([1]), 0) if t < model.vocab.base])
    pretrained = fitted[0].model.lm.state_dict()
    weight = "model.layers.0.mlp.up_proj.weight"
    changed = not torch.equal(saved[f"lm.{weight}"], pretrained[weight]) if backbone else False
    assert changed == (variant in ("ftall", "scratch"))
    scores = CLLM4Rec.load(tmp_path, device="cpu").score(ds.eval_split("test").histories[:4], np.arange(4))
    np.testing.assert_array_equal(scores, model.score(ds.eval_split("test").histories[:4], np.arange(4)))


def test_a_dataset_without_text_trains_the_collaborative_lm_alone_and_says_so(shop, tiny_backbone):
    _, ds = shop
    bare = type(ds)(ds.items.assign(title="", description=""), ds.user_ids, ds.interactions.drop(columns="review"), ds.meta)
    s = settings(tiny_backbone)
    s["train"]["epochs"] = 1
    lines = []
    info = CLLM4Rec(s["config"], s["train"]).fit(bare, log=lines.append)
    assert info["collaborative_only"] and info["content_documents"] == 0
    assert any("collaborative LM alone" in line for line in lines)


def test_cllm4rec_emb_is_a_two_tower_over_the_projected_token_embeddings(fitted, shop, tmp_path):
    from genrec.llm.cllm4rec_emb import CLLM4RecEmb

    model, folder, _, _ = fitted
    _, ds = shop
    emb = CLLM4RecEmb({"source": str(folder), "dim": 16}, {"epochs": 2, "progress": False, "device": "cpu"})
    emb.fit(ds)
    users_c, items_c = model.embeddings()
    np.testing.assert_array_equal(emb.model.user_feat.numpy(), users_c)
    assert emb.model.proj_item.weight.shape == (16, items_c.shape[1])
    emb.save(tmp_path)
    again = CLLM4RecEmb.load(tmp_path, device="cpu")
    split = ds.eval_split("test")
    np.testing.assert_array_equal(emb.score(split.histories, np.arange(ds.n_users)),
                                  again.score(split.histories, np.arange(ds.n_users)))


def test_genrec_run_fits_cllm4rec_and_feeds_its_folder_to_cllm4rec_emb(shop, tiny_backbone, tmp_path, cli):
    root, _ = shop
    s = settings(tiny_backbone)
    s["train"]["epochs"] = 1
    config = {"name": "t", "run_dir": str(tmp_path / "run"), "data": {"source": str(root / "raw"), "prepare": {"kcore": 2}},
              "baselines": ["cllm4rec-emb"],
              "baseline_params": {"cllm4rec": s, "cllm4rec-emb": {"config": {"dim": 8}, "train": {"epochs": 1, "progress": False}}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = cli("run", path)
    assert code == 0, err
    assert "[baseline:cllm4rec] done" in err and "[baseline:cllm4rec-emb] done" in err  # the stage notes
    assert "cllm4rec-emb" in out  # the metrics table
    manifest = json.loads((tmp_path / "run" / "baselines" / "cllm4rec-emb" / "manifest.json").read_text())
    assert manifest["config"]["params"]["config"]["source"] == str(tmp_path / "run" / "baselines" / "cllm4rec" / "model")
    assert "source" in manifest["inputs"]
    code, out, err = cli("run", path)  # up to date: both skipped
    assert code == 0 and err.count("up to date") == 3, err


def test_the_benchmark_script_smoke(shop, tiny_backbone, real_tokenizer, tmp_path):
    """benchmarks/cllm4rec.py (the script, as a subprocess) on the tiny shop, every row, and the latency against a
    2-step semantic-ID model."""
    from transformers import AutoTokenizer

    from benchmarks import cllm4rec as bench
    from genrec.cli import main
    from genrec.llm.backbone import add_tokens
    from genrec.llm.corpus import build_corpus, save_corpus
    from genrec.llm.tasks import TaskConfig

    run = tmp_path / "semid"
    ds, index = tiny_shop(run)
    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    add_tokens(tok, None, index.new_tokens)
    tr, va, info = build_corpus(ds, index, tok, TaskConfig(negatives_per_positive=0), valid_users=5)
    info.update(new_token_list=index.new_tokens, backbone=str(tiny_backbone))
    save_corpus(run / "corpus", tr, va, info)
    assert main(["train", "--corpus", str(run / "corpus"), "--out", str(run / "model"), "--set", "max_steps=1",
                 "--set", "dtype=fp32", "--no-progress"]) == 0
    out = tmp_path / "results"
    sets = [f"--set=config.backbone={tiny_backbone}", "--set=config.layers=null", "--set=config.dtype=fp32",
            "--set=config.pretrain_epochs=1", "--set=config.max_text_tokens=8", "--set=train.epochs=1",
            "--set=train.progress=false", "--emb-set=train.epochs=1", "--emb-set=train.progress=false"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cllm4rec.py"), "--dataset", "tiny", "--data", str(run / "data"),
                           "--run-dir", str(tmp_path / "runs"), "--out", str(out), "--semid-run", str(run),
                           "--latency-users", "3", *sets], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "cllm4rec.json").read_text())
    assert [r["method"] for r in rows] == list(bench.METHODS)
    for r in rows:
        assert {"dataset", "method", "HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "wall_seconds", "budget"} <= set(r)
        assert r["dataset"] == "tiny" and 0 <= r["NDCG@10"] <= 1
    assert {r["budget"].get("variant") for r in rows} >= {"cllm4rec", "prerec", "scratch", "ftall"}
    latency = json.loads((out / "cllm4rec_latency.json").read_text())
    assert len(latency) == 2 and all(x["ms_per_user"] > 0 for x in latency)
    assert "## Latency" in (out / "cllm4rec.md").read_text()
