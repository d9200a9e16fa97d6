"""``genrec serve``: the HTTP API over a cache store.

- ``GET /users/{user_id}/recommendations?k=``: the user's cached top-k. A user the cache does not
  hold gets a fallback, marked in ``source`` and ``fallback_reason``: a decode on the fly when the
  server has the model and the user's history (within a time budget and a queue length), else the
  most popular items.
- ``POST /recommendations`` with a history of item ids and/or a request in words (``query``, for a
  model trained with the ``seq_query`` task): decoded on the fly by the same path (anonymous
  sessions, users whose cached list is stale, cold users with a request); unknown item ids are a
  422 naming them, and so is a request to a model that takes none.
- ``POST /items`` (admin token): a new item's codes from the codebooks, persisted; the next
  ``genrec cache build`` decodes with it. ``GET /items/{item_id}``: an item and its codes.
- ``/healthz``; ``/metrics`` (Prometheus text format).

Every error is JSON ``{"detail": ...}`` with a 4xx status saying what was wrong. The store is read
in a pool of threads with a timeout (:class:`StoreGuard`): a slow or failed store never holds a
request past the timeout nor gives a 500; recommendations fall back to popularity naming the store,
other endpoints answer a JSON 503, and the store is tried again by itself.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from fastapi import FastAPI, Header, Path, Query
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from genrec.errors import DataError, GenrecError
from genrec.llm.tasks import clean_query
from genrec.serve.catalog import Catalog
from genrec.serve.store import CacheStore, StoreError, decode_row

MAX_BODY = 64 * 1024
MAX_QUERY_CHARS = 1000  #: the longest request in words POST /recommendations takes (the model reads at most its own cut)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Recommendation(BaseModel):
    item_id: str
    score: float | None = Field(None, description="log-probability of the item's codes (None for popularity)")


class Recommendations(BaseModel):
    user_id: str
    k: int
    items: list[Recommendation]
    source: str = Field(description="cache | decode | popular")
    fallback_reason: str | None = None
    model_version: str | None = None
    cache_version: str | None = None


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[str | int] = Field(default_factory=list, max_length=1000,
                                     description="item ids, oldest first (may be empty with a query: a cold user)")
    query: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS,
                              description="a request in words, e.g. 'a quiet mechanical keyboard' (a model trained with "
                                          "the seq_query task; cut to the length it was trained on)")
    k: int = Field(10, ge=1, description="items wanted (at most the server's max k)")
    user_id: str | None = Field(None, max_length=200, description="a label echoed back (e.g. a session id)")


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=200)
    title: str | None = Field(None, max_length=2000)
    description: str | None = Field(None, max_length=20000)
    embedding: list[float] | None = Field(None, min_length=1, max_length=4096,
                                          description="behaviour embedding (the cf stage's kind)")
    neighbours: list[str] | None = Field(None, min_length=1, max_length=1000,
                                         description="ids of catalogue items often interacted with together with it")


class Item(BaseModel):
    item_id: str
    title: str
    source: str
    codes: list[int] | None
    tokens: str
    added_at: str | None = None


class Error(BaseModel):
    detail: str


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class Metrics:
    """Counters and a latency histogram per endpoint, rendered in Prometheus text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.sources: dict[str, int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            b = self.buckets[endpoint]
            for n, edge in enumerate(LATENCY_BUCKETS):
                if seconds <= edge:
                    b[n] += 1
                    break
            else:
                b[-1] += 1
            self.sums[endpoint] += seconds

    def render(self, extra: dict[str, float]) -> str:
        out = ["# HELP genrec_requests_total HTTP requests by endpoint and status", "# TYPE genrec_requests_total counter"]
        with self.lock:
            for (ep, st), n in sorted(self.requests.items()):
                out.append(f'genrec_requests_total{{endpoint="{ep}",status="{st}"}} {n}')
            out += ["# HELP genrec_recommendations_total recommendation responses by source",
                    "# TYPE genrec_recommendations_total counter"]
            for src, n in sorted(self.sources.items()):
                out.append(f'genrec_recommendations_total{{source="{src}"}} {n}')
            out += ["# HELP genrec_request_seconds request latency", "# TYPE genrec_request_seconds histogram"]
            for ep, b in sorted(self.buckets.items()):
                cum = 0
                for edge, n in zip((*LATENCY_BUCKETS, float("inf")), b, strict=True):
                    cum += n
                    le = "+Inf" if edge == float("inf") else repr(edge)
                    out.append(f'genrec_request_seconds_bucket{{endpoint="{ep}",le="{le}"}} {cum}')
                out.append(f'genrec_request_seconds_sum{{endpoint="{ep}"}} {self.sums[ep]:.6f}')
                out.append(f'genrec_request_seconds_count{{endpoint="{ep}"}} {cum}')
        for name, value in extra.items():
            out += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(out) + "\n"


def _endpoint(path: str) -> str:
    if path.startswith("/users/") or path == "/recommendations":
        return "recommendations"
    if path.startswith("/items"):
        return "items"
    return path.strip("/") or "root"


class Guard:
    """ASGI middleware: request metrics, and a body-size limit (413) read before the app sees it."""

    def __init__(self, app, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = dict(scope["headers"]).get(b"content-length")
            too_big = declared is not None and declared.isdigit() and int(declared) > self.max_body
            body, more = b"", not too_big
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body:
                    too_big = True
                    break
            if too_big:
                await _error(413, f"request body over {self.max_body} bytes")(scope, receive, send_wrapper)
                self.metrics.observe(_endpoint(scope["path"]), 413, time.perf_counter() - start)
                return
            sent = False

            async def receive_body():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, receive_body, send_wrapper)
        else:
            await self.app(scope, receive, send_wrapper)
        self.metrics.observe(_endpoint(scope["path"]), status[0], time.perf_counter() - start)


class StoreGuard:
    """Store reads off the event loop, each bounded by ``timeout_s`` (a read that fails or does not
    answer in time is a StoreError naming the store). After ``trip`` failures of the store in a row
    it is left alone for ``retry_s`` (reads fail at once, naming the last fault), then tried again:
    the server recovers by itself when the store is back. A read this process was too busy to start
    within half the timeout still fails (the request falls back in time) but is not the store's
    fault, so a busy CPU does not send every request to the fallback for ``retry_s``."""

    def __init__(self, store: CacheStore, timeout_s: float, retry_s: float, threads: int = 16, trip: int = 3):
        self.store, self.timeout_s, self.retry_s, self.threads, self.trip = store, timeout_s, retry_s, threads, trip
        self.failures = 0
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self.busy = 0
        self.lock = threading.Lock()
        self.down_until = 0.0
        self.fault: str | None = None

    def _run(self, fn, args, started: list):
        started.append(time.monotonic())
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.busy -= 1

    def _fail(self, fault: str) -> StoreError:
        self.fault, self.failures = fault, self.failures + 1
        if self.failures >= self.trip:
            self.down_until = time.monotonic() + self.retry_s
        return StoreError(fault)

    async def call(self, fn, *args):
        if time.monotonic() < self.down_until:
            raise StoreError(self.fault)
        with self.lock:
            if self.busy >= self.threads:  # every reader is stuck on the store
                raise self._fail(f"{self.store.url}: {self.busy} reads already waiting")
            self.busy += 1
        asked, started = time.monotonic(), []
        fut = asyncio.get_running_loop().run_in_executor(self.pool, self._run, fn, args, started)
        try:
            out = await asyncio.wait_for(fut, self.timeout_s)
        except TimeoutError:
            if not started or started[0] - asked > self.timeout_s / 2:  # this process was too busy to ask in time
                raise StoreError(f"{self.store.url}: not asked within {self.timeout_s * 1000:g} ms (the server is "
                                 "overloaded)") from None
            raise self._fail(f"{self.store.url}: no answer within {self.timeout_s * 1000:g} ms") from None
        except StoreError as e:
            raise self._fail(str(e)) from None
        self.fault, self.down_until, self.failures = None, 0.0, 0
        return out


class Fallback(Exception):
    """No decoded list now; the reason goes to ``fallback_reason``."""


def _rank(rec, history, query: str | None = None) -> tuple[list[int], list[float]]:
    """The decoder's list for one history (and request): (item positions, log-probabilities), best first."""
    res = rec.rank_scored([history], rec.beams) if query is None else rec.rank_scored([history], rec.beams, queries=[query])
    ok = res.items[0] >= 0
    return res.items[0][ok].tolist(), res.scores[0][ok].tolist()


def _query_chars(rec) -> int | None:
    """How long a request the decoder's model reads (None: it takes none)."""
    return getattr(rec, "query_max_chars", None)


class DecodeThread:
    """A decoder object (e.g. a GenerativeRecommender) run in one worker thread of this process."""

    def __init__(self, rec, n_items: int):
        self.rec, self.n_items = rec, n_items
        self.query_chars = _query_chars(rec)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")

    def submit(self, history, query: str | None = None) -> Future:
        return self.pool.submit(_rank, self.rec, history, query)


_worker_rec = None  # in a DecodeProcess's child: its decoder


def _worker_load(model, index, data, store, beams, pop_alpha, precision=None) -> None:
    global _worker_rec
    from genrec.serve.cache import load_decoder
    from genrec.serve.store import open_store

    _worker_rec = load_decoder(model, Catalog(index, data, open_store(store)), beams=beams, batch_users=1, pop_alpha=pop_alpha,
                               precision=precision)


def _worker_items() -> tuple[int, int | None]:
    return _worker_rec.index.n_items, _query_chars(_worker_rec)


def _worker_rank(history, query: str | None = None) -> tuple[list[int], list[float]]:
    return _rank(_worker_rec, history, query)


class DecodeProcess:
    """The decoder of `genrec serve --decode`: :func:`genrec.serve.cache.load_decoder` (the cache
    build's) loaded in one child process, so decoding never holds the server's interpreter lock
    and cache hits only share the CPU with it. Returns once the model is loaded."""

    def __init__(self, model, index, data, store: str, beams: int, pop_alpha: float, precision: str | None = None):
        import multiprocessing

        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_load, initargs=(model, index, data, store, beams, pop_alpha, precision))
        try:
            self.n_items, self.query_chars = self.pool.submit(_worker_items).result()
        except BrokenProcessPool:
            raise GenrecError(f"{model}: the decoder process failed to load the model (its error is above)") from None

    def submit(self, history, query: str | None = None) -> Future:
        return self.pool.submit(_worker_rank, history, query)


