"""LLM fine-tuning on a tiny random Llama with the real tokenizer: the loss is the plain causal-LM
loss on target tokens (checked against Hugging Face's own), only new-token rows and adapters
move, batches cover the corpus, and a resumed run takes the same steps as an uninterrupted one."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genrec.llm.backbone import add_tokens
from genrec.llm.config import LLMTrainConfig
from genrec.llm.corpus import Corpus, build_corpus, load_corpus, save_corpus
from genrec.llm.tasks import TaskConfig
from genrec.llm.train import collate, lr_factor, make_batches, sessions, train, training_seconds
from tests.conftest import launch_two, plant_pickle, tiny_shop, unpickle_in_full

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, real_tokenizer, tiny_backbone):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("train")
    ds, index = tiny_shop(root)
    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    add_tokens(tok, None, index.new_tokens)
    tr, va, info = build_corpus(ds, index, tok, TaskConfig(negatives_per_positive=1), valid_users=10)
    info.update(new_token_list=index.new_tokens, backbone=str(tiny_backbone))
    save_corpus(root / "corpus", tr, va, info)
    return root, ds, index


def cfg(tiny_backbone, **kw) -> LLMTrainConfig:
    base = dict(lr=5e-3, epochs=1, batch_size=8, batch_tokens=2048, lora_dropout=0.0,
                warmup_ratio=0.1, save_every=1000, log_every=1, dtype="fp32")
    return LLMTrainConfig(**{**base, **kw})


def losses(out) -> list[float]:
    return [x["loss"] for x in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in x]


def test_batches_cover_the_corpus_once_and_respect_the_budget():
    lengths = np.random.default_rng(1).integers(5, 120, size=500)
    c = LLMTrainConfig(batch_size=16, batch_tokens=600, seed=3)
    batches = make_batches(lengths, c, epoch=0)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 16 and (len(b) == 1 or len(b) * lengths[b].max() <= 600)
    assert all((x == y).all() for x, y in zip(batches, make_batches(lengths, c, epoch=0), strict=True))
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(batches, make_batches(lengths, c, epoch=1), strict=False))
    # length grouping pads far less than random batches of the same size
    rand = make_batches(lengths, LLMTrainConfig(batch_size=16, grouping="random", seed=3), 0)

    def padded(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    assert padded(batches) < 0.8 * padded(rand)


def test_task_fraction_samples_a_share_of_the_named_tasks_each_epoch():
    from genrec.errors import GenrecError
    from genrec.llm.train import Units, task_shares

    corpus = _corpus([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1]), ([6, 7, 8], [0, 0, 1]), ([9, 10], [0, 1])])
    corpus.task = np.array([0, 1, 1, 0], np.int16)
    corpus.task_names = ["item2title", "seq"]
    units = Units(corpus, share=False)
    assert task_shares(corpus, units, {}) is None
    assert task_shares(corpus, units, {"item2title": 0.25}).tolist() == [0.25, 1.0, 1.0, 0.25]
    with pytest.raises(GenrecError, match="title2item.*its tasks: item2title, seq"):
        task_shares(corpus, units, {"title2item": 0.5})

    lengths = np.random.default_rng(1).integers(5, 120, size=400)
    share = np.where(np.arange(400) % 2 == 0, 0.3, 1.0)  # even rows: a task at 0.3
    c = LLMTrainConfig(batch_size=16, batch_tokens=600, seed=3)
    seen = np.zeros(400)
    for epoch in range(100):
        full = np.concatenate(make_batches(lengths, c, epoch))
        part = np.concatenate(make_batches(lengths, c, epoch, share))
        assert len(set(part.tolist())) == len(part)  # no row twice
        assert set(np.arange(1, 400, 2)) <= set(part.tolist())  # rows at 1.0 always take part
        seen[part] += 1
        assert len(full) == 400
    assert (seen[1::2] == 100).all()
    assert abs(seen[0::2].mean() / 100 - 0.3) < 0.02  # 20,000 draws: about 6 standard deviations
    assert make_batches(lengths, c, 5, np.ones(400))[0].tolist() == make_batches(lengths, c, 5)[0].tolist()


def test_a_short_epoch_wraps_around_to_its_first_batches():
    from genrec.llm.train import step_batches

    batches = [np.array([i]) for i in range(7)]  # this epoch's shuffle cut 7 batches; steps take 3
    ids = lambda mine: [int(b[0]) for b in mine]  # noqa: E731
    assert [ids(step_batches(batches, pos, 3)) for pos in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]
    assert ids(step_batches(batches[:2], 0, 5)) == [0, 1, 0, 1, 0]


def test_lr_schedule_by_hand():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_loss_equals_huggingface_causal_lm_loss(setup, tiny_backbone):
    from transformers import AutoModelForCausalLM

    from genrec.llm.model import CodeLM

    root, _, index = setup
    corpus, _, meta = load_corpus(root / "corpus")
    ref = AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32)
    ref.resize_token_embeddings(meta["vocab_size"], mean_resizing=False)
    torch.manual_seed(0)
    with torch.no_grad():  # give the new rows values, so the check covers them
        ref.get_input_embeddings().weight[-len(index.new_tokens) :] = torch.randn(len(index.new_tokens), 32) * 0.1
    batch = collate(corpus, np.arange(6), pad_id=0, device=torch.device("cpu"))
    labels = torch.where(batch["target_mask"], batch["input_ids"], torch.full_like(batch["input_ids"], -100))
    with torch.no_grad():
        hf = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        n = int(batch["target_mask"][:, 1:].sum())
        lm = CodeLM(ref, len(index.new_tokens), "lora", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
        nll, count, _ = lm(**batch)
    assert int(count) == n
    assert float(nll) / n == pytest.approx(float(hf.loss), rel=1e-5)


def test_training_lowers_loss_and_moves_only_new_rows_and_adapters(setup, tiny_backbone, tmp_path):
    from genrec.llm.train import build_model

    root, _, index = setup
    tr, va, meta = load_corpus(root / "corpus")
    c = cfg(tiny_backbone, epochs=4)
    metrics = train(c, str(tiny_backbone), tr, va, index.new_tokens, tmp_path / "out", tmp_path / "ckpt", meta["vocab_size"], progress=False)
    curve = losses(tmp_path / "out")
    assert np.mean(curve[-3:]) < np.mean(curve[:3]) - 0.3
    vals = [x["val_loss"] for x in map(json.loads, (tmp_path / "out" / "log.jsonl").read_text().splitlines()) if "val_loss" in x]
    assert len(vals) == 4 and vals[-1] < vals[0]
    assert metrics["steps"] == len(curve)
    lm, _ = build_model(c, str(tiny_backbone), index.new_tokens, torch.device("cpu"), meta["vocab_size"])
    fresh = lm.trainable_state()
    trained = load_file(tmp_path / "out" / "trainable.safetensors")
    assert set(trained) == set(fresh)
    assert any("lora" in k for k in trained) and any(k.endswith("embed_tokens.new") for k in trained)
    assert not any(k.endswith(".old") for k in trained)  # the backbone's vocabulary rows are frozen
    assert all(not torch.equal(trained[k], fresh[k]) for k in trained if "lora_B" in k or k.endswith(".new"))


def test_val_loss_false_skips_the_validation_pass_and_trains_the_same(setup, tiny_backbone, tmp_path):
    """`val_loss: false` (the demo, which selects by ranking): no validation pass, no val_loss in the
    log or the summary, the same training losses; the run summary then leaves the loss out."""
    from genrec.cli import _fit_summary

    root, _, index = setup
    tr, va, meta = load_corpus(root / "corpus")
    runs = {}
    for flag in (True, False):
        out = tmp_path / str(flag)
        m = train(cfg(tiny_backbone, epochs=2, val_loss=flag), str(tiny_backbone), tr, va, index.new_tokens, out,
                  tmp_path / f"ckpt-{flag}", meta["vocab_size"], progress=False)
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        runs[flag] = (m, losses(out), [x for x in log if "val_loss" in x])
    assert len(runs[True][2]) == 2 and runs[True][0]["val_loss"] is not None
    assert runs[False][2] == [] and runs[False][0]["val_loss"] is None
    assert runs[False][1] == pytest.approx(runs[True][1], abs=1e-6)
    assert "validation loss" in _fit_summary(runs[True][0]) and "validation" not in _fit_summary(runs[False][0])
    assert "kept step 40 (epoch 2) with validation NDCG@10 0.3100" in _fit_summary(
        {"final_train_loss": 1.0, "val_loss": None, "selected_step": 40, "selected_epoch": 2.0, "valid_NDCG@10": 0.31})


def test_trained_weights_survive_save_and_load(setup, tiny_backbone, tmp_path):
    from genrec.llm.train import build_model

    root, _, index = setup
    tr, va, meta = load_corpus(root / "corpus")
    c = cfg(tiny_backbone, max_steps=3)
    train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "out", tmp_path / "ckpt", meta["vocab_size"], progress=False)
    a, _ = build_model(c, str(tiny_backbone), index.new_tokens, torch.device("cpu"), meta["vocab_size"])
    a.load_trainable(load_file(tmp_path / "out" / "trainable.safetensors"))
    b, _ = build_model(c, str(tiny_backbone), index.new_tokens, torch.device("cpu"), meta["vocab_size"])
    batch = collate(tr, np.arange(4), 0, torch.device("cpu"))
    with torch.no_grad():
        trained, untrained = a(**batch)[0], b(**batch)[0]
        b.load_trainable(load_file(tmp_path / "out" / "trainable.safetensors"))
        assert float(b(**batch)[0]) == pytest.approx(float(trained), rel=1e-6)
    assert float(untrained) != pytest.approx(float(trained), rel=1e-3)


def test_interrupted_then_resumed_matches_uninterrupted(setup, tiny_backbone, tmp_path):
    root, _, index = setup
    tr, va, meta = load_corpus(root / "corpus")
    c = cfg(tiny_backbone, epochs=2, lora_dropout=0.1)  # dropout: the RNG state must be restored too
    train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "a", tmp_path / "ckpt-a", meta["vocab_size"], progress=False)
    stopped = train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "b", tmp_path / "ckpt-b", meta["vocab_size"],
                    progress=False, stop_after=3)
    assert stopped["stopped"] and stopped["step"] == 3
    # the checkpoint of the unfinished run decodes like a model folder, with its step-3 weights
    from genrec.decode.recommender import GenerativeRecommender

    rec = GenerativeRecommender.load(tmp_path / "ckpt-b", root / "index", device="cpu", beams=4)
    state = load_file(tmp_path / "ckpt-b" / "trainable.safetensors")
    assert json.loads((tmp_path / "ckpt-b" / "state.json").read_text())["step"] == 3
    torch.testing.assert_close(rec.lm.embed.new.detach(), state["model.base_model.model.model.embed_tokens.new"])
    assert rec.rank([np.array([0, 1])], np.array([0]), k=3).shape == (1, 3)
    assert sorted(p.name for p in (tmp_path / "ckpt-b").iterdir()) == [
        "log.jsonl", "optimizer.pt", "rng-0.safetensors", "state.json", "train_config.json", "trainable.safetensors"]
    as_older_versions_wrote(tmp_path / "ckpt-b", tmp_path / "ckpt-c")
    done = train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "b", tmp_path / "ckpt-b", meta["vocab_size"],
                 progress=False)
    # a checkpoint of an older version (state.pt, rng-0.pt of plain tensors) resumes too, weights-only
    train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "c", tmp_path / "ckpt-c", meta["vocab_size"],
          progress=False)
    np.testing.assert_allclose(losses(tmp_path / "c"), losses(tmp_path / "a"), rtol=1e-5)
    full, resumed = losses(tmp_path / "a"), losses(tmp_path / "b")
    # training time adds both sessions: the first one's clock at step 3 plus the second one's at the end
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    clock = [x["seconds"] for x in log if "seconds" in x]
    assert done["sessions"] == 2 and done["train_seconds"] == pytest.approx(clock[2] + clock[-1], abs=0.1)
    assert len(full) == len(resumed) > 4
    np.testing.assert_allclose(resumed, full, rtol=1e-5)
    a, b = load_file(tmp_path / "a" / "trainable.safetensors"), load_file(tmp_path / "b" / "trainable.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def as_older_versions_wrote(checkpoint, out) -> None:
    """Copy a checkpoint folder into the files older versions wrote: state.pt (trainable weights,
    optimizer, step, epoch) and rng-0.pt, by torch.save."""
    shutil.copytree(checkpoint, out)
    state = json.loads((out / "state.json").read_text())
    torch.save({"trainable": load_file(out / "trainable.safetensors"),
                "optimizer": torch.load(out / "optimizer.pt", weights_only=True), **state}, out / "state.pt")
    torch.save({"torch": load_file(out / "rng-0.safetensors")["torch"], "cuda": None}, out / "rng-0.pt")
    for name in ("state.json", "trainable.safetensors", "optimizer.pt", "rng-0.safetensors"):
        (out / name).unlink()


def test_a_model_folder_round_trips_through_safetensors_to_the_same_scores(setup, tiny_backbone, tmp_path, monkeypatch):
    """The folder holds the trained weights as trainable.safetensors (no pickle); loaded, the
    recommender scores every item exactly as the model built from the weights in memory does,
    and so does an older version's folder with trainable.pt instead (read weights-only)."""
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.llm import files
    from genrec.llm.train import build_model

    root, ds, index = setup
    tr, _, meta = load_corpus(root / "corpus")
    c = cfg(tiny_backbone, max_steps=2)
    in_memory, save = {}, files.save_trainable
    monkeypatch.setattr(files, "save_trainable", lambda folder, state: (in_memory.update({folder.name: state}), save(folder, state)))
    train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "out", tmp_path / "ckpt", meta["vocab_size"], progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["log.jsonl", "train_config.json", "trainable.safetensors"]
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "out", old)
    (old / "trainable.safetensors").unlink()
    torch.save(in_memory["out"], old / "trainable.pt")

    histories = [np.asarray(s[:-2]) for s in ds.sequences[:6]]
    items = np.tile(np.arange(index.n_items), (len(histories), 1))

    def scores(weights):
        lm, tok = build_model(c, str(tiny_backbone), index.new_tokens, torch.device("cpu"), meta["vocab_size"])
        if weights is not None:
            lm.load_trainable(weights)
        return GenerativeRecommender(lm.merge_for_inference(), tok, index, beams=4).score_items(histories, items)

    expected = scores(in_memory["out"])
    for folder in (tmp_path / "out", old):
        loaded = GenerativeRecommender.load(folder, root / "index", device="cpu", beams=4)
        np.testing.assert_array_equal(loaded.score_items(histories, items), expected)
    assert not np.allclose(scores(None), expected)  # the trained weights are what the scores depend on


