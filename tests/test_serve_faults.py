"""Serving through faults: a real redis-server paused (SIGSTOP), killed and restarted; a SQLite
cache file locked, deleted and replaced while serving. Every request is answered within a bounded
time, by the cache, by popularity naming the store (fallback_reason), or by a JSON 503; never a 500;
and the server recovers by itself. Then on-the-fly decoding with a deliberately slow fake decoder:
cache hits are served while a decode is in flight, the decode budget and queue length, and
POST /recommendations. (The same paths with the trained tiny model: tests/test_serve.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from genrec.serve.store import encode_row, open_store
from tests.conftest import tiny_shop

TIMEOUT_MS = 50
RETRY_MS = 100
BOUND_S = 2.0  # a faulty store must not hold a request anywhere near the 5 s it used to


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A tiny shop (data/, index/ with item ids) and, for the first half of its users, a known cached list."""
    root = tmp_path_factory.mktemp("shop")
    ds, _ = tiny_shop(root)
    ids = ds.items["item_id"].astype(str).tolist()
    (root / "index" / "item_ids.json").write_text(json.dumps(ids))
    users = ds.user_ids.tolist()
    rows = {u: ([ids[(n + j) % len(ids)] for j in range(5)], [-1.0 - j for j in range(5)])
            for n, u in enumerate(users[: len(users) // 2])}
    return SimpleNamespace(root=root, ds=ds, ids=ids, users=users, rows=rows)


def fill(store, rows: dict, version: str = "v1") -> None:
    store.begin(version, {"model_version": f"m-{version}", "n_users": len(rows)})
    store.write_chunk(version, 0, [(u, encode_row(*row)) for u, row in rows.items()])
    store.activate(version)


def app_for(shop, store, **kw):
    from genrec.serve.app import create_app
    from genrec.serve.catalog import Catalog

    return create_app(store, Catalog(shop.root / "index", shop.root / "data", store), max_k=5,
                      store_timeout_ms=TIMEOUT_MS, store_retry_ms=RETRY_MS, **kw)


def popular(shop, k: int = 5) -> list[str]:
    """The most interacted-with items, counted here by hand (ties: the lower item index first)."""
    counts: dict[int, int] = {}
    for seq in shop.ds.sequences:
        for i in seq:
            counts[int(i)] = counts.get(int(i), 0) + 1
    return [shop.ids[i] for i in sorted(counts, key=lambda i: (-counts[i], i))[:k]]


def ask(server, user: str):
    status, body, seconds = server.get(f"/users/{user}/recommendations?k=5")
    return status, body, seconds


def wait_for_cache(server, user: str, version: str = "v1", limit_s: float = 10.0) -> float:
    """Seconds until ``user`` is served from cache ``version`` again (asserting no 5xx meanwhile)."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        status, body, _ = ask(server, user)
        assert status == 200, body
        if body["source"] == "cache" and body["cache_version"] == version:
            return time.perf_counter() - start
        time.sleep(0.02)
    raise AssertionError(f"not served from the cache {limit_s} s after the store came back: {body}")


def assert_store_fallback(shop, server, user: str, store_name: str) -> None:
    status, body, seconds = ask(server, user)
    assert status == 200 and seconds < BOUND_S, (status, seconds)
    assert body["source"] == "popular" and [x["item_id"] for x in body["items"]] == popular(shop)
    assert "cache store unavailable" in body["fallback_reason"] and store_name in body["fallback_reason"], body
    status, health, seconds = server.get("/healthz")
    assert status == 503 and health["status"] == "error" and store_name in health["detail"] and seconds < BOUND_S


def assert_cached(shop, server, user: str, version: str = "v1") -> None:
    status, body, _ = ask(server, user)
    assert status == 200 and body["source"] == "cache" and body["cache_version"] == version
    assert [x["item_id"] for x in body["items"]] == shop.rows[user][0]


# --- Redis --------------------------------------------------------------------------------------------
class RedisServer:
    """A real redis-server on a free port, its RDB file in ``folder`` (so a restart reloads the cache)."""

    def __init__(self, folder):
        from tests.test_serve import free_port

        self.exe = shutil.which("redis-server")
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self):
        import redis

        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                                      "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.025)
        raise RuntimeError("redis-server did not start")

    def save(self):
        import redis

        redis.Redis(port=self.port).save()

    def signal(self, sig):
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make setup installs the Debian package): the Redis fault test needs a real one")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def test_redis_paused_then_killed_then_restarted_falls_back_within_the_timeout_and_recovers(shop, redis_server, live):
    store = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    fill(store, shop.rows)
    redis_server.save()
    server = live(app_for(shop, store))
    user = next(iter(shop.rows))
    assert_cached(shop, server, user)
    assert server.get("/healthz")[0] == 200

    redis_server.signal(signal.SIGSTOP)  # hung: connections are accepted, nothing answers
    for _ in range(5):
        assert_store_fallback(shop, server, user, redis_server.url)
    status, body, seconds = server.get("/items/not-an-item")  # needs the store to look for added items
    assert status == 503 and redis_server.url in body["detail"] and seconds < BOUND_S

    redis_server.signal(signal.SIGKILL)  # down: connections refused
    for _ in range(5):
        assert_store_fallback(shop, server, user, redis_server.url)
    known_item = shop.ids[0]
    assert server.get(f"/items/{known_item}")[0] == 200  # what the server holds itself is still served

    redis_server.start()  # back, with the saved cache
    wait_for_cache(server, user)
    assert_cached(shop, server, user)
    assert server.get("/healthz")[0] == 200


def test_redis_store_errors_name_the_store_and_its_timeout_bounds_a_hung_read(redis_server):
    """The store alone: a hung server is a StoreError after about the timeout; a dead one at once."""
    from genrec.serve.store import StoreError

    store = open_store(redis_server.url, timeout_ms=TIMEOUT_MS)
    fill(store, {"u": (["a"], [-1.0])})
    redis_server.signal(signal.SIGSTOP)
    start = time.perf_counter()
    with pytest.raises(StoreError, match=re.escape(redis_server.url)):
        store.lookup("u")
    assert time.perf_counter() - start < BOUND_S
    redis_server.signal(signal.SIGCONT)
    assert store.lookup("u") == ("v1", encode_row(["a"], [-1.0]))  # reconnected by itself


# --- SQLite -------------------------------------------------------------------------------------------
def sqlite_copy(src, dst) -> None:
    """A consistent copy of a live SQLite file (the backup API), as an operator would make one."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    b.close()


@pytest.fixture
def sqlite_served(shop, tmp_path, live):
    path = tmp_path / "cache.db"
    builder = open_store(path)
    fill(builder, shop.rows)
    builder.close()  # the build is over (a WAL held open by another process would outlive a replaced file)
    store = open_store(path, timeout_ms=TIMEOUT_MS)
    return path, store, live(app_for(shop, store))


def test_sqlite_locked_by_another_process_falls_back_within_the_timeout_and_recovers(shop, sqlite_served):
    path, store, server = sqlite_served
    user = next(iter(shop.rows))
    assert_cached(shop, server, user)
    # another process holds the WAL index's locks (as a process stuck mid-recovery would): readers cannot start
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path) + '-shm'!r}, os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 120)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for _ in range(5):
            assert_store_fallback(shop, server, user, str(path))
    finally:
        holder.kill()
        holder.wait()
    wait_for_cache(server, user, limit_s=30)  # a reader stuck on the lock finishes when it is released


