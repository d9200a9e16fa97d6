"""Distillation from a classic recommender: the teacher's soft targets per code step, and the loss
that mixes them in (genrec.llm.distill, CodeLM's distilled loss, the distill stage of a run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genrec.llm.backbone import add_tokens
from genrec.llm.config import LLMTrainConfig
from genrec.llm.corpus import build_corpus, load_item_tokens, save_corpus
from genrec.llm.distill import corpus_items, soft_targets
from genrec.llm.tasks import TaskConfig
from genrec.llm.train import collate
from tests.conftest import tiny_shop

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, real_tokenizer):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("distill")
    ds, index = tiny_shop(root, codes_per_level=6, mean_length=8)
    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    add_tokens(tok, None, index.new_tokens)
    corpora = {}
    for name, tasks in {
        "chat": TaskConfig(negatives_per_positive=1, max_history=4),  # with negatives and text tasks, which take no targets
        "codes": TaskConfig(tasks=["seq"], layout="all_positions", negatives_per_positive=0, prompt="codes", max_history=4),
    }.items():
        tr, va, info = build_corpus(ds, index, tok, tasks, valid_users=10)
        info.update(new_token_list=index.new_tokens)
        save_corpus(root / name, tr, va, info)
        corpora[name] = (tr, info)
    return root, ds, index, corpora


class Teacher:
    """Scores drawn from a generator seeded by the history (so a slow recomputation gets the same
    ones); every question asked is kept."""

    def __init__(self, n_items: int):
        self.n_items, self.asked = n_items, []

    def scores_of(self, history) -> np.ndarray:
        return np.random.default_rng([7, *map(int, history)]).normal(0, 2, self.n_items)

    def score(self, histories, users):
        self.asked += [tuple(int(i) for i in h) for h in histories]
        return np.stack([self.scores_of(h) for h in histories])


@pytest.mark.parametrize("form", ["chat", "codes"])
def test_the_teacher_is_asked_about_training_prefixes_only(setup, form):
    """Every sequential target of the corpus, and nothing else, is put to the teacher with the history
    the student sees: training items right before it (the last max_history per prefix; at least
    max_history / 2 in a later window of a long user). Each training item after a user's first is
    asked about exactly once; no question holds a user's validation or test item (the teacher's
    targets come from the training split only)."""
    root, ds, index, corpora = setup
    corpus, info = corpora[form]
    items = load_item_tokens(root / form)
    teacher = Teacher(ds.n_items)
    rows, probs = soft_targets(corpus, items, info["new_token_ids"][0], len(index.new_tokens), teacher, batch=7)
    found = corpus_items(corpus, items)
    assert sorted(teacher.asked) == sorted(tuple(h) for _, h, _, _ in found)
    by_user: dict[int, list[int]] = {}
    for r, hist, item, _ in found:
        u = int(corpus.user[r])
        train = [int(i) for i in ds.sequences[u][:-2]]
        p = train.index(item)
        assert hist == train[p - len(hist) : p] and 1 <= len(hist) <= 4
        assert len(hist) == min(p, 4) if form == "chat" else len(hist) >= min(p, 2)
        assert not {int(ds.sequences[u][-2]), int(ds.sequences[u][-1])} & set(hist)
        by_user.setdefault(u, []).append(p)
    assert sum(len(v) for v in by_user.values()) == len(found) > 0
    for u, s in enumerate(ds.sequences):
        assert sorted(by_user.get(u, [])) == list(range(1, len(s) - 2)), u
    # one soft target per code token of each sequential target, each a distribution
    assert (rows >= 0).sum() == len(probs) == 2 * len(found)
    np.testing.assert_allclose(probs.astype(np.float64).sum(1), 1.0, atol=2e-3)


@pytest.mark.parametrize("masked", [True, False])
def test_soft_targets_marginalise_the_teachers_distribution_per_code_step_by_hand(setup, masked):
    """q_j(c) = the teacher's probability of the items under (the target's codes before step j, c),
    over its probability of the items under the target's codes before step j; history items count
    for nothing when masked. Recomputed with loops over every item."""
    root, ds, index, corpora = setup
    corpus, info = corpora["codes"]
    items = load_item_tokens(root / "codes")
    n_old, n_new = info["new_token_ids"][0], len(index.new_tokens)
    teacher = Teacher(ds.n_items)
    rows, probs = soft_targets(corpus, items, n_old, n_new, teacher, temperature=0.5, mask_history=masked)
    checked = 0
    for _, hist, item, pos in corpus_items(corpus, items):
        z = teacher.scores_of(hist) / 0.5
        p = np.exp(z - z.max())
        if masked:
            p[hist] = 0.0
        for j, at in enumerate(pos):
            want = np.zeros(n_new)
            for i, toks in enumerate(items):
                if toks[:j] == items[item][:j]:
                    want[toks[j] - n_old] += p[i]
            np.testing.assert_allclose(probs[rows[at]], want / want.sum(), atol=1e-3)
            assert corpus.ids[at] == items[item][j]
            checked += 1
    assert checked == (rows >= 0).sum() > 0


def test_distilled_loss_by_hand(setup, tiny_backbone):
    """A code target with a soft row takes (1 - w) NLL + w * cross-entropy(q, trie softmax); targets
    without one keep the NLL. Computed one target at a time from the hidden states."""
    from genrec.index.trie import Trie
    from genrec.llm.train import build_model

    root, _, index, corpora = setup
    corpus, info = corpora["codes"]
    items = load_item_tokens(root / "codes")
    trie = Trie(items)
    first = {t[0] for t in items}
    rng = np.random.default_rng(3)
    table = rng.dirichlet(np.ones(len(index.new_tokens)), size=len(corpus.ids)).astype(np.float32)
    soft_rows = np.where(rng.random(len(corpus.ids)) < 0.6, np.arange(len(corpus.ids)), -1)
    n_old = info["new_token_ids"][0]
    for t in range(len(corpus.ids)):  # a target's soft row puts its mass on valid children only
        if corpus.mask[t] and soft_rows[t] >= 0:
            prefix = [] if corpus.ids[t] in first else [int(corpus.ids[t - 1])]
            keep = np.zeros(len(index.new_tokens), dtype=bool)
            keep[np.asarray(trie.allowed(prefix)) - n_old] = True
            table[t] = np.where(keep, table[t], 0) / table[t][keep].sum()
    config = LLMTrainConfig(softmax="trie", mode="full", dtype="fp32", distill={"weight": 0.3})
    torch.manual_seed(0)
    lm, _ = build_model(config, str(tiny_backbone), index.new_tokens, torch.device("cpu"), info["vocab_size"])
    lm.set_trie(items)
    lm.distill_weight = 0.3
    batch = collate(corpus, np.arange(12), 0, torch.device("cpu"), soft_rows)
    with torch.no_grad():
        lm.embed.new.normal_(0, 0.5)
        got, count, _ = lm(**batch, soft_table=torch.from_numpy(table))
        plain, _, _ = lm(**{k: v for k, v in batch.items() if k != "soft_rows"})
        h = lm.hidden(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        want = want_plain = 0.0
        mixed = 0
        for b, t in zip(*np.nonzero(batch["target_mask"].numpy()), strict=True):
            tok = int(batch["input_ids"][b, t])
            prefix = [] if tok in first else [int(batch["input_ids"][b, t - 1])]
            allowed = trie.allowed(prefix)
            logp = torch.log_softmax(h[b, t - 1] @ lm.embed.new[np.asarray(allowed) - n_old].T, -1)
            nll = -float(logp[allowed.index(tok)])
            want_plain += nll
            r = int(batch["soft_rows"][b, t])
            if r < 0:
                want += nll
                continue
            q = table[r][np.asarray(allowed) - n_old]
            want += 0.7 * nll + 0.3 * -float((torch.from_numpy(q) * logp).sum())
            mixed += 1
    assert 0 < mixed < int(count)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(plain) == pytest.approx(want_plain, rel=1e-5)


def test_a_run_with_distillation_fits_the_teacher_then_trains_on_its_targets(tiny_backbone, tmp_path, cli):
    """train.distill in a run config: the teacher baseline and the distill stage run before training,
    which then records the setting; a second run skips every stage; an unknown teacher is refused
    with its name."""
    import yaml

    cfg = {
        "name": "t", "run_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"source": "synth", "synth": {"n_users": 60, "n_items": 40, "seed": 3}, "prepare": {"kcore": 2}},
        "baselines": [], "backbone": str(tiny_backbone),
        "baseline_params": {"sasrec-ce": {"train": {"epochs": 1}}},
        "cf": {"model": "lightgcn", "dim": 8, "train": {"epochs": 2}},
        "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 8, "epochs": 3, "progress": False}},
        "tasks": {"tasks": ["seq"], "layout": "all_positions", "negatives_per_positive": 0, "prompt": "codes"},
        "train": {"max_steps": 2, "batch_size": 8, "save_every": 1, "softmax": "trie", "mode": "full", "dtype": "fp32",
                  "distill": {"teacher": "sasrec-ce", "weight": 0.5}},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = cli("train", "--config", path, "--no-progress")
    assert code == 0, err
    run = tmp_path / "run"
    distill = json.loads((run / "distill" / "manifest.json").read_text())
    assert distill["metrics"]["targets"] == distill["metrics"]["tokens_with_targets"] > 0
    assert json.loads((run / "baselines" / "sasrec-ce" / "manifest.json").read_text())["stage"] == "baseline:sasrec-ce"
    assert json.loads((run / "model" / "train_config.json").read_text())["distill"]["weight"] == 0.5
    code, _, err = cli("train", "--config", path, "--no-progress")
    assert code == 0 and err.count("up to date, skipped") >= 6, err
    cfg["train"]["distill"]["teacher"] = "nosuch"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = cli("train", "--config", path, "--no-progress")
    assert code != 0 and "nosuch" in err