@pytest.mark.parametrize("name", ["trainable.pt", "state.pt", "trainable.safetensors"])
def test_a_pickle_planted_in_a_model_folder_is_refused_and_runs_nothing(setup, tmp_path, name):
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.errors import DataError

    root, _, _ = setup
    folder, marker = tmp_path / "model", tmp_path / "planted-code-ran"
    folder.mkdir()
    (folder / "train_config.json").write_text(json.dumps({"backbone": "never-read"}))
    plant_pickle(folder / name, marker)
    with pytest.raises(DataError, match=re.escape(str(folder / name))):
        GenerativeRecommender.load(folder, root / "index", device="cpu")
    assert not marker.exists()
    unpickle_in_full(folder / name)  # the planted file is live: loaded in full, it runs
    assert marker.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "state.pt", "rng-0.pt"])
def test_a_pickle_planted_in_a_checkpoint_stops_the_resume_and_runs_nothing(setup, tiny_backbone, tmp_path, name):
    """A checkpoint's one pickle (optimizer.pt), or an older version's state.pt or rng-0.pt, is read
    weights-only: a planted one is a DataError before any step, and nothing of it runs."""
    from genrec.errors import DataError

    root, _, index = setup
    tr, _, meta = load_corpus(root / "corpus")
    c = cfg(tiny_backbone, max_steps=4)
    stopped = train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "o", tmp_path / "new", meta["vocab_size"],
                    progress=False, stop_after=1)
    assert stopped["stopped"]
    ckpt = tmp_path / "new"
    if name != "optimizer.pt":
        as_older_versions_wrote(tmp_path / "new", tmp_path / "old")
        ckpt = tmp_path / "old"
    marker = tmp_path / "planted-code-ran"
    plant_pickle(ckpt / name, marker)
    with pytest.raises(DataError, match=re.escape(str(ckpt / name))):
        train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "o", ckpt, meta["vocab_size"], progress=False)
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_corpus_rejects_another_vocabulary(setup, tiny_backbone, tmp_path):
    from genrec.errors import GenrecError

    root, _, index = setup
    tr, va, meta = load_corpus(root / "corpus")
    with pytest.raises(GenrecError, match="vocabulary"):
        train(cfg(tiny_backbone), str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "o", tmp_path / "c", meta["vocab_size"] + 1,
              progress=False)