def test_sqlite_file_deleted_then_restored_falls_back_then_recovers(shop, sqlite_served, tmp_path):
    path, store, server = sqlite_served
    user = next(iter(shop.rows))
    assert_cached(shop, server, user)
    sqlite_copy(path, tmp_path / "backup.db")
    path.unlink()
    time.sleep(RETRY_MS / 1000)
    for _ in range(3):
        assert_store_fallback(shop, server, user, str(path))
    status, body, _ = ask(server, user)
    assert "missing" in body["fallback_reason"]
    assert not path.exists()  # the server never recreates an empty cache in its place
    shutil.copy(tmp_path / "backup.db", path)
    wait_for_cache(server, user)
    assert_cached(shop, server, user)


def test_sqlite_file_replaced_while_serving_serves_the_new_file_and_a_broken_one_falls_back(shop, sqlite_served, tmp_path):
    path, store, server = sqlite_served
    users = list(shop.rows)
    assert_cached(shop, server, users[0])
    # a new cache built elsewhere and moved over the served file (its rows reversed: told apart from v1)
    new_rows = {u: (items[::-1], scores) for u, (items, scores) in shop.rows.items()}
    other = tmp_path / "other.db"
    st = open_store(other)
    fill(st, new_rows, version="v2")
    st.close()
    os.replace(other, path)
    wait_for_cache(server, users[0], version="v2")
    for u in users[:3]:
        status, body, _ = ask(server, u)
        assert body["cache_version"] == "v2" and [x["item_id"] for x in body["items"]] == new_rows[u][0]
    # replaced by something that is not a cache: fallback naming the store, then the good file back
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all " * 200)
    sqlite_copy(path, tmp_path / "good.db")
    os.replace(junk, path)
    time.sleep(RETRY_MS / 1000)
    assert_store_fallback(shop, server, users[0], str(path))
    os.replace(tmp_path / "good.db", path)
    wait_for_cache(server, users[0], version="v2")


