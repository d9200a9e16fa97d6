"""The Python API: a trained tiny model saved by ``save_pretrained`` into one folder, loaded by
``from_pretrained``, recommends over the dataset's item ids exactly what ``genrec evaluate`` and
``GenerativeRecommender.load(model_dir, index_dir)`` rank; the README's snippet runs; the package
exports resolve without ``import genrec`` importing torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrec.cli import main
from genrec.errors import GenrecError
from genrec.llm.backbone import add_tokens
from genrec.llm.corpus import build_corpus, save_corpus
from genrec.llm.tasks import TaskConfig
from tests.conftest import tiny_shop

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_tokenizer, tiny_backbone):
    """A dataset, an index folder with its item ids (as `genrec index build` writes them) and a
    model folder trained two steps on the tiny backbone, under one root: data/, index/, model/."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("api")
    ds, index = tiny_shop(root)
    (root / "index" / "item_ids.json").write_text(json.dumps(ds.items["item_id"].astype(str).tolist()))
    tok = AutoTokenizer.from_pretrained(real_tokenizer)
    add_tokens(tok, None, index.new_tokens)
    tr, va, info = build_corpus(ds, index, tok, TaskConfig(negatives_per_positive=1), valid_users=10)
    info.update(new_token_list=index.new_tokens, backbone=str(tiny_backbone))
    save_corpus(root / "corpus", tr, va, info)
    code = main(["train", "--corpus", str(root / "corpus"), "--out", str(root / "model"), "--set", "max_steps=2",
                 "--set", "dtype=fp32", "--no-progress"])
    assert code == 0
    return root, ds


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    """A save_pretrained folder, written from a copy of the model folder that is then deleted
    (so the saved folder can only be self-contained)."""
    from genrec import GenerativeRecommender

    root, ds = trained
    scratch = tmp_path_factory.mktemp("scratch")
    shutil.copytree(root / "model", scratch / "model")
    shutil.copytree(root / "index", scratch / "index")
    rec = GenerativeRecommender.load(scratch / "model", scratch / "index", device="cpu", beams=5,
                                     exclude_history=not ds.has_repeats())
    folder = rec.save_pretrained(tmp_path_factory.mktemp("saved") / "rec")
    shutil.rmtree(scratch)
    return folder


def ids_of(ds, items) -> list[str]:
    return [str(ds.items["item_id"].iloc[int(i)]) for i in items]


def test_the_saved_folder_is_self_contained_and_holds_no_pickle(saved):
    files = {str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file()}
    assert {"train_config.json", "trainable.safetensors", "corpus_meta.json", "recommender.json", "index/index.json",
            "index/codes.npy", "index/item_ids.json"} <= files
    assert not [f for f in files if f.endswith((".pt", ".pkl", ".pickle", ".bin"))]
    config = json.loads((saved / "train_config.json").read_text())
    assert config["backbone"] and config["layout"] and config["prompt"]
    assert json.loads((saved / "recommender.json").read_text())["beams"] == 5


def test_from_pretrained_recommends_what_genrec_evaluate_and_load_rank(trained, saved, capsys):
    """Every test user's list from the saved folder, over item ids, equals `genrec evaluate`'s
    dumped top list (5 beams: 5 items) and load(model_dir, index_dir).rank_scored(...), the ids
    mapped to indices through the dataset, and its scores are those log-probabilities."""
    from genrec import GenerativeRecommender

    root, ds = trained
    code = main(["evaluate", "--model", str(root / "model"), "--index", str(root / "index"), "--data", str(root / "data"),
                 "--beams", "5", "--json", "--out", str(root / "eval")])
    capsys.readouterr()
    assert code == 0
    dumped = pd.read_parquet(root / "eval" / "test_users.parquet")
    split = ds.eval_split("test")
    users = dumped["user_idx"].to_numpy()
    id_histories = [ids_of(ds, split.histories[u]) for u in users]

    rec = GenerativeRecommender.from_pretrained(saved, device="cpu")
    assert rec.beams == 5 and rec.exclude_history == (not ds.has_repeats())
    lists = rec.recommend_batch(id_histories, k=5)
    pos = {str(i): k for k, i in enumerate(ds.items["item_id"].astype(str))}
    as_indices = [[pos[i] for i, _ in row] for row in lists]
    assert as_indices == [list(t) for t in dumped["topk"]]
    assert len(users) > 10 and all(len(row) == 5 for row in lists)  # lists to compare, not empty ones

    ref = GenerativeRecommender.load(root / "model", root / "index", device="cpu", beams=5,
                                     exclude_history=not ds.has_repeats())
    some = users[:6]
    scored = ref.rank_scored([split.histories[u] for u in some], 5)
    for row, items, scores in zip(lists[:6], scored.items, scored.scores, strict=True):
        assert [i for i, _ in row] == ids_of(ds, items[items >= 0])
        assert [s for _, s in row] == pytest.approx(scores[items >= 0].tolist(), abs=1e-5)
    assert rec.recommend(id_histories[0], k=5) == lists[0]
    assert [u for u, _ in ref.recommend(id_histories[0], k=5)] == [u for u, _ in lists[0]]  # load() reads item_ids.json