def test_corpus_round_trip_and_counts(setup):
    root, ds, _ = setup
    tr, va, meta = load_corpus(root / "corpus")
    assert isinstance(tr, Corpus) and len(tr) == len(tr.task) == len(tr.offsets) - 1
    # seq (per prefix): one sample per training position after the first, per user
    expected_seq = sum(max(0, len(s) - 1) for s in ds.train_sequences())
    assert tr.counts()["seq"] == expected_seq and tr.counts()["neg"] == expected_seq
    # every seq target is an item code pair + eos: 3 target tokens
    seq = tr.task == tr.task_names.index("seq")
    assert (tr.n_targets[seq] == 3).all()
    # validation targets are the users' validation items, never the training targets of that user
    for u, item in zip(va.user, va.item, strict=True):
        assert item == ds.sequences[u][-2]


def test_two_processes_match_one_with_doubled_accumulation(setup, tiny_backbone, tmp_path, cli):
    """`accelerate launch` with 2 CPU processes (gloo DDP), accumulation 1, against one process with
    accumulation 2: the same samples per optimizer step, so the same losses and weights."""

    root, _, _ = setup
    settings = ["--set", "epochs=2", "--set", "batch_size=8", "--set", "lora_dropout=0.0", "--set", "lr=5e-3"]
    code, _, err = cli("train", "--corpus", root / "corpus", "--out", tmp_path / "one", *settings,
                       "--set", "grad_accum=2", "--no-progress")
    assert code == 0, err
    proc = launch_two("train", "--corpus", root / "corpus", "--out", tmp_path / "two", *settings, "--set", "grad_accum=1",
                      "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) >= 4
    np.testing.assert_allclose(two, one, rtol=1e-4)
    a, b = load_file(tmp_path / "one" / "trainable.safetensors"), load_file(tmp_path / "two" / "trainable.safetensors")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    world = json.loads((tmp_path / "two" / "manifest.json").read_text())["metrics"]["world_size"]
    assert world == 2


def test_evaluate_a_trained_model_through_the_shared_evaluator(setup, tiny_backbone, tmp_path, cli):
    """Train a few steps, then `genrec evaluate`; and the recommender's ranking of a user equals
    teacher-forced scoring of every item's codes after the user's prompt (beams >= items)."""
    from genrec.decode.recommender import GenerativeRecommender

    root, ds, index = setup
    # fp32: the sharded run must give the single process's metrics exactly (bf16 sums depend on the batch)
    code, _, err = cli("train", "--corpus", root / "corpus", "--out", tmp_path / "m", "--set", "max_steps=3", "--set", "dtype=fp32",
                       "--no-progress")
    assert code == 0, err
    code, out, err = cli("evaluate", "--model", tmp_path / "m", "--index", root / "index", "--data", root / "data",
                         "--beams", "5", "--json", "--out", tmp_path / "eval")
    assert code == 0, err
    result = json.loads(out)
    assert result["n_users"] == ds.n_users and 0 <= result["metrics"]["HR@10"] <= 1
    assert (tmp_path / "eval" / "metrics.json").is_file()

    # sharded over 2 processes by `accelerate launch`: the same metrics
    proc = launch_two("evaluate", "--model", tmp_path / "m", "--index", root / "index", "--data", root / "data",
                      "--beams", "5", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert sharded["n_users"] == result["n_users"]
    for key, value in result["metrics"].items():
        assert sharded["metrics"][key] == pytest.approx(value, abs=1e-9), key
    # sharded with --out: each rank keeps its decoded lists as it goes; the same metrics, and the lists go at the end
    proc = launch_two("evaluate", "--model", tmp_path / "m", "--index", root / "index", "--data", root / "data",
                      "--beams", "5", "--json", "--out", tmp_path / "eval2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    assert kept["test"]["metrics"] == pytest.approx(result["metrics"], abs=1e-9)
    assert not (tmp_path / ".eval2-partial").exists()

    # a rerun takes the lists a killed `--out` run kept whatever its --seed (which only draws a user
    # sample): kept lists that put every user's test item first must give HR@1 = 1
    from genrec.artifacts import fingerprint
    from genrec.config import DecodeSection, EvaluateSection
    from genrec.decode.recommender import _partial_key, partial_append, partial_open

    split = ds.eval_split("test")
    key = {"config": {"decode": DecodeSection(beams=5).model_dump(), "evaluate": EvaluateSection().model_dump(), "seed": 0},
           "inputs": {"model": fingerprint(tmp_path / "m"), "index": fingerprint(root / "index"),
                      "data": fingerprint(root / "data")}, "decoder": 2}
    folder = tmp_path / ".eval3-partial"
    partial_open(folder, _partial_key(key, "test", 20))
    users = [u for u in range(ds.n_users) if split.targets[u] >= 0]
    partial_append(folder, 0, [(u, [int(split.targets[u])]) for u in users], 1.0)
    code, out, err = cli("evaluate", "--model", tmp_path / "m", "--index", root / "index", "--data", root / "data",
                         "--beams", "5", "--json", "--seed", "7", "--out", tmp_path / "eval3")
    assert code == 0, err
    assert json.loads(out)["metrics"]["HR@1"] == 1.0

    rec = GenerativeRecommender.load(tmp_path / "m", root / "index", beams=ds.n_items, device="cpu")
    hist = [split.histories[u] for u in (0, 1)]
    ranked = rec.rank(hist, np.array([0, 1]), k=ds.n_items)
    for h, row in zip(hist, ranked, strict=True):
        prompt = rec.prompts([h])[0]
        with torch.no_grad():
            scores = []
            for toks in rec.fmt.items:
                ids = torch.tensor([prompt + toks])
                hs = rec.lm.hidden(ids).last_hidden_state[0]
                logp = torch.log_softmax(rec.lm.logits(hs), -1)
                scores.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(toks)))
        assert row.tolist() == np.argsort(-np.array(scores), kind="stable").tolist()


def test_rerank_scores_a_classic_shortlist_with_the_trained_llm(setup, tiny_backbone, tmp_path, cli):
    """`genrec rerank`: Pop shortlists, the trained LLM's scores of the shortlist are its
    teacher-forced log-probabilities, the classic row is Pop through the evaluator, and w = 1 is
    the shortlist ordered by the LLM's scores."""
    from genrec.baselines import Pop
    from genrec.decode.recommender import GenerativeRecommender, PrecomputedRanker
    from genrec.decode.rerank import WEIGHTS, Shortlists
    from genrec.evaluate import Evaluator

    root, ds, index = setup
    code, _, err = cli("train", "--corpus", root / "corpus", "--out", tmp_path / "m", "--set", "max_steps=3", "--no-progress")
    assert code == 0, err
    pop = Pop()
    pop.fit(ds)
    pop.counts = pop.counts + np.arange(ds.n_items) * 1e-3  # no ties: the evaluator ranks tied scores by expectation
    pop.save(tmp_path / "pop")
    args = ["--base", tmp_path / "pop", "--model", tmp_path / "m", "--index", root / "index", "--data", root / "data",
            "--candidates", "5", "--out", tmp_path / "rr", "--json"]
    code, out, err = cli("rerank", *args)
    assert code == 0, err
    res = json.loads(out)
    assert res["weight"] in WEIGHTS and len(res["valid"]["by_weight"]) == len(WEIGHTS)
    ev = Evaluator(ds, ks=(1, 5, 10, 20), progress=False)
    assert res["test"]["base"] == pytest.approx(ev.evaluate(pop, stage="test").metrics)

    short = Shortlists.load(tmp_path / "rr" / ".shortlists-test" / "chunk-00000.npz")
    rec = GenerativeRecommender.load(tmp_path / "m", root / "index", device="cpu")
    split = ds.eval_split("test")
    for row in range(3):
        prompt = rec.prompts([split.histories[short.users[row]]])[0]
        for j, item in enumerate(short.items[row, :5]):
            toks = rec.fmt.items[int(item)]
            with torch.no_grad():
                logp = torch.log_softmax(rec.lm.logits(rec.lm.hidden(torch.tensor([prompt + toks])).last_hidden_state[0]), -1)
            ref = sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(toks))
            assert short.llm[row, j] == pytest.approx(ref, abs=1e-3)
    # a fixed weight reuses the kept test shortlists; w = 0 is Pop's own evaluation exactly
    code, out, err = cli("rerank", *args, "--weight", "0")
    assert code == 0, err
    at_k = {k: v for k, v in res["test"]["base"].items() if k != "MRR"}  # MRR: a list of 20 knows no rank past 20
    assert {k: json.loads(out)["test"]["fused"][k] for k in at_k} == pytest.approx(at_k)
    # and w = 1 orders each shortlist by the LLM's scores
    code, out, err = cli("rerank", *args, "--weight", "1")
    assert code == 0, err
    ranked = [row[np.argsort(-llm, kind="stable")].tolist() + tail.tolist()
              for row, llm, tail in zip(short.items[:, :5], short.llm, short.items[:, 5:], strict=True)]
    by_hand = ev.evaluate(PrecomputedRanker(dict(zip(short.users.tolist(), ranked, strict=True))), stage="test",
                          users=short.users).metrics
    assert json.loads(out)["test"]["fused"] == pytest.approx(by_hand)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(setup, tiny_backbone):
    from genrec.llm.train import build_model

    root, _, index = setup
    tr, _, meta = load_corpus(root / "corpus")
    batch = collate(tr, np.arange(5), 0, torch.device("cpu"))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        lm, _ = build_model(cfg(tiny_backbone, gradient_checkpointing=ckpt), str(tiny_backbone), index.new_tokens,
                            torch.device("cpu"), meta["vocab_size"])
        lm.train()
        nll, _, _ = lm(**batch)
        nll.backward()
        grads.append((float(nll.detach()), {n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad}))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for n, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][n], g, rtol=1e-4, atol=1e-7)