class OnTheFly:
    """Decoding of lists the cache does not hold, off the event loop (cache hits are served while
    it works). A request waits at most ``budget_s``; at most ``max_pending`` decodes are queued or
    running, and a request beyond that falls back at once. A decode that outlives its request
    still finishes and is kept (LRU) for the next request."""

    def __init__(self, decoder: DecodeThread | DecodeProcess, catalog: Catalog, budget_s: float, max_pending: int,
                 keep: int = 10_000):
        self.decoder, self.catalog, self.budget_s, self.max_pending, self.keep = decoder, catalog, budget_s, max_pending, keep
        self.n_items = decoder.n_items  # the items it decodes over (added items up to its start)
        self.pending: dict[tuple, asyncio.Future] = {}
        self.done: OrderedDict[tuple, tuple[list[str], list[float]]] = OrderedDict()

    def _finished(self, key: tuple, fut: asyncio.Future) -> None:
        self.pending.pop(key, None)
        if not fut.cancelled() and fut.exception() is None:
            positions, scores = fut.result()
            self.done[key] = ([self.catalog.ids[i] for i in positions], scores)
            while len(self.done) > self.keep:
                self.done.popitem(last=False)

    async def get(self, key: tuple, history, query: str | None = None) -> tuple[list[str], list[float]]:
        if key in self.done:
            return self.done[key]
        fut = self.pending.get(key)
        if fut is None:
            if len(self.pending) >= self.max_pending:
                raise Fallback(f"decode queue full ({len(self.pending)} decodes waiting)")
            try:
                fut = asyncio.wrap_future(self.decoder.submit(history) if query is None
                                          else self.decoder.submit(history, query))
            except Exception as e:  # noqa: BLE001 - e.g. the decoder process died: fall back, never a 500
                raise Fallback(f"decoder unavailable ({type(e).__name__}: {e})") from None
            self.pending[key] = fut
            fut.add_done_callback(lambda f: self._finished(key, f))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.budget_s)
        except TimeoutError:
            raise Fallback(f"decoding took over the {self.budget_s * 1000:g} ms budget (the list is kept for a retry)") from None
        except Exception as e:  # noqa: BLE001 - a failed decode falls back, never a 500
            raise Fallback(f"decoding failed ({type(e).__name__}: {e})") from None
        positions, scores = fut.result()
        return [self.catalog.ids[i] for i in positions], scores