def test_recommend_gives_k_dataset_ids_best_first_and_leaves_out_the_history(trained, saved):
    from genrec import GenerativeRecommender

    root, ds = trained
    rec = GenerativeRecommender.from_pretrained(saved, device="cpu", beams=10, exclude_history=True)
    all_ids = set(ds.items["item_id"].astype(str))
    split = ds.eval_split("test")
    for u in (0, 1, 2):
        history = ids_of(ds, split.histories[u])
        got = rec.recommend(history, k=10)
        assert len(got) == 10
        assert {i for i, _ in got} <= all_ids and not {i for i, _ in got} & set(history)
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores)) and max(scores) <= 0
    # more than `beams` asked for: the beam widens to k
    wide = rec.recommend(ids_of(ds, split.histories[0]), k=15)
    assert len(wide) == 15 and len({i for i, _ in wide}) == 15


def test_an_unknown_item_id_raises_naming_it(trained, saved):
    from genrec import GenerativeRecommender

    _, ds = trained
    rec = GenerativeRecommender.from_pretrained(saved, device="cpu")
    known = str(ds.items["item_id"].iloc[0])
    with pytest.raises(GenrecError, match="no-such-item"):
        rec.recommend([known, "no-such-item"], k=5)
    with pytest.raises(GenrecError, match="no-such-item"):
        rec.recommend_batch([[known], ["no-such-item"]], k=5)


def test_from_pretrained_refuses_a_folder_it_did_not_write(trained):
    from genrec import GenerativeRecommender

    root, _ = trained
    with pytest.raises(GenrecError, match="save_pretrained"):
        GenerativeRecommender.from_pretrained(root / "model", device="cpu")


def test_the_readme_python_snippet_runs(trained, tmp_path, capsys):
    """The README's ```python block, its `runs/sci` folders pointed at the trained ones and its
    history at item ids of the synthetic dataset."""
    root, ds = trained
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    shutil.copytree(root / "model", tmp_path / "model")
    shutil.copytree(root / "index", tmp_path / "index")
    history = ids_of(ds, ds.eval_split("test").histories[0])
    code = blocks[0].replace("runs/sci", str(tmp_path))
    code, n = re.subn(r'recommend\(\[[^\]]*\]', f"recommend({history!r}", code)
    assert n == 1
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and (tmp_path / "recommender" / "index" / "item_ids.json").is_file()
    for line in lines:
        item, score = line.split()
        assert item in set(ds.items["item_id"].astype(str)) and item not in history and float(score) <= 0


def test_the_package_exports_resolve_and_import_genrec_stays_cheap():
    import genrec
    from genrec.config import load_config
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.evaluate import Evaluator
    from genrec.index.registry import INDEXERS
    from genrec.pipeline import run
    from genrec.registry import SPECS

    assert genrec.GenerativeRecommender is GenerativeRecommender and genrec.run is run
    assert genrec.load_config is load_config and genrec.Evaluator is Evaluator and genrec.INDEXERS is INDEXERS
    assert list(genrec.BASELINES) == list(SPECS)
    assert {"GenerativeRecommender", "run", "load_config", "Evaluator", "BASELINES", "INDEXERS"} <= set(dir(genrec))
    with pytest.raises(AttributeError):
        genrec.no_such_name  # noqa: B018
    probe = "import sys, genrec; print('torch' in sys.modules, genrec.__version__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out[0] == "False"