def test_training_seconds_add_each_session_by_hand():
    log = [{"step": 1, "seconds": 5.0}, {"step": 2, "seconds": 9.0}, {"step": 2, "val_loss": 1.0},
           {"step": 3, "seconds": 4.0}, {"step": 4, "seconds": 7.5}, {"step": 5, "seconds": 1.0}]
    assert training_seconds(log) == (9.0 + 7.5 + 1.0, 3)
    assert sessions(log) == [{"first_step": 1, "last_step": 2, "seconds": 9.0}, {"first_step": 3, "last_step": 4, "seconds": 7.5},
                             {"first_step": 5, "last_step": 5, "seconds": 1.0}]
    assert training_seconds([]) == (0.0, 0)


def test_train_from_a_run_config_runs_every_stage_then_skips(tiny_backbone, tmp_path, cli):
    import yaml

    cfg = {
        "name": "t", "run_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"source": "synth", "synth": {"n_users": 60, "n_items": 40, "seed": 3}, "prepare": {"kcore": 2}},
        "baselines": [], "backbone": str(tiny_backbone),
        "cf": {"model": "lightgcn", "dim": 8, "train": {"epochs": 2}},
        "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 8, "epochs": 3, "progress": False}},
        "tasks": {"negatives_per_positive": 1},
        "train": {"max_steps": 2, "batch_size": 8, "save_every": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = cli("train", "--config", path, "--no-progress")
    assert code == 0, err
    for stage in ("data", "cf/lightgcn", "index", "tasks", "model"):
        assert (tmp_path / "run" / stage / "manifest.json").is_file(), stage
    manifest = json.loads((tmp_path / "run" / "model" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2
    assert manifest["wall_seconds"] >= manifest["metrics"]["train_seconds"] > 0  # the stage's time includes training
    code, _, err = cli("train", "--config", path, "--no-progress")
    assert code == 0 and "model" in err and "up to date, skipped" in err
    assert not list((tmp_path / "run").glob(".ckpt-*"))  # checkpoints are removed once the model is written


def targets_by_hand(lm, batch):
    """(row, position, target token, logits over the whole vocabulary from the tied embedding) of
    every target token of a collated batch, one at a time."""
    h = lm.hidden(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    weight = torch.cat([lm.embed.old, lm.embed.new])
    for b, t in zip(*np.nonzero(batch["target_mask"].numpy()), strict=True):
        if t > 0:
            yield int(b), int(t), int(batch["input_ids"][b, t]), h[b, t - 1] @ weight.T


def test_code_softmax_loss_by_hand(setup, tiny_backbone):
    """softmax=codes: a code target's NLL is over the code rows only, a text target's over the whole
    vocabulary (computed here from the hidden states and the tied embedding, one target at a time)."""
    from genrec.llm.train import build_model

    root, _, index = setup
    tr, _, meta = load_corpus(root / "corpus")
    rows = np.arange(len(tr))[:40]
    batch = collate(tr, rows, 0, torch.device("cpu"))
    torch.manual_seed(0)
    lm, _ = build_model(cfg(tiny_backbone, softmax="codes", mode="full"), str(tiny_backbone), index.new_tokens,
                        torch.device("cpu"), meta["vocab_size"])
    with torch.no_grad():
        lm.embed.new.normal_(0, 0.5)  # trained-looking code rows
        nll, count, correct = lm(**batch)
        h = lm.hidden(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        n_old = lm.n_old
        want, n, kinds, right = 0.0, 0, set(), 0
        for _, _, target, logits in targets_by_hand(lm, batch):
            if target >= n_old:
                logp, pick = torch.log_softmax(logits[n_old:], -1), target - n_old
                kinds.add("code")
            else:
                logp, pick = torch.log_softmax(logits, -1), target
                kinds.add("text")
            want -= float(logp[pick])
            right += int(int(logp.argmax()) == pick)
            n += 1
    assert kinds == {"code", "text"}
    assert int(count) == n and int(correct) == right
    assert float(nll) == pytest.approx(want, rel=1e-5)
    # decoding normalises the same way: nothing outside the code rows
    logits = lm.logits(h[0, :3])
    assert torch.isneginf(logits[:, :n_old]).all()
    torch.testing.assert_close(torch.log_softmax(logits, -1)[:, n_old:], torch.log_softmax(h[0, :3] @ lm.embed.new.T, -1))


def test_a_random_backbone_with_code_softmax_trains_and_ranks_like_exhaustive_scoring(setup, tmp_path, cli):
    """`--set backbone=random:64x1` fine-tunes a small Llama from scratch instead of the corpus's
    backbone (same tokenizer); the model folder records it, and its ranking with beams >= items
    equals scoring every item with the code-only softmax by hand."""
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.llm.backbone import random_spec

    root, ds, index = setup
    code, _, err = cli("train", "--corpus", root / "corpus", "--out", tmp_path / "m", "--set", "backbone=random:64x1",
                       "--set", "softmax=codes", "--set", "mode=full", "--set", "max_steps=3", "--no-progress")
    assert code == 0, err
    saved = json.loads((tmp_path / "m" / "train_config.json").read_text())
    assert saved["backbone"] == "random:64x1" and saved["softmax"] == "codes"
    rec = GenerativeRecommender.load(tmp_path / "m", root / "index", beams=ds.n_items, device="cpu")
    assert rec.lm.embed.new.shape[1] == 64 and len(rec.lm.body.layers) == 1
    split = ds.eval_split("test")
    h = split.histories[0]
    ranked = rec.rank([h], np.array([0]), k=ds.n_items)[0]
    prompt = rec.prompts([h])[0]
    scores = []
    with torch.no_grad():
        for toks in rec.fmt.items:
            hs = rec.lm.hidden(torch.tensor([prompt + toks])).last_hidden_state[0]
            logp = torch.log_softmax(hs @ rec.lm.embed.new.T, -1)
            scores.append(sum(float(logp[len(prompt) - 1 + j, t - rec.lm.n_old]) for j, t in enumerate(toks)))
    assert ranked.tolist() == np.argsort(-np.array(scores), kind="stable").tolist()
    for bad in ("random:100x2", "random:64", "random:ax2", "random:64x0"):
        with pytest.raises(Exception, match="random:<hidden>x<layers>"):
            random_spec(bad)


def test_packed_sequences_take_exactly_the_losses_of_their_unpacked_per_prefix_samples(setup, tiny_backbone, real_tokenizer):
    """all_positions is per-prefix packing: the summed NLL of a packed sequence equals the sum over
    its unpacked per-prefix samples (each computed alone), and the unpacked corpus has one sample
    per target item with the same target tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.llm.model import CodeLM

    _, ds, index = setup
    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    add_tokens(tok, None, index.new_tokens)
    packed, _, _ = build_corpus(ds, index, tok, TaskConfig(tasks=["seq"], layout="all_positions"), valid_users=2)
    packed = packed.subset(np.arange(6))
    unpacked = packed.unpacked()
    train = ds.train_sequences()
    assert len(unpacked) == sum(len(train[u]) - 1 for u in packed.user)  # one per target item
    assert int(unpacked.mask.sum()) == int(packed.mask.sum()) and (unpacked.n_targets == 2).all()
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    lm = CodeLM(model, len(index.new_tokens), "full").eval()
    with torch.no_grad():
        lm.embed.new.normal_(0, 0.3)
        whole = float(lm(**collate(packed, np.arange(len(packed)), 0, torch.device("cpu")))[0])
        parts = sum(float(lm(**collate(unpacked, np.array([i]), 0, torch.device("cpu")))[0]) for i in range(len(unpacked)))
    assert whole == pytest.approx(parts, rel=1e-5)


def _corpus(samples: list[tuple[list[int], list[int]]]) -> Corpus:
    ids = np.concatenate([np.array(x, dtype=np.int32) for x, _ in samples])
    mask = np.concatenate([np.array(m, dtype=np.uint8) for _, m in samples])
    offsets = np.concatenate([[0], np.cumsum([len(x) for x, _ in samples])]).astype(np.int64)
    n = len(samples)
    return Corpus(ids, mask, offsets, np.zeros(n, np.int16), np.zeros(n, np.int32), np.zeros(n, np.int32), ["t"])


def test_units_group_samples_that_share_their_prompt_by_hand():
    from genrec.llm.train import Units

    corpus = _corpus([
        ([5, 6, 7, 100, 101], [0, 0, 0, 1, 1]),  # prompt 5 6 7
        ([5, 6, 7, 102, 103], [0, 0, 0, 1, 1]),  # the same prompt
        ([5, 6, 8, 100, 101], [0, 0, 0, 1, 1]),  # another prompt
        ([5, 6, 7, 104], [0, 0, 0, 1]),          # the first prompt again
        ([9, 100, 3, 101], [0, 1, 0, 1]),        # two target runs: the rest after the first is its branch
        ([9, 100, 4, 102], [0, 1, 0, 1]),
    ])
    u = Units(corpus)
    assert [g.tolist() for g in u.groups] == [[0, 1, 3], [2], [4, 5]]
    assert u.prompt == [3, 0, 1]
    assert u.lengths.tolist() == [3 + 2 + 2 + 1, 5, 1 + 3 + 3]
    assert u.targets.tolist() == [5, 2, 4] and u.samples.tolist() == [3, 1, 2]
    # a group is cut so that a unit stays within the token budget (or its longest sample)
    cut = Units(corpus, max_tokens=6)
    assert [g.tolist() for g in cut.groups] == [[0], [1, 3], [2], [4], [5]]
    assert cut.prompt == [0, 3, 0, 0, 0] and cut.lengths.tolist() == [5, 6, 5, 4, 4]
    off = Units(corpus, share=False)
    assert [g.tolist() for g in off.groups] == [[i] for i in range(6)] and off.lengths.tolist() == corpus.lengths.tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompts_take_exactly_the_losses_of_their_samples(setup, tiny_backbone, real_tokenizer, attn):
    """A batch of shared prompts (one prompt, a branch per sample) gives the summed NLL, target
    count and correct count of its samples computed one at a time, each padded on its own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.llm.model import CodeLM
    from genrec.llm.train import Units, collate_units

    _, ds, index = setup
    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    add_tokens(tok, None, index.new_tokens)
    corpus, _, _ = build_corpus(ds, index, tok, TaskConfig(tasks=["seq", "neg"], layout="all_positions",
                                                           negatives_per_positive=3), valid_users=2)
    corpus = corpus.subset(np.arange(16))
    units = Units(corpus, max_tokens=10_000)
    assert (units.samples > 1).sum() >= 3  # the negatives of a user share one prompt
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32, attn_implementation=attn)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    lm = CodeLM(model, len(index.new_tokens), "full").eval()
    cpu = torch.device("cpu")
    with torch.no_grad():
        lm.embed.new.normal_(0, 0.3)
        batch = collate_units(corpus, units, np.arange(len(units)), 0, cpu)
        assert batch["attention_mask"].dim() == 4
        tree = [float(x) for x in lm(**batch)]
        one = [lm(**collate(corpus, np.array([i]), 0, cpu)) for i in range(len(corpus))]
    assert tree[0] == pytest.approx(sum(float(x[0]) for x in one), rel=1e-5)
    assert tree[1] == sum(int(x[1]) for x in one) == int(corpus.mask.sum() - corpus.mask[corpus.offsets[:-1]].sum())
    assert tree[2] == sum(int(x[2]) for x in one)


def test_sharing_prompts_trains_like_padding_every_sample(setup, tiny_backbone, real_tokenizer, tmp_path):
    """One optimizer step over the whole corpus in one micro-batch: the same loss and the same
    trained weights with and without shared prompts."""
    from transformers import AutoTokenizer

    from genrec.llm.train import Units

    root, ds, index = setup
    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    add_tokens(tok, None, index.new_tokens)
    corpus, _, info = build_corpus(ds, index, tok, TaskConfig(tasks=["seq", "neg"], layout="all_positions"), valid_users=2)
    corpus = corpus.subset(np.arange(40))
    assert len(Units(corpus)) < len(corpus)
    out = {}
    for share in (False, True):
        c = cfg(tiny_backbone, max_steps=1, batch_size=10_000, batch_tokens=10**7, share_prefixes=share, warmup_ratio=0.0)
        m = train(c, str(tiny_backbone), corpus, None, index.new_tokens, tmp_path / f"o{share}", tmp_path / f"c{share}",
                  info["vocab_size"], progress=False)
        out[share] = (losses(tmp_path / f"o{share}"), load_file(tmp_path / f"o{share}" / "trainable.safetensors"), m)
    assert out[True][2]["tokens_per_s"] > 0
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-5)
    for k, v in out[False][1].items():
        torch.testing.assert_close(out[True][1][k], v, rtol=1e-4, atol=1e-6)


def test_dtype_auto_takes_bf16_only_on_cpus_with_native_bf16(tmp_path, monkeypatch):
    from genrec.llm import backbone
    from genrec.llm.backbone import cpu_has_bf16, pick_dtype

    flags = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma {}\nbogomips\t: 5000\n"
    (tmp_path / "avx512").write_text(flags.format("avx512f avx512_bf16"))
    (tmp_path / "amx").write_text(flags.format("amx_tile amx_bf16"))
    (tmp_path / "avx2").write_text(flags.format("avx512f"))  # AVX-512 without its bf16 extension
    assert cpu_has_bf16(tmp_path / "avx512") and cpu_has_bf16(tmp_path / "amx")
    assert not cpu_has_bf16(tmp_path / "avx2")
    assert not cpu_has_bf16(tmp_path / "absent")  # another system: no /proc/cpuinfo
    cpu = torch.device("cpu")
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda: False)
    assert pick_dtype(cpu, "auto") == torch.float32
    assert pick_dtype(cpu, "bf16") == torch.bfloat16  # asked for explicitly: as asked
    monkeypatch.setattr(backbone, "cpu_has_bf16", lambda: True)
    assert pick_dtype(cpu, "auto") == torch.bfloat16
    assert pick_dtype(cpu, "fp32") == torch.float32


def test_model_selection_keeps_the_best_weights_and_stops_when_patience_runs_out(setup, tiny_backbone, tmp_path):
    """A scripted validation metric per selection: the weights written are those the model had at
    the best selection, training stops after `patience` selections without a better one, and a
    run killed in between resumes to the same outcome."""
    root, _, index = setup
    tr, va, meta = load_corpus(root / "corpus")
    c = cfg(tiny_backbone, epochs=8, select_users=5, patience=2)
    script = [0.10, 0.30, 0.20, 0.25, 0.90, 0.95]  # best at the 2nd; the 3rd and 4th are worse: stop there

    def selector(seen):
        def select(lm, tok):
            seen.append((lm.trainable_state(), sum(1 for _ in seen)))
            return {"NDCG@10": script[len(seen) - 1], "HR@10": 0.5}
        return select

    seen: list = []
    m = train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "a", tmp_path / "ckpt-a", meta["vocab_size"],
              progress=False, select=selector(seen))
    assert len(seen) == 4  # one selection per epoch; stopped after the 4th epoch
    per_epoch = m["steps_per_epoch"]
    assert m["steps"] == 4 * per_epoch and m["selected_step"] == 2 * per_epoch and m["valid_NDCG@10"] == pytest.approx(0.30)
    saved = load_file(tmp_path / "a" / "trainable.safetensors")
    best = seen[1][0]
    assert set(saved) == set(best) and all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], seen[3][0][k]) for k in saved)  # not the last weights
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [x["select_value"] for x in log if "select_value" in x] == pytest.approx(script[:4])
    # killed after the 3rd epoch's selection, resumed: the same selections, weights and stop
    seen_b: list = []
    stopped = train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "b", tmp_path / "ckpt-b", meta["vocab_size"],
                    progress=False, select=selector(seen_b), stop_after=3 * per_epoch)
    assert stopped["stopped"] and len(seen_b) == 3
    m_b = train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "b", tmp_path / "ckpt-b", meta["vocab_size"],
                progress=False, select=selector(seen_b))
    assert len(seen_b) == 4 and m_b["selected_step"] == m["selected_step"]
    saved_b = load_file(tmp_path / "b" / "trainable.safetensors")
    assert all(torch.allclose(saved_b[k], saved[k], atol=1e-6) for k in saved)
    # without a dataset to rank, selection is refused up front
    with pytest.raises(Exception, match="select_users"):
        train(c, str(tiny_backbone), tr, None, index.new_tokens, tmp_path / "c", tmp_path / "ckpt-c", meta["vocab_size"],
              progress=False)


