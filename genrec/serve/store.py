"""Stores of precomputed top-K lists: SQLite (embedded default, WAL) and Redis, one interface.

A store holds cache *versions*. A build writes a version chunk by chunk, each chunk (its rows
and its done marker) in one transaction, so a killed build resumes at the first missing chunk
and never leaves half a chunk. ``activate(version)`` switches readers to a complete version in
one atomic step and drops the older ones; readers look up the active version and the user's row
in one statement (SQLite) or one server-side script (Redis), so a request sees either the old
cache or the new one, never a mix.

The store also keeps the items added while serving (``POST /items``): the next build reads them,
so a new item reaches the cache without retraining.

URLs: a file path or ``sqlite:///path/to/cache.db``; ``redis://host:port/db[?prefix=genrec]``.

Faults: with ``timeout_ms`` (what `genrec serve` passes) a store waits at most that long for Redis
(socket timeouts, no retries) or for a locked SQLite file (busy timeout), and every failure to
reach the store (down, hung, locked, missing, not a cache) is a :class:`StoreError` naming the
store. Redis reconnects on the next call once the server is back. A SQLite store notices when its
file is deleted (StoreError until it is back) or replaced (it reopens the new file), and never
creates a file again once it has opened one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from urllib.parse import parse_qs, quote, urlparse

from genrec.errors import GenrecError


class StoreError(GenrecError):
    """The store cannot answer now (down, hung, locked, missing or not a cache store)."""


def encode_row(items: list[str], scores: list[float]) -> str:
    return json.dumps({"items": items, "scores": [round(float(s), 6) for s in scores]}, separators=(",", ":"))


def decode_row(payload: str | bytes) -> tuple[list[str], list[float]]:
    row = json.loads(payload)
    return row["items"], row["scores"]


class CacheStore:
    """The interface every store implements (see the module docstring)."""

    url: str

    # building
    def begin(self, version: str, meta: dict) -> None:
        """Create ``version`` (its meta) unless it exists; an existing one keeps its done chunks."""
        raise NotImplementedError

    def done_chunks(self, version: str) -> set[int]:
        raise NotImplementedError

    def write_chunk(self, version: str, chunk: int, rows: list[tuple[str, str]]) -> None:
        """Rows (user id, encoded row) of one chunk and its done marker, atomically."""
        raise NotImplementedError

    def activate(self, version: str) -> None:
        raise NotImplementedError

    # reading
    def active(self) -> dict | None:
        """Meta of the active version (with its ``version``), or None before the first build."""
        raise NotImplementedError

    def lookup(self, user: str) -> tuple[str, str] | None:
        """(active version, its encoded row for ``user``), read together; None when absent."""
        raise NotImplementedError

    def rows(self, version: str | None = None) -> dict[str, str]:
        """Every row of a version (default: the active one); for checks and tests."""
        raise NotImplementedError

    # items added while serving
    def add_item(self, item_id: str, record: dict) -> bool:
        """Persist a new item; False (and nothing written) when the id is already there."""
        raise NotImplementedError

    def new_items(self) -> list[dict]:
        """Added items in the order they were added."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SQLiteStore(CacheStore):
    """One SQLite file in WAL mode: readers never block the writer. A connection per thread."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS versions (version TEXT PRIMARY KEY, meta TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS chunks (version TEXT NOT NULL, chunk INTEGER NOT NULL, PRIMARY KEY (version, chunk));
    CREATE TABLE IF NOT EXISTS recs (version TEXT NOT NULL, user TEXT NOT NULL, payload TEXT NOT NULL,
                                     PRIMARY KEY (version, user)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT UNIQUE NOT NULL,
                                      record TEXT NOT NULL);
    """

    def __init__(self, path: str | Path, timeout_ms: float | None = None):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.timeout = 60.0 if timeout_ms is None else timeout_ms / 1000
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[sqlite3.Connection] = []  # every thread's connection, to close when the file goes
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the connections read
        self._opened = False
        try:
            self._con().executescript(self.SCHEMA)
        except (sqlite3.DatabaseError, StoreError) as e:
            raise GenrecError(f"{self.path}: not a genrec cache store ({e})") from None

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _close_all(self) -> None:
        """Close every thread's connection (the last close of a file checkpoints and removes its WAL)."""
        with self._lock:
            for con in self._open:
                try:
                    con.close()
                except sqlite3.Error:
                    pass
            self._open.clear()
            self._file = None

    def _con(self) -> sqlite3.Connection:
        if self._file is not None and self._identity() != self._file:  # the file was deleted or replaced under us
            self._close_all()
        con = getattr(self._local, "con", None)
        if con is None or con not in self._open:
            if self._opened and not self.path.exists():
                raise StoreError(f"{self.url}: the cache file is missing")
            try:  # after the first open, never create the file (a missing file is a fault, not an empty cache)
                target, uri = (f"file:{quote(str(self.path))}?mode=rw", True) if self._opened else (self.path, False)
                con = sqlite3.connect(target, timeout=self.timeout, isolation_level=None, check_same_thread=False, uri=uri)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                raise StoreError(f"{self.url}: cannot open the cache file ({e})") from None
            with self._lock:
                self._open.append(con)
                self._file = self._identity()
            self._opened = True
            self._local.con = con
        return con

    def _read(self, sql: str, args: tuple = ()) -> list:
        """Rows of a read; any SQLite failure (locked, not a cache, closed under us) is a StoreError."""
        try:
            return self._con().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.url}: {e}") from None

    def begin(self, version, meta):
        self._con().execute("INSERT OR IGNORE INTO versions VALUES (?, ?)", (version, json.dumps(meta)))

    def done_chunks(self, version):
        return {r[0] for r in self._con().execute("SELECT chunk FROM chunks WHERE version=?", (version,))}

    def write_chunk(self, version, chunk, rows):
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT OR REPLACE INTO recs VALUES (?, ?, ?)", [(version, u, p) for u, p in rows])
            con.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?)", (version, chunk))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def activate(self, version):
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("SELECT 1 FROM versions WHERE version=?", (version,)).fetchone() is None:
                raise GenrecError(f"{self.url}: no cache version {version}")
            con.execute("INSERT OR REPLACE INTO state VALUES ('active', ?)", (version,))
            for table in ("recs", "chunks", "versions"):
                con.execute(f"DELETE FROM {table} WHERE version<>?", (version,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def active(self):
        rows = self._read("SELECT v.version, v.meta FROM state s JOIN versions v ON v.version=s.value WHERE s.key='active'")
        return None if not rows else {**json.loads(rows[0][1]), "version": rows[0][0]}

    def lookup(self, user):
        rows = self._read(
            "SELECT s.value, r.payload FROM state s JOIN recs r ON r.version=s.value AND r.user=? WHERE s.key='active'",
            (user,),
        )
        return None if not rows else (rows[0][0], rows[0][1])

    def rows(self, version=None):
        if version is None:
            act = self.active()
            if act is None:
                return {}
            version = act["version"]
        return dict(self._con().execute("SELECT user, payload FROM recs WHERE version=?", (version,)))

    def add_item(self, item_id, record):
        try:
            cur = self._con().execute("INSERT OR IGNORE INTO items (item_id, record) VALUES (?, ?)",
                                      (item_id, json.dumps(record)))
        except sqlite3.Error as e:
            raise StoreError(f"{self.url}: {e}") from None
        return cur.rowcount == 1

    def new_items(self):
        return [json.loads(r[0]) for r in self._read("SELECT record FROM items ORDER BY seq")]

    def close(self):
        self._close_all()


# Redis: the active version and the user's row in one round trip, atomically.
_LOOKUP = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local row = redis.call('HGET', ARGV[1] .. ':v:' .. v .. ':recs', ARGV[2])
if not row then return false end
return {v, row}
"""
# Redis: a new item and its place in the order, together or not at all.
_ADD_ITEM = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""


class RedisStore(CacheStore):
    """Keys under ``prefix``: ``active`` (the version), ``v:{version}:meta|recs|chunks``, ``items`` (new items)."""

    def __init__(self, url: str, timeout_ms: float | None = None):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        parsed = urlparse(url)
        self.prefix = parse_qs(parsed.query).get("prefix", ["genrec"])[0]
        self.url = url
        timeouts = {} if timeout_ms is None else {
            "socket_timeout": timeout_ms / 1000, "socket_connect_timeout": timeout_ms / 1000,
            "retry": Retry(NoBackoff(), 0),  # one attempt: a fault is reported within the timeout
        }
        self.r = redis.Redis.from_url(url.split("?")[0], decode_responses=True, **timeouts)
        self._errors = redis.exceptions.RedisError
        try:
            self.r.ping()
        except redis.exceptions.RedisError as e:
            raise GenrecError(f"{url}: cannot reach the Redis server ({e})") from None
        self._lookup = self.r.register_script(_LOOKUP)
        self._add_item = self.r.register_script(_ADD_ITEM)

    def _call(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except self._errors as e:  # down (refused), hung (timeout), or an error reply
            raise StoreError(f"{self.url}: {type(e).__name__}: {e}") from None

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def begin(self, version, meta):
        self.r.set(self._k("v", version, "meta"), json.dumps(meta), nx=True)

    def done_chunks(self, version):
        return {int(c) for c in self.r.smembers(self._k("v", version, "chunks"))}

    def write_chunk(self, version, chunk, rows):
        pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: rows and marker together or not at all
        if rows:
            pipe.hset(self._k("v", version, "recs"), mapping=dict(rows))
        pipe.sadd(self._k("v", version, "chunks"), chunk)
        pipe.execute()

    def activate(self, version):
        if not self.r.exists(self._k("v", version, "meta")):
            raise GenrecError(f"{self.url}: no cache version {version}")
        self.r.set(self._k("active"), version)
        keep = {self._k("v", version, s) for s in ("meta", "recs", "chunks")}
        stale = [k for k in self.r.scan_iter(match=self._k("v", "*")) if k not in keep]
        if stale:
            self.r.unlink(*stale)

    def active(self):
        version = self._call(self.r.get, self._k("active"))
        if version is None:
            return None
        meta = self._call(self.r.get, self._k("v", version, "meta"))
        return None if meta is None else {**json.loads(meta), "version": version}

    def lookup(self, user):
        found = self._call(self._lookup, keys=[self._k("active")], args=[self.prefix, user])
        return (found[0], found[1]) if found else None

    def rows(self, version=None):
        version = version or self.r.get(self._k("active"))
        return {} if version is None else self.r.hgetall(self._k("v", version, "recs"))

    def add_item(self, item_id, record):
        return bool(self._call(self._add_item, keys=[self._k("items"), self._k("items", "order")],
                               args=[item_id, json.dumps(record)]))

    def new_items(self):
        order = self._call(self.r.lrange, self._k("items", "order"), 0, -1)
        if not order:
            return []
        return [json.loads(x) for x in self._call(self.r.hmget, self._k("items"), order) if x is not None]

    def close(self):
        self.r.close()


def open_store(url: str | Path, timeout_ms: float | None = None) -> CacheStore:
    """A store from a URL: ``redis://...``, ``sqlite:///path`` or a plain file path. ``timeout_ms``:
    the longest a read may wait on the store (default: seconds, as a build wants)."""
    url = str(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, timeout_ms)
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///") :], timeout_ms)
    if "://" in url:
        raise GenrecError(f"store {url!r}: expected a file path, sqlite:///path or redis://host:port/db")
    return SQLiteStore(url, timeout_ms)
