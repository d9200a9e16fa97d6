"""New items without retraining on an id-level index (every item <a_cluster><b_item>): an added item
gets its cluster from the codebooks and an own token past the trained vocabulary, which no model
step reads; the decoder scores it by the cold-item back-off (the mean of its trained siblings'
renormalised probabilities), the catalogue's scores stay as they were, and the server adds it (201),
caches it, and turns any failure of adding into a 4xx/503 JSON error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from genrec.serve.store import decode_row, open_store

pytestmark = pytest.mark.usefixtures("one_thread")
ADMIN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def idrun(idlevel_run):
    return idlevel_run


def catalog_with_new_items(run, store_path, rows):
    from genrec.serve.catalog import Catalog

    catalog = Catalog(run / "index", run / "data", open_store(store_path))
    for row in rows:
        catalog.add(row)
    return catalog


def by_hand(rec, history, items, n_catalogue):
    """Each item's trie-renormalised log-probability from the model's raw code logits, written out:
    the cluster token among the root's children, then the item token among its cluster's catalogue
    items, where an item added after training scores the mean renormalised probability of its trained
    siblings: log p(cluster) - log(number of catalogue items in the cluster)."""
    fmt, lm = rec.fmt, rec.lm
    prompt = rec.prompts([history])[0]
    cat = fmt.items[:n_catalogue]
    roots = sorted({t[0] for t in fmt.items})
    out = []
    with torch.no_grad():
        first = lm.code_logits(lm.hidden(torch.tensor([prompt])).last_hidden_state[0, -1]).double()
        for i in items:
            a = fmt.items[i][0]
            la = float(first[a - lm.n_old] - torch.logsumexp(first[[r - lm.n_old for r in roots]], 0))
            sib = [t[1] for t in cat if t[0] == a]
            if i >= n_catalogue:
                out.append(la - np.log(len(sib)))
                continue
            second = lm.code_logits(lm.hidden(torch.tensor([prompt + [a]])).last_hidden_state[0, -1]).double()
            lb = float(second[fmt.items[i][1] - lm.n_old] - torch.logsumexp(second[[s - lm.n_old for s in sib]], 0))
            out.append(la + lb)
    return np.array(out)


def test_an_added_item_scores_by_the_back_off_and_the_catalogue_keeps_its_scores(idrun, tmp_path):
    from genrec.data.dataset import Dataset
    from genrec.decode.recommender import GenerativeRecommender
    from genrec.errors import GenrecError
    from genrec.index.base import ItemIndex

    ds = Dataset.load(idrun / "data")
    idx = ItemIndex.load(idrun / "index")
    n = idx.n_items
    emb = np.load(idrun / "cf" / "lightgcn" / "item_embeddings.npy")
    ids = ds.items["item_id"].astype(str).tolist()
    catalog = catalog_with_new_items(idrun, tmp_path / "s.db", [
        {"item_id": "new-a", "title": "a", "embedding": emb[3].tolist()},
        {"item_id": "new-b", "title": "b", "neighbours": ids[7:9]},
    ])
    ext = catalog.extended_index()
    assert ext.new_tokens == idx.new_tokens and ext.sizes == idx.sizes  # the trained vocabulary, unchanged
    assert ext.codes[n:, 1].tolist() == [n, n + 1] and ext.codes[n, 0] == idx.codes[3, 0]  # item 3's vector: its cluster
    assert ext.item_strings[n] == f"<a_{idx.codes[3, 0]}><b_{n}>"
    assert set(ext.codes[n:, 0].tolist()) <= set(idx.codes[:, 0].tolist())  # clusters the catalogue has
    plain = GenerativeRecommender.load(idrun / "model", idrun / "index", device="cpu", beams=n, batch_users=4)
    rec = GenerativeRecommender.load(idrun / "model", ext, device="cpu", beams=n + 2, batch_users=4, cold_from=n)
    vocab = rec.lm.n_old + rec.lm.n_new
    assert [rec.fmt.items[i][1] for i in (n, n + 1)] == [vocab, vocab + 1]  # past every model row
    assert rec.fmt.items[:n] == plain.fmt.items
    fed = []  # every token id the model's embedding reads while decoding
    hook = rec.lm.body.embed_tokens.register_forward_pre_hook(lambda m, args: fed.append(int(args[0].max())))
    split = ds.eval_split("test")
    users = [u for u in range(ds.n_users) if len(split.histories[u])][:5]
    hist = [split.histories[u] for u in users]
    got = rec.rank_scored(hist, n + 2)
    hook.remove()
    assert fed and max(fed) < vocab
    before = plain.rank_scored(hist, n)
    for u, h in enumerate(hist):
        score = dict(zip(got.items[u].tolist(), got.scores[u].tolist(), strict=True))
        assert set(score) == set(range(n + 2))  # beams >= items: every item, the new ones included
        old = dict(zip(before.items[u].tolist(), before.scores[u].tolist(), strict=True))
        np.testing.assert_allclose([score[i] for i in range(n)], [old[i] for i in range(n)], atol=1e-5)
        np.testing.assert_allclose([score[i] for i in range(n + 2)], by_hand(rec, h, range(n + 2), n), atol=1e-4)
        # the same from the model's teacher-forced sibling scores: log of their mean probability
        for new in (n, n + 1):
            sib = [i for i in range(n) if idx.codes[i, 0] == ext.codes[new, 0]]
            s = plain.score_items([h], np.array([sib]))[0]
            np.testing.assert_allclose(score[new], np.log(np.mean(np.exp(s))), atol=1e-4)
    assert np.isneginf(rec.score_items(hist[:1], np.array([[n, n + 1]]))).all()  # the model alone has no row for them
    with pytest.raises(GenrecError, match="added after training"):
        rec.rank_scored([np.array([0, n])], 5)  # a history cannot hold it: the model cannot read its token
    alone = GenerativeRecommender.load(idrun / "model", ext, device="cpu", beams=n + 2, batch_users=4)
    assert not set(alone.rank_scored(hist, n + 2).items.ravel().tolist()) & {n, n + 1}  # without cold_from: -inf


def test_the_back_off_of_edges_without_model_rows_by_hand():
    """Trie [[10, 20], [10, 21], [10, 99], [11, 98], [11, 97]], items 2, 3, 4 added (97-99: tokens past
    the model's rows, so -inf). Under 10: renormalised over the trained 20 and 21 (.2, .3 -> .4, .6),
    99 the mean .5; without renormalisation 99 is the mean .25 and 20, 21 keep theirs. Under 11
    (no trained child) both get an even share, 1/2."""
    from genrec.decode.beam import TrieTensors, _backoff, _expand
    from genrec.index.trie import Trie

    trie = Trie([[10, 20], [10, 21], [10, 99], [11, 98], [11, 97]])
    tt = TrieTensors.of(trie, torch.device("cpu"), cold_items=[2, 3, 4])
    nodes = torch.tensor([trie.walk([10]), trie.walk([11])])
    beam, edge = _expand(tt, nodes, torch.ones(2, dtype=torch.long))
    value = {20: 0.2, 21: 0.3, 97: 0.0, 98: 0.0, 99: 0.0}
    lp = torch.tensor([np.log(value[int(t)]) if value[int(t)] else -np.inf for t in tt.token[edge]], dtype=torch.float64)
    tok = tt.token[edge].tolist()
    for renorm, want in ((True, {20: 0.4, 21: 0.6, 99: 0.5, 97: 0.5, 98: 0.5}),
                         (False, {20: 0.2, 21: 0.3, 99: 0.25, 97: 0.5, 98: 0.5})):
        out = _backoff(tt, beam, edge, lp.clone(), 2, renorm).exp().tolist()
        np.testing.assert_allclose(out, [want[t] for t in tok], atol=1e-12)


def test_the_api_adds_an_item_to_an_id_level_index_and_the_rebuilt_cache_ranks_it(idrun, tmp_path, cli):
    from fastapi.testclient import TestClient

    from genrec.decode.recommender import GenerativeRecommender
    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog

    store = tmp_path / "api.db"
    args = ["cache", "build", "--model", idrun / "model", "--index", idrun / "index", "--data", idrun / "data",
            "--store", store, "--chunk-users", "8", "--batch-users", "4", "--no-progress"]
    st = open_store(store)
    catalog = Catalog(idrun / "index", idrun / "data", st)
    n = catalog.n_catalogue
    assert cli(*args, "--k", "10", "--beams", "10")[0] == 0
    client = TestClient(create_app(st, catalog, admin_token="s3cret"))
    r = client.post("/items", json={"item_id": "new-1", "title": "new", "neighbours": catalog.ids[:3]}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["codes"][1] == n and body["tokens"] == f"<a_{body['codes'][0]}><b_{n}>"
    assert client.get("/items/new-1").json()["codes"] == body["codes"]
    r = client.post("/items", json={"item_id": "new-2", "title": "new", "neighbours": catalog.ids[3:5]}, headers=ADMIN)
    assert r.status_code == 201 and r.json()["codes"][1] == n + 1
    code, _, err = cli(*args, "--k", str(n + 2), "--beams", str(n + 2))
    assert code == 0, err
    assert st.active()["added_items"] == 2 and st.active()["n_items"] == n + 2
    rec = GenerativeRecommender.load(idrun / "model", catalog.extended_index(), device="cpu")
    ds = catalog.ds
    for u in range(3):
        items, cached = decode_row(st.lookup(ds.user_ids[u])[1])
        assert {"new-1", "new-2"} <= set(items)
        want = by_hand(rec, ds.sequences[u], [n, n + 1], n)
        np.testing.assert_allclose([cached[items.index("new-1")], cached[items.index("new-2")]], want, atol=1e-4)
    body = client.get(f"/users/{ds.user_ids[0]}/recommendations", params={"k": n + 2}).json()
    assert body["source"] == "cache" and "new-1" in [x["item_id"] for x in body["items"]]
    # a posted history holding an added item: the model cannot read its token, so the popular list, saying why
    client = TestClient(create_app(st, catalog, admin_token="s3cret", recommender=rec, decode_budget_ms=60_000))
    r = client.post("/recommendations", json={"history": [catalog.ids[0], "new-1"], "k": 5})
    assert r.status_code == 200 and r.json()["source"] == "popular", r.text
    assert "added after training" in r.json()["fallback_reason"]
    r = client.post("/recommendations", json={"history": [catalog.ids[0]], "k": 5})
    assert r.status_code == 200 and r.json()["source"] == "decode", r.text


def test_an_add_that_fails_for_an_index_reason_is_a_clear_4xx_or_503(idrun, tmp_path, cli):
    from fastapi.testclient import TestClient

    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog

    cid = tmp_path / "cid"
    assert cli("index", "build", "--method", "cid", "--data", idrun / "data", "--out", cid)[0] == 0
    broken = tmp_path / "broken"
    shutil.copytree(idrun / "index", broken)
    shutil.rmtree(broken / "indexer")
    for folder, status, words in ((cid, 409, "cid index cannot give new items codes"), (broken, 503, "fitted indexer")):
        st = open_store(tmp_path / f"{folder.name}.db")
        client = TestClient(create_app(st, Catalog(folder, idrun / "data", st), admin_token="s3cret"), raise_server_exceptions=False)
        r = client.post("/items", json={"item_id": "new-1", "title": "new"}, headers=ADMIN)
        assert r.status_code == status and words in r.json()["detail"], r.text
        assert client.get("/items/new-1").status_code == 404 and st.new_items() == []
    assert json.loads((idrun / "index" / "manifest.json").read_text())["config"]["id_level"]