def test_scaled_code_rows_take_the_text_rows_mean_and_spread():
    from genrec.llm.train import scale_new_rows

    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([1.0, -2.0, 0.0, 0.5]), torch.tensor([0.1, 2.0, 1.0, 0.5])
    w = torch.cat([mean + std * torch.randn(20000, 4, generator=g), torch.zeros(4000, 4)])
    old_mean, old_std = w[:20000].mean(0), w[:20000].std(0)
    a, b = w.clone(), w.clone()
    scale_new_rows(a, 4000, seed=1)
    scale_new_rows(b, 4000, seed=1)
    assert torch.equal(a, b) and torch.equal(a[:20000], w[:20000])  # seeded; the text rows untouched
    assert torch.allclose(a[20000:].mean(0), old_mean, atol=0.05 * float(old_std.max()))
    assert torch.allclose(a[20000:].std(0), old_std, rtol=0.05)


def test_untied_code_rows_start_equal_then_learn_apart(setup, tiny_backbone):
    """untie_codes: the code tokens' output rows start as a copy of their input rows (the same loss
    as the tied model), are a separate trainable weight, and the merged Hugging Face model
    computes the same logits."""
    from genrec.llm.model import merged_hf_model
    from genrec.llm.train import build_model

    root, _, index = setup
    tr, _, meta = load_corpus(root / "corpus")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    tied, _ = build_model(cfg(tiny_backbone), str(tiny_backbone), index.new_tokens, cpu, meta["vocab_size"])
    torch.manual_seed(0)
    untied, _ = build_model(cfg(tiny_backbone, untie_codes=True, code_lr=1e-2), str(tiny_backbone), index.new_tokens, cpu,
                            meta["vocab_size"])
    assert untied.out_new is not None and untied.out_new is not untied.embed.new
    batch = collate(tr, np.arange(6), 0, cpu)
    with torch.no_grad():
        assert float(untied(**batch)[0]) == pytest.approx(float(tied(**batch)[0]), rel=1e-6)
    from genrec.llm.train import param_groups

    groups = param_groups(untied, cfg(tiny_backbone, untie_codes=True, code_lr=1e-2))
    assert [g["base_lr"] for g in groups] == [5e-3, 1e-2]
    assert {id(p) for p in groups[1]["params"]} == {id(untied.embed.new), id(untied.out_new)}
    opt = torch.optim.SGD(untied.parameters(), lr=1.0)
    nll, _, _ = untied(**batch)
    nll.backward()
    opt.step()
    assert not torch.equal(untied.out_new, untied.embed.new)
    h = torch.randn(3, 32)
    with torch.no_grad():
        ours = untied.logits(h)
        hf = merged_hf_model(untied)
        theirs = hf.get_output_embeddings()(h).float()
    assert torch.allclose(ours, theirs, atol=1e-5) and not hf.config.tie_word_embeddings