def create_app(
    store: CacheStore,
    catalog: Catalog,
    admin_token: str | None = None,
    recommender=None,
    decode_budget_ms: float = 200.0,
    decode_queue: int = 8,
    max_k: int = 100,
    max_body: int = MAX_BODY,
    store_timeout_ms: float = 50.0,
    store_retry_ms: float = 250.0,
) -> FastAPI:
    """The API. ``recommender`` enables on-the-fly decoding of users the cache does not hold and of
    posted histories: a :class:`DecodeProcess`, or a decoder object with ``rank_scored`` and
    ``beams`` (a GenerativeRecommender over ``catalog.extended_index()``, as
    :func:`genrec.serve.cache.load_decoder` makes; decoded in a thread), within ``decode_budget_ms`` per request and ``decode_queue``
    decodes queued or running. ``store_timeout_ms``: the longest a request waits on the store;
    ``store_retry_ms``: how long a failed store is left alone before it is tried again."""
    app = FastAPI(
        title="genrec",
        version="1",
        description="Precomputed top-K recommendations from a fine-tuned LLM recommender; new items without retraining.",
    )
    metrics = Metrics()
    popular = catalog.popular(max_k)
    versions: dict[str, dict] = {}
    guard = StoreGuard(store, store_timeout_ms / 1000, store_retry_ms / 1000)
    if recommender is not None and not isinstance(recommender, DecodeProcess):
        recommender = DecodeThread(recommender, recommender.index.n_items if hasattr(recommender, "index") else len(catalog.ids))
    fly = OnTheFly(recommender, catalog, decode_budget_ms / 1000, decode_queue) if recommender is not None else None
    started = time.time()

    async def version_meta(version: str) -> dict:
        if version not in versions:
            try:
                act = await guard.call(store.active)
            except StoreError:
                return {"version": version}  # not kept: asked again once the store answers
            versions[version] = act if act is not None and act["version"] == version else {"version": version}
        return versions[version]

    def respond(body: dict, items: list[str], scores: list, k: int) -> JSONResponse:
        metrics.sources[body["source"]] += 1
        body["items"] = [{"item_id": i, "score": s} for i, s in zip(items[:k], scores[:k], strict=True)]
        return JSONResponse(body)

    def popular_for(body: dict, reason: str, k: int) -> JSONResponse:
        return respond({**body, "source": "popular", "fallback_reason": reason}, popular, [None] * len(popular), k)

    async def decoded_or_popular(body: dict, key: tuple, history, reason: str, k: int, query: str | None = None) -> JSONResponse:
        """A decode of ``history`` (and ``query``) on the fly, or the popular items with why."""
        if fly is not None:
            try:
                items, scores = await fly.get(key, history, query)
                return respond({**body, "source": "decode"}, items, scores, k)
            except Fallback as e:
                reason = f"{reason}; {e}"
        return popular_for(body, reason, k)

    err = {400: {"model": Error}, 404: {"model": Error}, 413: {"model": Error}, 422: {"model": Error},
           503: {"model": Error}}

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=err,
             summary="A user's top-k recommendations")
    async def recommendations(user_id: str = Path(max_length=200), k: int = Query(10, ge=1, le=max_k)):
        body = {"user_id": user_id, "k": k, "fallback_reason": None, "model_version": None, "cache_version": None}
        try:
            found = await guard.call(store.lookup, user_id)
        except StoreError as e:  # slow or down: popularity at once (decoding every user would swamp the decoder)
            reason = f"cache store unavailable ({e})"
            return popular_for(body, reason, k)
        if found is not None:
            version, payload = found
            items, scores = decode_row(payload)
            meta = await version_meta(version)
            return respond({**body, "source": "cache", "cache_version": version, "model_version": meta.get("model_version")},
                           items, scores, k)
        history = catalog.history(user_id)
        if history is None:
            return popular_for(body, "unknown user", k)
        return await decoded_or_popular(body, ("user", user_id), history, "user not in the cache", k)

    @app.post("/recommendations", response_model=Recommendations, responses=err,
              summary="Top-k recommendations after a given history and/or for a request in words (decoded on the fly)")
    async def recommendations_for(req: HistoryRequest):
        if req.k > max_k:
            return _error(422, f"k: at most {max_k}, got {req.k}")
        query = None
        if req.query is not None:
            chars = getattr(fly.decoder, "query_chars", None) if fly is not None else MAX_QUERY_CHARS
            if chars is None:
                return _error(422, "query: this server's model was not trained to take a request in words (its corpus "
                                   "has no seq_query task); send the history alone")
            query = clean_query(req.query, chars)  # as the model reads it: the key of the decoded list too
            if not query:
                return _error(422, "query: a blank request (leave it out to recommend from the history alone)")
        elif not req.history:
            return _error(422, "history: at least one item id, or a query")
        ids = [str(i) for i in req.history]
        n_items = fly.n_items if fly is not None else len(catalog.ids)
        positions = [catalog.pos.get(i) for i in ids]
        unknown = [i for i, k_ in zip(ids, positions, strict=True) if k_ is None or k_ >= n_items]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
            return _error(422, f"history: unknown item ids {shown} (not among the {n_items} items served)")
        body = {"user_id": req.user_id or "anonymous", "k": req.k, "fallback_reason": None, "model_version": None,
                "cache_version": None}
        reason = ("fresh history" if query is None else "request in words") if fly is not None \
            else "no decoder on this server (start it with --decode)"
        history = np.asarray(positions, dtype=np.int64)
        return await decoded_or_popular(body, ("history", query, *positions), history, reason, req.k, query)

    @app.get("/items/{item_id}", response_model=Item, responses=err, summary="An item and its codes")
    def get_item(item_id: str = Path(max_length=200)):
        found = catalog.item(item_id)
        if found is None:
            try:
                catalog.refresh()  # added by another process?
            except StoreError as e:
                return _error(503, f"no item {item_id!r} here, and the cache store cannot be asked for added items ({e})")
            found = catalog.item(item_id)
        if found is None:
            return _error(404, f"no item {item_id!r}")
        return JSONResponse(found)

    @app.post("/items", response_model=Item, status_code=201, summary="Add a new item (admin)",
              responses={**err, 401: {"model": Error}, 403: {"model": Error}, 409: {"model": Error}})
    def add_item(item: NewItem, authorization: str | None = Header(None, description="Bearer ADMIN_TOKEN")):
        if admin_token is None:
            return _error(403, "admin endpoints are disabled: start the server with an admin token")
        if authorization is None or not authorization.startswith("Bearer "):
            return _error(401, "missing admin token: send the header 'Authorization: Bearer <token>'")
        if not secrets.compare_digest(authorization[len("Bearer "):].encode(), admin_token.encode()):
            return _error(403, "wrong admin token")
        try:
            out = catalog.add(item.model_dump())
        except StoreError as e:
            return _error(503, f"cache store unavailable, the item was not added ({e})")
        except KeyError:
            return _error(409, f"item {item.item_id!r} already exists")
        except ValueError as e:
            return _error(422, str(e))
        except DataError as e:  # the server's own index folder is broken or unreadable
            return _error(503, f"the item was not added: the index cannot be read ({e})")
        except GenrecError as e:  # e.g. an index whose codes cannot be given to new items
            return _error(409, f"the item was not added: {e}")
        return JSONResponse(out, status_code=201)

    @app.get("/healthz", summary="Liveness and what is being served", responses={503: {"model": Error}})
    async def healthz():
        try:
            act = await guard.call(store.active)
        except StoreError as e:  # the store is down: say so, do not crash
            return JSONResponse({"status": "error", "detail": f"cache store unavailable ({e})"}, status_code=503)
        return {"status": "ok", "cache_version": act and act["version"], "model_version": act and act.get("model_version"),
                "cached_users": act and act.get("n_users"), "items": len(catalog.ids), "added_items": len(catalog.added),
                "decoder": fly is not None, "decodes_pending": len(fly.pending) if fly else 0, "uptime_s": round(time.time() - started, 1)}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def prometheus():
        extra = {"genrec_items": len(catalog.ids), "genrec_added_items": len(catalog.added),
                 "genrec_uptime_seconds": round(time.time() - started, 1)}
        return PlainTextResponse(metrics.render(extra), media_type="text/plain; version=0.0.4")

    @app.exception_handler(StoreError)
    async def store_fault(request, exc: StoreError):  # any store fault not handled above: a JSON 503, never a 500
        return _error(503, f"cache store unavailable ({exc})")

    app.add_middleware(Guard, metrics=metrics, max_body=max_body)
    app.state.metrics = metrics
    return app
