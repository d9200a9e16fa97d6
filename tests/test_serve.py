"""Serving: cache stores (SQLite and a real Redis server), `genrec cache build` (resumable after
kill -9, sharded under accelerate), the HTTP API (fallbacks, new items, errors), and a new item
reaching the users whose histories hold its neighbours after a rebuild, without retraining."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from genrec.serve.store import decode_row, encode_row, open_store
from tests.conftest import launch_two

pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url():
    """A real redis-server on a loopback port for this module (installed by `make setup`)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make setup installs the Debian package)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        st = open_store(tmp_path / "cache.db")
    else:
        url = request.getfixturevalue("redis_url")
        st = open_store(f"{url}?prefix=t{time.monotonic_ns()}")
    yield st
    st.close()


def test_store_versions_switch_atomically_and_keep_new_items(store):
    assert store.active() is None and store.lookup("u1") is None
    store.begin("v1", {"n_users": 2})
    store.write_chunk("v1", 0, [("u1", encode_row(["a", "b"], [-0.5, -1.25]))])
    assert store.done_chunks("v1") == {0}
    assert store.lookup("u1") is None  # written but not active yet
    store.write_chunk("v1", 1, [("u2", encode_row(["c"], [-2.0]))])
    store.activate("v1")
    version, payload = store.lookup("u1")
    assert version == "v1" and decode_row(payload) == (["a", "b"], [-0.5, -1.25])
    assert store.active()["n_users"] == 2 and store.active()["version"] == "v1"
    # a second build is invisible until it is switched in; then the old version is gone
    store.begin("v2", {"n_users": 1})
    store.write_chunk("v2", 0, [("u1", encode_row(["z"], [-0.1]))])
    assert store.lookup("u1")[0] == "v1" and store.lookup("u2") is not None
    store.activate("v2")
    assert store.lookup("u1") == ("v2", encode_row(["z"], [-0.1]))
    assert store.lookup("u2") is None and store.rows("v1") == {} and store.done_chunks("v1") == set()
    assert store.rows() == {"u1": encode_row(["z"], [-0.1])}
    # begin() on an existing version keeps its chunks (that is how a build resumes)
    store.begin("v2", {"n_users": 99})
    assert store.done_chunks("v2") == {0} and store.active()["n_users"] == 1
    # new items: in order, no duplicates
    assert store.add_item("n1", {"item_id": "n1", "codes": [1, 2]})
    assert store.add_item("n2", {"item_id": "n2", "codes": [3, 4]})
    assert not store.add_item("n1", {"item_id": "n1", "codes": [9, 9]})
    assert [r["item_id"] for r in store.new_items()] == ["n1", "n2"] and store.new_items()[0]["codes"] == [1, 2]


def test_open_store_rejects_unknown_schemes_and_non_databases(tmp_path):
    from genrec.errors import GenrecError

    with pytest.raises(GenrecError, match="expected a file path"):
        open_store("mysql://x")
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"hello, this is not sqlite" * 100)
    with pytest.raises(GenrecError, match="not a genrec cache store"):
        open_store(bad)
    assert bad.read_bytes() == b"hello, this is not sqlite" * 100  # untouched