def test_a_truncated_backbone_computes_the_first_layers_then_trains_and_decodes(setup, tiny_backbone, tmp_path):
    """train.layers = 1 on a 2-layer backbone: its hidden states are the full model's after its
    first layer (through the final norm), it trains, and a saved model decodes with its layers."""
    from transformers import AutoModelForCausalLM

    from genrec.decode.recommender import GenerativeRecommender
    from genrec.llm.train import build_model

    root, ds, index = setup
    tr, va, meta = load_corpus(root / "corpus")
    c = cfg(tiny_backbone, layers=1, max_steps=4)
    lm, _ = build_model(c, str(tiny_backbone), index.new_tokens, torch.device("cpu"), meta["vocab_size"])
    assert len(lm.body.layers) == 1 and lm.model.config.num_hidden_layers == 1
    full = AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32)
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    with torch.no_grad():
        ref = full(input_ids=ids, output_hidden_states=True).hidden_states[1]
        ref = full.model.norm(ref)
        ours = lm.hidden(ids, torch.ones_like(ids)).last_hidden_state
    assert torch.allclose(ours, ref, atol=1e-5)
    with pytest.raises(Exception, match="decoder layers"):
        build_model(cfg(tiny_backbone, layers=3), str(tiny_backbone), index.new_tokens, torch.device("cpu"), meta["vocab_size"])
    train(c, str(tiny_backbone), tr, va, index.new_tokens, tmp_path / "m", tmp_path / "ckpt", meta["vocab_size"], progress=False,
          layout="per_prefix")
    rec = GenerativeRecommender.load(tmp_path / "m", root / "index", device="cpu", beams=4)
    assert len(rec.lm.body.layers) == 1
    lists = rec.rank([ds.sequences[u][:3] for u in range(3)], np.arange(3), 4)
    assert lists.shape == (3, 4) and (lists >= 0).all() and all(len(set(x)) == 4 for x in lists.tolist())


