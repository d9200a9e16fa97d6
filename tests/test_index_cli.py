"""`genrec index build / stats / assign` end to end on a small synthetic dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.data.loaders import load_raw
from genrec.data.preprocess import PrepareConfig, preprocess
from genrec.data.synth import SynthConfig, write


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    write(SynthConfig(n_users=300, n_items=120, seed=1), root / "raw")
    ds = preprocess(load_raw(root / "raw"), PrepareConfig(kcore=2))
    ds.save(root / "data")
    rng = np.random.default_rng(0)
    np.save(root / "emb.npy", rng.normal(size=(ds.n_items, 8)).astype(np.float32))
    return root, ds


def test_build_stats_assign(cli, prepared, tiny_backbone, tmp_path):
    root, ds = prepared
    out = tmp_path / "align"
    args = ["index", "build", "--method", "alignment", "--data", root / "data", "--embeddings", root / "emb.npy",
            "--out", out, "--backbone", tiny_backbone, "--levels", "3", "--codebook-size", "16",
            "--set", "epochs=3", "--set", "progress=false"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "collisions" in stdout and "0.00% after" in stdout
    code, stdout, _ = cli(*args)
    assert code == 0 and "up to date" in stdout
    code, stdout, _ = cli("index", "stats", out, "--json")
    stats = json.loads(stdout)
    assert stats["collision_rate_after"] == 0 and stats["n_items"] == ds.n_items and len(stats["perplexity"]) == 3

    ids = ds.items["item_id"].tolist()
    new = tmp_path / "new.jsonl"
    new.write_text(
        json.dumps({"item_id": "n1", "title": "x", "embedding": np.load(root / "emb.npy")[0].tolist()}) + "\n"
        + json.dumps({"item_id": "n2", "title": "y", "neighbours": ids[:3]}) + "\n"
        + json.dumps({"item_id": "n3", "title": "Quiet <a_1> headphones <|im_end|>"}) + "\n"
    )
    code, _, err = cli("index", "assign", out, new, "--out", tmp_path / "codes.jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "codes.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["behaviour", "neighbours", "text"]
    catalogue = {tuple(r) for r in np.load(out / "codes.npy").tolist()}
    tuples = [tuple(r["codes"]) for r in rows]
    assert len(set(tuples)) == 3 and not set(tuples) & catalogue
    # deterministic
    code, _, _ = cli("index", "assign", out, new, "--out", tmp_path / "codes2.jsonl")
    assert (tmp_path / "codes.jsonl").read_text() == (tmp_path / "codes2.jsonl").read_text()


def test_text_layers_index_embeds_new_items_at_its_depth(cli, prepared, tiny_backbone, tmp_path):
    """`--text-layers 1`: the index's text vectors and a new item's come from the backbone's first
    layer (pooled), so a new item's codes are the codebooks' answer for that vector."""
    from genrec.artifacts import read_manifest
    from genrec.index.stage import EMBEDDINGS_FILE, load_indexer
    from genrec.llm.item_encoder import BackboneEncoder

    root, ds = prepared
    out = tmp_path / "align-l1"
    code, _, err = cli("index", "build", "--method", "alignment", "--data", root / "data", "--embeddings",
                       root / "emb.npy", "--out", out, "--backbone", tiny_backbone, "--levels", "2", "--codebook-size",
                       "8", "--text-layers", "1", "--set", "epochs=2", "--set", "progress=false")
    assert code == 0, err
    assert read_manifest(out)["config"]["text_layers"] == 1
    enc = BackboneEncoder(str(tiny_backbone), 1, 64, device="cpu", dtype="fp32")
    first = ds.items.iloc[0]
    text = f"{first['title']} {first['description']}".strip()
    np.testing.assert_allclose(np.load(tmp_path / ".align-l1-text-l1" / EMBEDDINGS_FILE)[0], enc([text])[0], rtol=1e-5,
                               atol=1e-6)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"item_id": "n1", "title": "Quiet mechanical keyboard", "description": "brown switches"})
                   + "\n")
    code, _, err = cli("index", "assign", out, new, "--out", tmp_path / "codes.jsonl")
    assert code == 0, err
    row = json.loads((tmp_path / "codes.jsonl").read_text())
    indexer, _ = load_indexer(out)
    taken = {tuple(r) for r in np.load(out / "codes.npy").tolist()}
    want = indexer.encode(llm=enc(["Quiet mechanical keyboard brown switches"]), taken=taken)
    assert row["source"] == "text" and row["codes"] == [int(c) for c in want[0]]


def test_id_level_index_builds_and_assigns_new_items_their_cluster_and_a_new_own_token(cli, prepared, tiny_backbone,
                                                                                       tmp_path):
    """An id-level index: every item is <a_cluster><b_item>. `genrec index assign` gives a new item the
    cluster code the codebooks give its behaviour vector and the next own code (the catalogue's size,
    then the next): with a catalogue item's own behaviour vector, that item's cluster."""
    root, ds = prepared
    out = tmp_path / "align-id"
    code, stdout, err = cli("index", "build", "--method", "alignment", "--data", root / "data", "--embeddings",
                            root / "emb.npy", "--out", out, "--backbone", tiny_backbone, "--levels", "1",
                            "--codebook-size", "8", "--id-level", "--set", "epochs=2", "--set", "progress=false")
    assert code == 0, err
    codes = np.load(out / "codes.npy")
    assert codes.shape == (ds.n_items, 2) and codes[:, 1].tolist() == list(range(ds.n_items))
    assert codes[:, 0].max() < 8
    emb = np.load(root / "emb.npy")
    new = tmp_path / "new.jsonl"
    rows = [{"item_id": f"n{k}", "title": "x", "embedding": emb[i].tolist()} for k, i in enumerate((5, 5, 17))]
    rows.append({"item_id": "n3", "title": "x", "neighbours": ds.items["item_id"].tolist()[:2]})
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cli("index", "assign", out, new, "--out", tmp_path / "codes.jsonl")
    assert code == 0, err
    got = [json.loads(line) for line in (tmp_path / "codes.jsonl").read_text().splitlines()]
    n = ds.n_items
    assert [g["codes"][1] for g in got] == [n, n + 1, n + 2, n + 3]  # a new own token each, past the catalogue's
    assert [g["codes"][0] for g in got[:3]] == [codes[5, 0], codes[5, 0], codes[17, 0]]  # the same vector: same cluster
    assert got[0]["item_string"] == f"<a_{codes[5, 0]}><b_{n}>" and 0 <= got[3]["codes"][0] < 8
    assert len({tuple(g["codes"]) for g in got} | {tuple(c) for c in codes.tolist()}) == n + 4
    assert [g["source"] for g in got] == ["behaviour"] * 3 + ["neighbours"]


def test_assign_on_an_index_that_cannot_encode_is_a_clear_error(cli, prepared, tmp_path):
    root, ds = prepared
    out = tmp_path / "cid"
    code, _, err = cli("index", "build", "--method", "cid", "--data", root / "data", "--out", out)
    assert code == 0, err
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"item_id": "n1", "title": "x"}) + "\n")
    code, _, err = cli("index", "assign", out, new, "--out", tmp_path / "codes.jsonl")
    assert code == 2 and "cid index cannot give new items codes" in err and not (tmp_path / "codes.jsonl").exists()


@pytest.mark.parametrize("method", ["cid", "tid", "rid", "iid"])
def test_other_methods_build(cli, prepared, tmp_path, method):
    root, ds = prepared
    code, stdout, err = cli("index", "build", "--method", method, "--data", root / "data", "--out", tmp_path / method)
    assert code == 0, err
    from genrec.index.base import ItemIndex

    idx = ItemIndex.load(tmp_path / method)
    assert idx.is_unique() and idx.n_items == ds.n_items


def test_bad_requests_are_clear(cli, prepared, tmp_path):
    root, _ = prepared
    code, _, err = cli("index", "build", "--method", "alignment", "--data", root / "data", "--out", tmp_path / "x")
    assert code == 2 and "needs behaviour embeddings" in err
    # RQ-KMeans on behaviour (SemID with input behaviour) needs them too; on text it does not
    code, _, err = cli("index", "build", "--method", "semid", "--data", root / "data", "--out", tmp_path / "x",
                       "--set", "input=behaviour")
    assert code == 2 and "needs behaviour embeddings" in err
    from genrec.index.stage import needs_behaviour

    assert needs_behaviour("alignment") and not needs_behaviour("semid") and not needs_behaviour("semid", {"input": "llm"})
    code, _, err = cli("index", "build", "--method", "nope", "--data", root / "data", "--out", tmp_path / "x")
    assert code == 2 and "unknown indexer" in err
    np.save(tmp_path / "bad.npy", np.zeros((3, 4)))
    code, _, err = cli("index", "build", "--method", "alignment", "--data", root / "data", "--embeddings",
                       tmp_path / "bad.npy", "--out", tmp_path / "x")
    assert code == 2 and "bad.npy" in err and "shape" in err
    assert not (tmp_path / "x").exists()
    code, _, err = cli("index", "stats", tmp_path)
    assert code == 2 and "expected an index folder" in err


def test_the_index_reads_the_text_stage(prepared, tiny_backbone, tmp_path):
    """The index stage takes the items' text embeddings from the llm's text stage folder: it refuses
    none, or one of another dataset, and names that folder's backbone in its config, so another
    backbone rebuilds the index and the same one leaves it up to date."""
    from genrec.artifacts import read_manifest
    from genrec.config import IndexSection
    from genrec.errors import DataError, GenrecError
    from genrec.index.stage import EMBEDDINGS_FILE
    from genrec.stages import stage_index, stage_text

    root, ds = prepared
    data, cfg = root / "data", {"levels": 2, "codebook_size": 16, "iters": 5}
    text = stage_text(data, tmp_path / "text", str(tiny_backbone))
    assert np.load(text.path / EMBEDDINGS_FILE).shape == (ds.n_items, 32)
    with pytest.raises(GenrecError, match="text embeddings"):
        stage_index(data, tmp_path / "index", IndexSection(method="semid", config=cfg))
    first = stage_index(data, tmp_path / "index", IndexSection(method="semid", config=cfg), text=text.path)
    assert first.manifest["config"]["backbone"] == str(tiny_backbone) and not first.skipped
    assert stage_index(data, tmp_path / "index", IndexSection(method="semid", config=cfg), text=text.path).skipped
    other = stage_text(data, tmp_path / "text-random", "random:32x1")
    assert not stage_index(data, tmp_path / "index", IndexSection(method="semid", config=cfg), text=other.path).skipped
    assert read_manifest(tmp_path / "index")["config"]["backbone"] == "random:32x1"

    # text vectors from deeper in the backbone: a text folder of their own, named in the index's config
    deep = stage_text(data, tmp_path / "text-l1", str(tiny_backbone), layers=1)
    assert deep.manifest["config"] == {"backbone": str(tiny_backbone), "layers": 1}
    assert not np.allclose(np.load(deep.path / EMBEDDINGS_FILE), np.load(text.path / EMBEDDINGS_FILE))
    with pytest.raises(GenrecError, match="text_layers"):  # the index must ask for the depth it is given
        stage_index(data, tmp_path / "index-l1", IndexSection(method="semid", config=cfg), text=deep.path)
    made = stage_index(data, tmp_path / "index-l1", IndexSection(method="semid", config=cfg, text_layers=1), text=deep.path)
    assert made.manifest["config"]["text_layers"] == 1 and "text_layers" not in first.manifest["config"]

    ds.save(tmp_path / "data2")  # the same items under another fingerprint: a folder that is no stage
    (tmp_path / "data2" / "extra").write_text("x")
    with pytest.raises(DataError, match="another dataset"):
        stage_index(tmp_path / "data2", tmp_path / "index2", IndexSection(method="semid", config=cfg), text=text.path)
