"""``genrec serve``: the HTTP API over a cache store.

- ``GET /users/{user_id}/recommendations?k=``: the user's cached top-k. A user the cache does not
  hold gets a fallback, marked in ``source``: a decode on the fly when the server has the model
  and the user's history (within a time budget), else the most popular items.
- ``POST /items`` (admin token): a new item's codes from the codebooks, persisted; the next
  ``genrec cache build`` decodes with it. ``GET /items/{item_id}``: an item and its codes.
- ``/healthz``; ``/metrics`` (Prometheus text format).

Every error is JSON ``{"detail": ...}`` with a 4xx status saying what was wrong.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Header, Path, Query
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from genrec.serve.catalog import Catalog
from genrec.serve.store import CacheStore, decode_row

MAX_BODY = 64 * 1024
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
    if path.startswith("/users/"):
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


def create_app(
    store: CacheStore,
    catalog: Catalog,
    admin_token: str | None = None,
    recommender=None,
    decode_budget_ms: float = 200.0,
    max_k: int = 100,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The API. ``recommender`` (a GenerativeRecommender over ``catalog.extended_index()``) enables
    on-the-fly decoding of users the cache does not hold."""
    app = FastAPI(
        title="genrec",
        version="1",
        description="Precomputed top-K recommendations from a fine-tuned LLM recommender; new items without retraining.",
    )
    metrics = Metrics()
    popular = catalog.popular(max_k)
    versions: dict[str, dict] = {}
    decoded: OrderedDict[str, tuple[list[str], list[float]]] = OrderedDict()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") if recommender is not None else None
    pending: dict[str, object] = {}
    started = time.time()

    def version_meta(version: str) -> dict:
        if version not in versions:
            act = store.active()
            versions[version] = act if act is not None and act["version"] == version else {"version": version}
        return versions[version]

    def decode(user_id: str, history) -> tuple[list[str], list[float]]:
        res = recommender.rank_scored([history], min(max_k, recommender.beams))
        ok = res.items[0] >= 0
        out = ([catalog.ids[i] for i in res.items[0][ok]], res.scores[0][ok].tolist())
        decoded[user_id] = out
        while len(decoded) > 10_000:
            decoded.popitem(last=False)
        return out

    err = {400: {"model": Error}, 404: {"model": Error}, 413: {"model": Error}, 422: {"model": Error}}

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=err,
             summary="A user's top-k recommendations")
    async def recommendations(user_id: str = Path(max_length=200), k: int = Query(10, ge=1, le=max_k)):
        found = store.lookup(user_id)
        body = {"user_id": user_id, "k": k, "fallback_reason": None, "model_version": None, "cache_version": None}
        if found is not None:
            version, payload = found
            items, scores = decode_row(payload)
            meta = version_meta(version)
            body.update(source="cache", cache_version=version, model_version=meta.get("model_version"))
        elif user_id in decoded:
            items, scores = decoded[user_id]
            body.update(source="decode")
        else:
            items, scores, reason = None, None, "unknown user"
            history = catalog.history(user_id)
            if history is not None:
                reason = "user not in the cache"
                if pool is not None:
                    fut = pending.get(user_id) or asyncio.wrap_future(pool.submit(decode, user_id, history))
                    pending[user_id] = fut
                    fut.add_done_callback(lambda _f, u=user_id: pending.pop(u, None))
                    try:
                        items, scores = await asyncio.wait_for(asyncio.shield(fut), decode_budget_ms / 1000)
                        body.update(source="decode")
                    except TimeoutError:
                        reason = f"user not in the cache; decoding took over {decode_budget_ms:g} ms (retry later)"
            if items is None:
                items, scores = popular, [None] * len(popular)
                body.update(source="popular", fallback_reason=reason)
        metrics.sources[body["source"]] += 1
        body["items"] = [{"item_id": i, "score": s} for i, s in zip(items[:k], scores[:k], strict=True)]
        return JSONResponse(body)

    @app.get("/items/{item_id}", response_model=Item, responses=err, summary="An item and its codes")
    def get_item(item_id: str = Path(max_length=200)):
        found = catalog.item(item_id)
        if found is None:
            catalog.refresh()  # added by another process?
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
        except KeyError:
            return _error(409, f"item {item.item_id!r} already exists")
        except ValueError as e:
            return _error(422, str(e))
        return JSONResponse(out, status_code=201)

    @app.get("/healthz", summary="Liveness and what is being served")
    def healthz():
        try:
            act = store.active()
        except Exception as e:  # the store is down: say so, do not crash
            return JSONResponse({"status": "error", "detail": f"cache store unreachable: {type(e).__name__}"},
                                status_code=503)
        return {"status": "ok", "cache_version": act and act["version"], "model_version": act and act.get("model_version"),
                "cached_users": act and act.get("n_users"), "items": len(catalog.ids), "added_items": len(catalog.added),
                "decoder": recommender is not None, "uptime_s": round(time.time() - started, 1)}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def prometheus():
        extra = {"genrec_items": len(catalog.ids), "genrec_added_items": len(catalog.added),
                 "genrec_uptime_seconds": round(time.time() - started, 1)}
        return PlainTextResponse(metrics.render(extra), media_type="text/plain; version=0.0.4")

    app.add_middleware(Guard, metrics=metrics, max_body=max_body)
    app.state.metrics = metrics
    return app