def test_trie_softmax_loss_by_hand(setup, tiny_backbone):
    """softmax=trie: a code target's NLL is over the codes the trie allows after the item's codes
    before it (read off the index's trie one target at a time); text targets keep the whole vocabulary."""
    from genrec.index.trie import Trie
    from genrec.llm.corpus import load_item_tokens
    from genrec.llm.train import build_model

    root, _, index = setup
    tr, _, meta = load_corpus(root / "corpus")
    items = load_item_tokens(root / "corpus")
    trie = Trie(items)
    batch = collate(tr, np.arange(len(tr))[:40], 0, torch.device("cpu"))
    torch.manual_seed(0)
    lm, _ = build_model(cfg(tiny_backbone, softmax="trie", mode="full"), str(tiny_backbone), index.new_tokens,
                        torch.device("cpu"), meta["vocab_size"])
    lm.set_trie(items)
    n_old = lm.n_old
    first = {t[0] for t in items}
    with torch.no_grad():
        lm.embed.new.normal_(0, 0.5)
        nll, count, _ = lm(**batch)
        want, n, kinds = 0.0, 0, set()
        for b, t, target, logits in targets_by_hand(lm, batch):
            if target >= n_old:
                prefix = [] if target in first else [int(batch["input_ids"][b, t - 1])]
                allowed = trie.allowed(prefix)
                assert target in allowed
                logp = torch.log_softmax(logits[allowed], -1)[allowed.index(target)]
                kinds.add("level 1" if not prefix else "level 2")
            else:
                logp = torch.log_softmax(logits, -1)[target]
                kinds.add("text")
            want -= float(logp)
            n += 1
    assert kinds == {"level 1", "level 2", "text"} and int(count) == n
    assert float(nll) == pytest.approx(want, rel=1e-5)