# --- a trained tiny model on clustered synthetic data -------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_backbone):
    """data -> LightGCN -> alignment index (2 x 8) -> tasks -> a short fine-tune of the tiny Llama."""
    import yaml

    from genrec.cli import main

    root = tmp_path_factory.mktemp("serve")
    cfg = {
        "name": "serve", "run_dir": str(root / "run"), "seed": 0,
        "data": {"source": "synth", "synth": {"n_users": 80, "n_items": 40, "n_categories": 3, "seed": 5,
                                              "p_followup_same_category": 1.0, "max_taste_categories": 1,
                                              "p_explore": 0.0}, "prepare": {"kcore": 2}},
        "baselines": [], "backbone": str(tiny_backbone),
        "cf": {"model": "lightgcn", "dim": 8, "train": {"epochs": 30}},
        "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 8, "epochs": 30, "progress": False}},
        "tasks": {"negatives_per_positive": 1, "tasks": ["seq"]},
        "train": {"epochs": 8, "batch_size": 16, "lr": 1e-2, "save_every": 1000, "lora_dropout": 0.0, "dtype": "fp32"},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    return root / "run"


def build(run, store, *extra, cli=None):
    args = ["cache", "build", "--model", run / "model", "--index", run / "index", "--data", run / "data",
            "--store", store, "--k", "10", "--beams", "10", "--chunk-users", "4", "--batch-users", "4", "--no-progress", *extra]
    if cli is not None:
        return cli(*args)
    proc = subprocess.run([sys.executable, "-m", "genrec", *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stdout, proc.stderr


def test_cache_build_equals_the_decoder_and_reruns_are_up_to_date(run, tmp_path, cli):
    """Every user's cached list is the decoder's top-10 on the user's whole history, as item ids."""
    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender

    code, _, err = build(run, tmp_path / "c.db", cli=cli)
    assert code == 0, err
    st = open_store(tmp_path / "c.db")
    ds = Dataset.load(run / "data")
    ids = json.loads((run / "index" / "item_ids.json").read_text())
    rows = st.rows()
    assert sorted(rows) == sorted(ds.user_ids.tolist())
    # the shop never repeats an item: the cache leaves every user's history out, as the evaluator does
    rec = GenerativeRecommender.load(run / "model", run / "index", device="cpu", beams=10, batch_users=4, exclude_history=True)
    for u in (0, 7, ds.n_users - 1):  # decoded alone, not in the build's batches: same lists, scores within float noise
        res = rec.rank_scored([ds.sequences[u]], 10)
        items, scores = decode_row(rows[ds.user_ids[u]])
        assert items == [ids[i] for i in res.items[0] if i >= 0]
        assert not set(items) & {ids[i] for i in ds.sequences[u]}
        np.testing.assert_allclose(scores, res.scores[0][res.items[0] >= 0], rtol=1e-4, atol=1e-4)
    meta = st.active()
    assert meta["n_users"] == ds.n_users and meta["k"] == 10 and len(meta["model_version"]) == 12
    code, _, err = build(run, tmp_path / "c.db", cli=cli)
    assert code == 0 and "up to date" in err


def variant_cache_against_its_decoder(run, store, cli, args: list[str], setting: tuple[str, object], **decoder):
    """Build the plain cache, then the one with ``args``: it is another version that names ``setting``, and
    its first chunk of users (4, decoded together as the build batches them) holds the lists of a decoder
    loaded with ``decoder``. Returns the variant's active version."""
    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender

    assert build(run, store, cli=cli)[0] == 0
    plain = open_store(store).active()["version"]
    code, _, err = build(run, store, *args, cli=cli)
    assert code == 0, err
    st = open_store(store)
    assert st.active()["version"] != plain and st.active()[setting[0]] == setting[1]
    ds = Dataset.load(run / "data")
    ids = json.loads((run / "index" / "item_ids.json").read_text())
    rec = GenerativeRecommender.load(run / "model", run / "index", device="cpu", beams=10, batch_users=4,
                                     popularity=ds.item_popularity(), exclude_history=True, **decoder)
    rows = st.rows()
    res = rec.rank_scored([ds.sequences[u] for u in range(4)], 10)
    for u in range(4):
        assert decode_row(rows[ds.user_ids[u]])[0] == [ids[i] for i in res.items[u] if i >= 0]
    return st.active()["version"]


def test_a_popularity_adjusted_cache_equals_the_adjusted_decoder_and_is_another_version(run, tmp_path, cli):
    variant_cache_against_its_decoder(run, tmp_path / "c.db", cli, ["--pop-alpha", "1.0"], ("pop_alpha", 1.0),
                                      pop_alpha=1.0)


def test_an_int8_cache_equals_the_int8_decoder_and_is_another_version(run, tmp_path, cli):
    # int8 quantises activations per batch, so its lists depend on the batch: the helper decodes the build's first chunk
    version = variant_cache_against_its_decoder(run, tmp_path / "c.db", cli, ["--precision", "int8"],
                                                ("precision", "int8"), precision="int8")
    code, _, err = build(run, tmp_path / "c.db", "--precision", "fp16", cli=cli)
    assert code == 2 and "--precision 'fp16'" in err and open_store(tmp_path / "c.db").active()["version"] == version


def test_kill_9_during_cache_build_then_rerun_gives_the_uninterrupted_cache(run, tmp_path):
    code, _, err = build(run, tmp_path / "whole.db")
    assert code == 0, err
    args = ["cache", "build", "--model", run / "model", "--index", run / "index", "--data", run / "data",
            "--store", tmp_path / "killed.db", "--k", "10", "--beams", "10", "--chunk-users", "4", "--batch-users", "4",
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "genrec", *map(str, args)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n_chunks = open_store(tmp_path / "whole.db").active()["n_chunks"]
    done = 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(tmp_path / "killed.db", timeout=5) as con:
                done = con.execute("SELECT count(*) FROM chunks").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            done = 0
        if done >= 2:
            proc.kill()  # SIGKILL: no cleanup runs
            break
        time.sleep(0.01)
    proc.wait()
    assert 2 <= done < n_chunks, f"the kill must land mid-build ({done} of {n_chunks} chunks written)"
    assert open_store(tmp_path / "killed.db").active() is None  # nothing half-built is served
    code, _, err = build(run, tmp_path / "killed.db")
    assert code == 0, err
    assert "resuming" in err
    whole, killed = open_store(tmp_path / "whole.db"), open_store(tmp_path / "killed.db")
    assert killed.rows() == whole.rows()
    assert killed.active()["version"] == whole.active()["version"]


def test_cache_build_sharded_over_two_processes_equals_one(run, tmp_path, redis_url):
    """Under `accelerate launch` each rank decodes its chunks into the same (Redis) store."""
    code, _, err = build(run, tmp_path / "one.db")
    assert code == 0, err
    url = f"{redis_url}?prefix=shard{time.monotonic_ns()}"
    proc = launch_two("cache", "build", "--model", run / "model", "--index", run / "index", "--data", run / "data",
                      "--store", url, "--k", "10", "--beams", "10", "--chunk-users", "4", "--batch-users", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = open_store(tmp_path / "one.db").rows(), open_store(url).rows()
    assert len(two) == len(one)
    for u, payload in one.items():
        a, b = decode_row(payload), decode_row(two[u])
        assert a[0] == b[0], u
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)


# --- the HTTP API ----------------------------------------------------------------------------------------
@pytest.fixture
def api(run, tmp_path, cli):
    from fastapi.testclient import TestClient

    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog

    code, _, err = build(run, tmp_path / "api.db", cli=cli)
    assert code == 0, err
    st = open_store(tmp_path / "api.db")
    catalog = Catalog(run / "index", run / "data", st)
    client = TestClient(create_app(st, catalog, admin_token="s3cret", max_k=10))
    return client, st, catalog


ADMIN = {"Authorization": "Bearer s3cret"}


def test_recommendations_come_from_the_cache_with_fallbacks_marked(api):
    client, st, catalog = api
    user = catalog.ds.user_ids[3]
    r = client.get(f"/users/{user}/recommendations", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    items, scores = decode_row(st.lookup(user)[1])
    assert body["source"] == "cache" and body["fallback_reason"] is None
    assert [x["item_id"] for x in body["items"]] == items[:5] and [x["score"] for x in body["items"]] == scores[:5]
    assert body["cache_version"] == st.active()["version"] and body["model_version"] == st.active()["model_version"]
    # an unknown user gets the most popular items (by interaction count, computed here by hand)
    r = client.get("/users/nobody-at-all/recommendations", params={"k": 3})
    body = r.json()
    counts: dict[int, int] = {}
    for seq in catalog.ds.sequences:
        for i in seq:
            counts[int(i)] = counts.get(int(i), 0) + 1
    top = sorted(counts, key=lambda i: (-counts[i], i))[:3]
    assert r.status_code == 200 and body["source"] == "popular" and body["fallback_reason"] == "unknown user"
    assert [x["item_id"] for x in body["items"]] == [catalog.ids[i] for i in top]


@pytest.mark.parametrize("query, status", [({"k": 0}, 422), ({"k": 11}, 422), ({"k": "many"}, 422), ({"k": 10}, 200)])
def test_k_out_of_range_is_a_clear_422(api, query, status):
    client, _, catalog = api
    r = client.get(f"/users/{catalog.ds.user_ids[0]}/recommendations", params=query)
    assert r.status_code == status
    if status == 422:
        assert "k" in json.dumps(r.json()["detail"])


def test_items_and_admin_endpoints(api):
    client, st, catalog = api
    first = catalog.ids[0]
    r = client.get(f"/items/{first}")
    assert r.status_code == 200 and r.json()["codes"] == [int(c) for c in catalog.index.codes[0]]
    assert r.json()["source"] == "catalogue"
    assert client.get("/items/no-such-item").status_code == 404
    new = {"item_id": "brand-new", "title": "A new thing", "neighbours": [catalog.ids[1], catalog.ids[2]]}
    assert client.post("/items", json=new).status_code == 401
    assert client.post("/items", json=new, headers={"Authorization": "Bearer wrong"}).status_code == 403
    r = client.post("/items", json=new, headers=ADMIN)
    assert r.status_code == 201, r.text
    codes = r.json()["codes"]
    assert tuple(codes) not in {tuple(c) for c in catalog.index.codes.tolist()}  # unique against the catalogue
    assert client.get("/items/brand-new").json()["codes"] == codes
    assert st.new_items()[0]["codes"] == codes  # persisted in the store
    assert client.post("/items", json=new, headers=ADMIN).status_code == 409
    bad = client.post("/items", json={"item_id": "x", "neighbours": ["ghost"]}, headers=ADMIN)
    assert bad.status_code == 422 and "ghost" in bad.json()["detail"]
    assert client.post("/items", json={"item_id": "y"}, headers=ADMIN).status_code == 422  # nothing to encode from
    assert client.post("/items", json={"item_id": "z", "embedding": [0.1, 0.2]}, headers=ADMIN).status_code == 422
    r = client.post("/items", content=b'{"item_id": "q", ', headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in json.dumps(r.json())
    r = client.post("/items", content=b"x" * (65 * 1024), headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    assert client.get("/items/x").status_code == 404  # nothing was added by the refused requests
    assert len(st.new_items()) == 1


def test_healthz_and_metrics(api):
    client, st, catalog = api
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["cache_version"] == st.active()["version"] and h["items"] == len(catalog.ids)
    for _ in range(3):
        client.get(f"/users/{catalog.ds.user_ids[0]}/recommendations")
    client.get("/users/ghost/recommendations")
    client.get("/items/none")
    text = client.get("/metrics").text
    assert 'genrec_requests_total{endpoint="recommendations",status="200"} 4' in text
    assert 'genrec_requests_total{endpoint="items",status="404"} 1' in text
    assert 'genrec_recommendations_total{source="cache"} 3' in text
    assert 'genrec_recommendations_total{source="popular"} 1' in text
    assert 'genrec_request_seconds_count{endpoint="recommendations"} 4' in text


def test_cache_misses_and_posted_histories_decode_on_the_fly_to_the_cache_builds_lists(run, tmp_path, cli, live):
    """`serve --decode`: a user missing from the cache (built for half the users), and the same
    user's history posted to POST /recommendations, get the list a full cache build writes for them."""
    from genrec.serve.app import create_app
    from genrec.serve.cache import load_decoder
    from genrec.serve.catalog import Catalog

    assert build(run, tmp_path / "full.db", cli=cli)[0] == 0
    full = open_store(tmp_path / "full.db").rows()
    users = sorted(full)
    (tmp_path / "half.txt").write_text("\n".join(users[::2]) + "\n")
    code, _, err = build(run, tmp_path / "half.db", "--users", tmp_path / "half.txt", cli=cli)
    assert code == 0, err
    st = open_store(tmp_path / "half.db", timeout_ms=1000)
    catalog = Catalog(run / "index", run / "data", st)
    rec = load_decoder(run / "model", catalog, beams=st.active()["beams"], batch_users=1, device="cpu")
    server = live(create_app(st, catalog, recommender=rec, decode_budget_ms=120_000, max_k=10, store_timeout_ms=1000))
    for u in users[1:6:2]:
        items, scores = decode_row(full[u])
        status, body, _ = server.get(f"/users/{u}/recommendations?k=10")
        assert status == 200 and body["source"] == "decode" and body["fallback_reason"] is None
        assert [x["item_id"] for x in body["items"]] == items
        np.testing.assert_allclose([x["score"] for x in body["items"]], scores, rtol=1e-4, atol=1e-4)
        history = [catalog.ids[i] for i in catalog.history(u)]
        status, body, _ = server.post("/recommendations", {"history": history, "k": 10})
        assert status == 200 and body["source"] == "decode" and [x["item_id"] for x in body["items"]] == items
    assert server.get(f"/users/{users[0]}/recommendations?k=10")[1]["source"] == "cache"
    status, body, _ = server.post("/recommendations", {"history": [catalog.ids[0], "no-such-item"], "k": 10})
    assert status == 422 and "'no-such-item'" in body["detail"]


def test_a_new_item_joins_the_rebuilt_cache_ranked_exactly_as_the_model_scores_it(run, tmp_path, cli):
    """POST an item with co-interacted neighbours, rebuild the cache (no retraining): its codes come
    from the codebooks (sharing a neighbour's first code), and with beams >= items every user's
    cached list, new item included, equals exhaustive teacher-forced scoring of every item, where
    the new item's last code, never written by the model after its prefix, scores the mean
    probability of its trained siblings' last codes."""
    from fastapi.testclient import TestClient

    from genrec.decode.recommender import GenerativeRecommender
    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog

    store = tmp_path / "new.db"
    assert build(run, store, cli=cli)[0] == 0
    st = open_store(store)
    catalog = Catalog(run / "index", run / "data", st)
    client = TestClient(create_app(st, catalog, admin_token="s3cret"))
    ds = catalog.ds
    cat = ds.items["categories"].value_counts().index[0]
    pop = np.bincount(np.concatenate(ds.sequences), minlength=ds.n_items)
    members = [int(i) for i in np.argsort(-pop, kind="stable") if ds.items["categories"].iloc[i] == cat][:4]
    r = client.post("/items", json={"item_id": "new-1", "title": "new", "neighbours": [catalog.ids[i] for i in members]},
                    headers=ADMIN)
    assert r.status_code == 201, r.text
    codes = r.json()["codes"]
    assert codes[0] in {int(catalog.index.codes[i][0]) for i in members}
    before = st.active()["version"]
    n = ds.n_items + 1
    code, _, err = build(run, store, "--k", str(n), "--beams", str(n), cli=cli)
    assert code == 0, err
    assert st.active()["version"] != before and st.active()["added_items"] == 1 and st.active()["n_items"] == n
    rec = GenerativeRecommender.load(run / "model", catalog.extended_index(), device="cpu")
    assert rec.fmt.items[-1] == rec.fmt.tok.convert_tokens_to_ids([f"<a_{codes[0]}>", f"<b_{codes[1]}>"])
    siblings = [i for i in range(ds.n_items) if rec.fmt.items[i][0] == rec.fmt.items[-1][0]]
    assert siblings  # its first code is a trained prefix
    holders = [u for u in range(ds.n_users) if np.isin(ds.sequences[u], members).any()][:3]
    for u in holders:
        prompt = rec.prompts([ds.sequences[u]])[0]
        scores = []
        with torch.no_grad():
            for toks in rec.fmt.items:
                hs = rec.lm.hidden(torch.tensor([prompt + toks])).last_hidden_state[0]
                logp = torch.log_softmax(rec.lm.logits(hs), -1)
                scores.append([float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(toks)])
            new_first, new_last = scores[-1][0], np.log(np.mean([np.exp(scores[i][1]) for i in siblings]))
        total = [sum(s) for s in scores[:-1]] + [new_first + new_last]
        seen = set(ds.sequences[u].tolist())  # history items are left out of the cache (deduplicated data)
        order = [i for i in np.argsort(-np.array(total), kind="stable") if i not in seen]
        expected = [catalog.ids[i] for i in order]
        items, cached = decode_row(st.lookup(ds.user_ids[u])[1])
        assert items == expected and "new-1" in items
        np.testing.assert_allclose(cached, [total[i] for i in order], atol=1e-4)
    body = client.get(f"/users/{ds.user_ids[holders[0]]}/recommendations", params={"k": n}).json()
    assert body["cache_version"] == st.active()["version"] and "new-1" in [x["item_id"] for x in body["items"]]


def test_the_folders_the_server_reads_hold_no_pickle_and_old_names_planted_beside_them_go_unread(run, tmp_path):
    """The trained model and the index folder (with its fitted tokenizer) hold safetensors, JSON
    and .npy files only; pickles planted under the older names (trainable.pt, state.pt,
    tokenizer.pt) are never read: the server's model loads and a new item gets its codes, and
    nothing planted runs."""
    from fastapi.testclient import TestClient

    from genrec.decode.recommender import GenerativeRecommender
    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog
    from tests.conftest import plant_pickle

    for folder in (run / "model", run / "index"):
        kinds = {p.suffix for p in folder.rglob("*") if p.is_file()}
        assert kinds <= {".safetensors", ".json", ".jsonl", ".npy"}, (folder, kinds)
    assert (run / "index" / "indexer" / "tokenizer.safetensors").is_file()
    model, index = tmp_path / "model", tmp_path / "index"
    shutil.copytree(run / "model", model)
    shutil.copytree(run / "index", index)
    marker = tmp_path / "planted-code-ran"
    for planted in (model / "trainable.pt", model / "state.pt", index / "indexer" / "tokenizer.pt"):
        plant_pickle(planted, marker)
    st = open_store(tmp_path / "s.db")
    catalog = Catalog(index, run / "data", st)
    client = TestClient(create_app(st, catalog, admin_token="s3cret"))
    r = client.post("/items", json={"item_id": "new-1", "title": "new", "neighbours": catalog.ids[:2]}, headers=ADMIN)
    assert r.status_code == 201, r.text
    rec = GenerativeRecommender.load(model, catalog.extended_index(), device="cpu", beams=4)
    assert rec.rank([catalog.ds.sequences[0]], np.array([0]), k=3).shape == (1, 3)
    assert not marker.exists()


# --- fuzzing the API through its OpenAPI schema ------------------------------------------------------------
@pytest.fixture(scope="module")
def api_schema(run, tmp_path_factory):
    import schemathesis

    from genrec.cli import main
    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog

    store = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    assert main(["cache", "build", "--model", str(run / "model"), "--index", str(run / "index"), "--data",
                 str(run / "data"), "--store", str(store), "--k", "10", "--beams", "10", "--no-progress"]) == 0
    st = open_store(store)
    app = create_app(st, Catalog(run / "index", run / "data", st), admin_token="s3cret", max_k=10)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_request_gets_a_server_error(api_schema, mode):
    """Schemathesis generates requests from the OpenAPI schema (valid ones, and ones that break it)
    for every operation; POSTs carry the admin token half the time so item encoding is fuzzed too."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    ops = [r.ok() for r in api_schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in ops} >= {("GET", "/users/{user_id}/recommendations"), ("POST", "/items"),
                                                          ("GET", "/items/{item_id}"), ("GET", "/healthz")}
    seen: list[tuple[str, int]] = []
    for op in ops:
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        def check(case):
            if case.method == "POST" and len(seen) % 2 == 0:
                case.headers = {**(case.headers or {}), "Authorization": "Bearer s3cret"}
            response = case.call()
            seen.append((case.method.upper(), response.status_code))
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

        try:
            check()
        except Unsatisfiable:  # negative mode: an operation without parameters or body has nothing to break
            assert mode == "negative" and "{" not in op.path and op.method.upper() == "GET"
    assert len(seen) >= 4 * len(ops) and any(400 <= c < 500 for _, c in seen)
    assert any(m == "POST" and c not in (401, 403) for m, c in seen)  # the token let some through to the encoder


def test_genrec_run_goes_from_data_to_a_served_cache_and_then_skips_everything(tiny_backbone, tmp_path, cli):
    import yaml

    cfg = {
        "name": "e2e", "run_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"source": "synth", "synth": {"n_users": 50, "n_items": 30, "seed": 1}, "prepare": {"kcore": 2}},
        "baselines": ["pop"], "backbone": str(tiny_backbone),
        "cf": {"model": "lightgcn", "dim": 8, "train": {"epochs": 2}},
        "index": {"method": "alignment", "config": {"levels": 2, "codebook_size": 8, "epochs": 3, "progress": False}},
        "tasks": {"negatives_per_positive": 1}, "train": {"max_steps": 2, "batch_size": 8},
        "decode": {"beams": 5}, "cache": {"k": 5, "beams": 5},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = cli("run", path, "--no-progress")
    assert code == 0, err
    assert "genrec-llm" in out and "pop" in out and "Cache:" in out
    metrics = json.loads((tmp_path / "run" / "evaluate" / "metrics.json").read_text())
    from genrec.data.dataset import Dataset

    assert metrics["test"]["n_users"] == Dataset.load(tmp_path / "run" / "data").n_users
    st = open_store(tmp_path / "run" / "cache.db")
    assert len(st.rows()) == metrics["test"]["n_users"]
    code, out, err = cli("run", path, "--no-progress")
    assert code == 0 and "[evaluate] up to date" in err and "[train] up to date" in err and "[cache] up to date" in err