# --- on-the-fly decoding, with a deliberately slow fake decoder --------------------------------------------
class SlowDecoder:
    """Stands in for GenerativeRecommender.rank_scored: records each history, then waits for
    ``release`` before answering a fixed list (item indices 0..beams-1 in reverse) per history."""

    beams = 4

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()
        self.histories: list[list[int]] = []

    def rank_scored(self, histories, k):
        self.histories += [list(map(int, h)) for h in histories]
        self.started.set()
        assert self.release.wait(60)
        items = np.array([list(range(k))[::-1]] * len(histories))
        return SimpleNamespace(items=items, scores=-np.arange(1.0, k + 1)[None].repeat(len(histories), 0))


def in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def test_a_cache_hit_is_served_while_a_slow_decode_is_in_flight(shop, tmp_path, live):
    store = open_store(tmp_path / "c.db", timeout_ms=TIMEOUT_MS)
    fill(store, shop.rows)
    dec = SlowDecoder()
    server = live(app_for(shop, store, recommender=dec, decode_budget_ms=60_000))
    miss = shop.users[-1]  # in the dataset, not in the cache
    t, out = in_thread(lambda: ask(server, miss))
    assert dec.started.wait(30)
    hit = next(iter(shop.rows))
    for _ in range(3):  # served while the decoder is still busy with the miss
        assert_cached(shop, server, hit)
    assert t.is_alive() and not dec.release.is_set()
    dec.release.set()
    t.join(30)
    status, body, _ = out["r"]
    assert status == 200 and body["source"] == "decode" and body["fallback_reason"] is None
    assert [x["item_id"] for x in body["items"]] == [shop.ids[i] for i in (3, 2, 1, 0)]
    assert dec.histories == [shop.ds.sequences[shop.users.index(miss)].tolist()]  # the user's whole history


def test_decodes_beyond_the_budget_or_the_queue_fall_back_to_popularity_and_say_so(shop, tmp_path, live):
    store = open_store(tmp_path / "c.db", timeout_ms=TIMEOUT_MS)
    fill(store, shop.rows)
    dec = SlowDecoder()
    server = live(app_for(shop, store, recommender=dec, decode_budget_ms=100, decode_queue=1))
    first, second = shop.users[-1], shop.users[-2]
    status, body, _ = ask(server, first)  # over budget: popularity now, the decode goes on
    assert status == 200 and body["source"] == "popular" and [x["item_id"] for x in body["items"]] == popular(shop)
    assert "user not in the cache" in body["fallback_reason"] and "100 ms budget" in body["fallback_reason"]
    status, body, _ = ask(server, second)  # the queue (1) is full: no wait at all for the budget
    assert body["source"] == "popular" and "decode queue full" in body["fallback_reason"]
    status, body, _ = server.post("/recommendations", {"history": shop.ids[:2], "k": 5})
    assert body["source"] == "popular" and "decode queue full" in body["fallback_reason"]
    assert dec.histories == [shop.ds.sequences[shop.users.index(first)].tolist()]  # nothing else was queued
    dec.release.set()
    for _ in range(200):
        if server.get("/healthz")[1]["decodes_pending"] == 0:
            break
        time.sleep(0.02)
    status, body, _ = ask(server, first)  # the decode that outlived its request is kept
    assert body["source"] == "decode" and [x["item_id"] for x in body["items"]] == [shop.ids[i] for i in (3, 2, 1, 0)]
    assert len(dec.histories) == 1


def test_post_recommendations_decodes_the_posted_history_and_names_unknown_items(shop, tmp_path, live):
    store = open_store(tmp_path / "c.db", timeout_ms=TIMEOUT_MS)
    dec = SlowDecoder()
    dec.release.set()
    server = live(app_for(shop, store, recommender=dec, decode_budget_ms=10_000))
    history = [shop.ids[7], shop.ids[3], shop.ids[12]]
    status, body, _ = server.post("/recommendations", {"history": history, "k": 3, "user_id": "session-1"})
    assert status == 200 and body["source"] == "decode" and body["user_id"] == "session-1"
    assert dec.histories == [[7, 3, 12]]  # the posted ids as the decoder's item positions, in order
    assert [x["item_id"] for x in body["items"]] == [shop.ids[i] for i in (3, 2, 1)]
    status, body, _ = server.post("/recommendations", {"history": [shop.ids[0], "ghost-1", "ghost-2"], "k": 5})
    assert status == 422 and "'ghost-1'" in body["detail"] and "'ghost-2'" in body["detail"]
    assert shop.ids[0] not in body["detail"]
    for bad in ({"history": []}, {"history": [shop.ids[0]], "k": 6}, {"history": [shop.ids[0]], "extra": 1}):
        assert server.post("/recommendations", bad)[0] == 422
    assert len(dec.histories) == 1  # refused requests never reached the decoder
    # without a decoder: popularity, saying why
    plain = live(app_for(shop, open_store(tmp_path / "d.db", timeout_ms=TIMEOUT_MS)))
    status, body, _ = plain.post("/recommendations", {"history": history, "k": 5})
    assert status == 200 and body["source"] == "popular" and "--decode" in body["fallback_reason"]