def test_a_trie_softmax_model_ranks_and_scores_like_exhaustive_per_step_renormalised_scoring(setup, tmp_path, cli):
    """Trained with softmax=trie, beam search with beams >= items and score_items both equal scoring
    every item by hand: at each step the code's probability among its trie node's children."""
    from genrec.decode.recommender import GenerativeRecommender

    root, ds, index = setup
    code, _, err = cli("train", "--corpus", root / "corpus", "--out", tmp_path / "m", "--set", "backbone=random:64x1",
                       "--set", "softmax=trie", "--set", "mode=full", "--set", "max_steps=3", "--set", "dtype=fp32",
                       "--no-progress")
    assert code == 0, err
    rec = GenerativeRecommender.load(tmp_path / "m", root / "index", beams=ds.n_items, device="cpu")
    assert rec.decoder.renorm
    trie = index.trie(rec.fmt.items)
    h = ds.eval_split("test").histories[0]
    prompt = rec.prompts([h])[0]
    scores = []
    with torch.no_grad():
        for toks in rec.fmt.items:
            hs = rec.lm.hidden(torch.tensor([prompt + toks])).last_hidden_state[0]
            logits = hs @ rec.lm.embed.new.T
            s = 0.0
            for j, t in enumerate(toks):
                allowed = trie.allowed(toks[:j])
                lp = torch.log_softmax(logits[len(prompt) - 1 + j, [a - rec.lm.n_old for a in allowed]], -1)
                s += float(lp[allowed.index(t)])
            scores.append(s)
    ranked = rec.rank([h], np.array([0]), k=ds.n_items)[0]
    assert ranked.tolist() == np.argsort(-np.array(scores), kind="stable").tolist()
    got = rec.score_items([h], np.arange(ds.n_items)[None])[0]
    np.testing.assert_allclose(got, scores, rtol=1e-5, atol=1e-5)
    # the per-step distributions sum to one over each node's children: the item scores sum to one
    assert float(np.exp(scores).sum()) == pytest.approx(1.0, rel=1e-5)


def test_block_dropout_acts_in_training_only(setup, tiny_backbone):
    """train.dropout: in eval mode the model computes exactly what it does without dropout; in
    training the loss varies with the RNG and equals the dropout-free loss when the RNG drops nothing."""
    from genrec.llm.train import build_model

    root, _, index = setup
    tr, _, meta = load_corpus(root / "corpus")
    batch = collate(tr, np.arange(8), 0, torch.device("cpu"))
    torch.manual_seed(0)
    plain, _ = build_model(cfg(tiny_backbone, mode="full"), str(tiny_backbone), index.new_tokens, torch.device("cpu"),
                           meta["vocab_size"])
    torch.manual_seed(0)
    dropped, _ = build_model(cfg(tiny_backbone, mode="full", dropout=0.3), str(tiny_backbone), index.new_tokens,
                             torch.device("cpu"), meta["vocab_size"])
    ids, att = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        base = plain.eval().hidden(ids, att).last_hidden_state
        torch.testing.assert_close(dropped.eval().hidden(ids, att).last_hidden_state, base)
        assert float(dropped(**batch)[0]) == pytest.approx(float(plain(**batch)[0]), rel=1e-6)
        dropped.train()
        torch.manual_seed(1)
        a = dropped.hidden(ids, att).last_hidden_state
        torch.manual_seed(2)
        b = dropped.hidden(ids, att).last_hidden_state
        assert (a - b).abs().max() > 0.1 and (a - base).abs().max() > 0.1
        dropped.dropout = 0.0  # the same hooks with nothing to drop: the plain model
        torch.testing.assert_close(dropped.hidden(ids, att).last_hidden_state, base)


def test_text_code_rows_by_hand():
    """code_init='text' on four items with two-level codes: level-0 codes take their items' mean
    vector, level-1 codes the mean residual after level 0, each level standardised to the text
    rows' mean and spread (computed here by hand); an item without text changes nothing and a code
    no item uses keeps its 'scaled' row."""
    from genrec.llm.train import scale_new_rows, text_init_rows

    g = torch.Generator().manual_seed(0)
    old = torch.tensor([3.0, -1.0]) + torch.tensor([0.5, 2.0]) * torch.randn(10, 2, generator=g)
    w = torch.cat([old, torch.zeros(5, 2)])  # codes: ids 10..14; 14 is used by no item
    m, s = old.mean(0), old.std(0)
    tokens = [[10, 12], [10, 13], [11, 12], [11, 13], [10, 13]]
    vectors = np.array([[1, 1], [3, 1], [1, 5], [3, 9], [0, 0]], dtype=np.float32)  # the last item: no text (zeros)
    # level 0: code 10 -> (2, 1), code 11 -> (2, 7): dimension 0 has no spread (z = 0), dimension 1 z = -1, +1
    # residuals (-1, 0), (1, 0), (-1, -2), (1, 2): level 1: code 12 -> (-1, -1), code 13 -> (1, 1): z = -1, +1
    want = {10: (m[0], m[1] - s[1]), 11: (m[0], m[1] + s[1]), 12: (m[0] - s[0], m[1] - s[1]), 13: (m[0] + s[0], m[1] + s[1])}
    a = w.clone()
    text_init_rows(a, 5, tokens, vectors, seed=4)
    assert torch.equal(a[:10], old)
    for t, (x, y) in want.items():
        assert torch.allclose(a[t], torch.stack([x, y]), atol=1e-5), t
    b = w.clone()
    scale_new_rows(b, 5, seed=4)
    assert torch.equal(a[14], b[14])


def test_text_code_rows_need_the_text_stage(setup, tiny_backbone):
    from genrec.errors import GenrecError
    from genrec.llm.fingerprints import train_fingerprint

    root, _, _ = setup
    c = cfg(tiny_backbone).model_copy(update={"code_init": "text"})
    with pytest.raises(GenrecError, match="text stage"):
        train_fingerprint(root / "corpus", c)
    _, inputs, fp = train_fingerprint(root / "corpus", c, text=root / "corpus")
    assert inputs["text"] == root / "corpus" and fp != train_fingerprint(root / "corpus", cfg(tiny_backbone))[2]
