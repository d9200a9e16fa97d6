"""Load test of `genrec serve`: wrk against the running server on loopback, SQLite and Redis stores,
cache misses decoded on the fly, and the Redis store failing under load.

    .venv/bin/python benchmarks/serve_load.py [--run runs/scientific] [--seconds 60] [--connections 4]
        [--modes hit miss fault] [--build-sample 200]

- ``hit``, for each store: fill a cache with a top-20 list for every user of the run's dataset,
  start `genrec serve` (uvicorn, one process) on a free port, run `wrk --latency` for ``--seconds``
  with random known users (`GET /users/{id}/recommendations?k=10`), and read requests/s, p50/p99
  latency and errors (non-2xx responses and socket errors). The cached lists are popularity lists
  without the user's own items, written through the same store API `genrec cache build` uses:
  serving cost (one lookup, one JSON row, one response) does not depend on which model wrote them.
- ``miss``: the same cache without ``--miss-users`` held-out users, `genrec serve --decode` with the
  run's model, and two wrk side by side for ``--miss-seconds``: one connection asking for held-out
  users in turn (each a new user: decoded on the fly, within a budget large enough never to fall
  back), and cache hits on ``--connections`` connections, so the hit latency is read while decodes
  are in flight. Then the same misses on ``--connections`` connections at the default 200 ms
  budget: how many fall back to popularity.
- ``fault``: the Redis store, wrk for ``--fault-seconds`` in each phase: healthy, redis-server paused
  (SIGSTOP), killed (SIGKILL), restarted (it reloads the saved cache). Requests counted by status
  and by source, p99 per phase, and the time from the restart until a cached user is served from
  the cache again (a probe every 10 ms).
- ``--build-sample N``: `genrec cache build` of N users (a seeded sample) with the run's model into
  a scratch store; its wall time, and the time for every user at that rate.

The server and wrk share this machine's cores. Writes benchmarks/results/serve_load.{md,json};
rows measured by another command already there are kept, as earlier runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402

LUA = """
local ids = {}
for line in io.lines(os.getenv("GENREC_USERS")) do ids[#ids + 1] = line end
math.randomseed(tonumber(os.getenv("GENREC_SEED") or "1"))
request = function()
  return wrk.format("GET", "/users/" .. ids[math.random(#ids)] .. "/recommendations?k=10")
end
"""
# users in turn (each request a new user while the list lasts), responses counted by status and source
LUA_COUNTED = r"""
local ids = {}
for line in io.lines(os.getenv("GENREC_USERS")) do ids[#ids + 1] = line end
local order = os.getenv("GENREC_ORDER") or "random"
math.randomseed(tonumber(os.getenv("GENREC_SEED") or "1"))
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; sources = {}; reasons = {}; n = 0 end
request = function()
  n = n + 1
  local u = order == "sequential" and ids[(n - 1) % #ids + 1] or ids[math.random(#ids)]
  return wrk.format("GET", "/users/" .. u .. "/recommendations?k=10")
end
response = function(status, headers, body)
  statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  local s = body:match('"source":"(%a+)"') or "none"
  sources[s] = (sources[s] or 0) + 1
  local r = body:match('"fallback_reason":"([^"]*)')
  if r then reasons[r] = (reasons[r] or 0) + 1 end
end
local function merged(name)
  local out, parts = {}, {}
  for _, t in ipairs(threads) do for k, v in pairs(t:get(name)) do out[k] = (out[k] or 0) + v end end
  for k, v in pairs(out) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  return "{" .. table.concat(parts, ", ") .. "}"
end
done = function(summary, latency, requests)
  io.write('COUNTS {"status": ' .. merged("statuses") .. ', "source": ' .. merged("sources") .. ', "reason": '
           .. merged("reasons") .. '}\n')
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(url: str, run: Path, skip: set[str] = frozenset()) -> list[str]:
    """Every user's (but ``skip``'s) top-20 popular items they have not interacted with, as one active
    cache version; returns the users cached."""
    import numpy as np

    from genrec.serve.catalog import Catalog
    from genrec.serve.store import encode_row, open_store

    st = open_store(url)
    catalog = Catalog(run / "index", run / "data", st)
    popular = catalog.popular(200)
    pos = {i: k for k, i in enumerate(catalog.ids)}
    users = [u for u in catalog.ds.user_ids.tolist() if u not in skip]
    st.begin("bench", {"model_version": "popularity", "n_users": len(users), "k": 20, "n_chunks": 1})
    rows = []
    for u in users:
        seen = set(catalog.history(u).tolist())
        items = [i for i in popular if pos[i] not in seen][:20]
        rows.append((u, encode_row(items, (-np.log1p(np.arange(len(items)))).tolist())))
    for lo in range(0, len(rows), 2000):
        st.write_chunk("bench", lo // 2000, rows[lo : lo + 2000])
    st.activate("bench")
    st.close()
    return users


def parse_wrk(text: str) -> dict:
    def ms(value: str) -> float:
        n, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
        return float(n) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", text, re.M))
    if "50" not in pct:
        raise RuntimeError(f"wrk measured no latency (no request finished?):\n{text}")
    total = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    row = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)), "p50_ms": ms(pct["50"]),
           "p90_ms": ms(pct["90"]), "p99_ms": ms(pct["99"]), "requests": total, "errors": errors}
    counts = re.search(r"^COUNTS (.*)$", text, re.M)
    if counts:
        counts = json.loads(counts.group(1))
        row.update(by_status=counts["status"], by_source=counts["source"], by_reason=counts["reason"])
    return row


@contextlib.contextmanager
def serving(url: str, run: Path, *extra: str, start_s: float = 60.0):
    """`genrec serve` on a free port (one process), until the block ends; yields its base URL."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "genrec", "serve", "--index", str(run / "index"), "--data", str(run / "data"),
                               "--store", url, "--port", str(port), *extra], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + start_s
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not start: {server.stderr.read().decode()[-2000:]}")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def wrk(base: str, lua: Path, users_file: Path, seconds: float, connections: int, order: str = "random") -> dict:
    env = {**os.environ, "GENREC_USERS": str(users_file), "GENREC_ORDER": order}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s", str(lua),
                          base], env=env, capture_output=True, text=True, check=True).stdout
    print(out, file=sys.stderr)
    return {**parse_wrk(out), "seconds": seconds, "connections": connections}


def serve_and_load(store: str, url: str, run: Path, args, users_file: Path) -> dict:
    with serving(url, run) as base:
        lua = users_file.parent / "users.lua"  # warm-up, then the measured run
        wrk(base, lua, users_file, args.warmup, args.connections)
        return {"mode": "hit", "store": store, **wrk(base, lua, users_file, args.seconds, args.connections)}


def miss_rows(run: Path, model: Path, args, tmp: Path) -> list[dict]:
    """Cache misses decoded on the fly, with cache hits alongside (see the module docstring)."""
    import numpy as np

    from genrec.data.dataset import Dataset

    users = Dataset.load(run / "data").user_ids.tolist()
    held = [str(u) for u in np.random.default_rng(0).permutation(users)[: args.miss_users]]
    url = str(tmp / "miss.db")
    cached = fill(url, run, skip=set(held))
    (tmp / "held.txt").write_text("\n".join(held) + "\n")
    (tmp / "cached.txt").write_text("\n".join(cached) + "\n")
    counted = tmp / "counted.lua"
    rows = []
    with serving(url, run, "--model", str(model), "--decode", "--decode-budget-ms", "600000", "--decode-queue", "64",
                 start_s=600) as base:
        results = {}
        # warm-up on the last held-out users (not asked for in the measured run while the list lasts)
        (tmp / "warm.txt").write_text("\n".join(held[::-1][:3]) + "\n")
        wrk(base, counted, tmp / "warm.txt", args.warmup, 1, order="sequential")
        side = threading.Thread(target=lambda: results.setdefault(
            "hit", wrk(base, counted, tmp / "cached.txt", args.miss_seconds, args.connections)))
        side.start()
        results["miss"] = wrk(base, counted, tmp / "held.txt", args.miss_seconds, 1, order="sequential")
        side.join()
    rows.append({"mode": "miss", "store": "sqlite", "what": "unknown users, decoded on the fly (budget 600 s)",
                 "users": len(held), **results["miss"]})
    rows.append({"mode": "hit during decoding", "store": "sqlite", "what": "cached users while the misses above decode",
                 "users": len(cached), **results["hit"]})
    with serving(url, run, "--model", str(model), "--decode", start_s=600) as base:  # the default budget and queue
        rows.append({"mode": "miss", "store": "sqlite", "what": "unknown users, default budget (200 ms) and queue (8)",
                     "users": len(held), **wrk(base, counted, tmp / "held.txt", args.miss_seconds, args.connections, order="random")})
    return rows


def fault_rows(run: Path, args, tmp: Path) -> dict:
    """wrk against the Redis store while redis-server is paused, then killed, then restarted."""
    import redis as redis_py

    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--dbfilename", "fault.rdb",
           "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        for _ in range(400):
            try:
                redis_py.Redis(port=port).ping()
                return proc
            except redis_py.exceptions.ConnectionError:
                time.sleep(0.01)
        raise RuntimeError("redis-server did not start")

    proc = start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        users = fill(url, run)
        redis_py.Redis(port=port).save()  # a restart reloads the cache
        (tmp / "fault.txt").write_text("\n".join(users) + "\n")
        counted, phases = tmp / "counted.lua", {}
        probe_user = users[0]
        with serving(url, run) as base:
            wrk(base, tmp / "users.lua", tmp / "fault.txt", args.warmup, args.connections)
            phases["healthy"] = wrk(base, counted, tmp / "fault.txt", args.fault_seconds, args.connections)
            proc.send_signal(signal.SIGSTOP)
            phases["paused (SIGSTOP)"] = wrk(base, counted, tmp / "fault.txt", args.fault_seconds, args.connections)
            proc.kill()
            proc.wait()
            phases["killed (SIGKILL)"] = wrk(base, counted, tmp / "fault.txt", args.fault_seconds, args.connections)
            probe: dict = {}

            def recover(t0: float) -> None:  # every 10 ms until the probe user is served from the cache
                while time.perf_counter() - t0 < 120:
                    try:
                        with urllib.request.urlopen(f"{base}/users/{probe_user}/recommendations?k=10", timeout=5) as r:
                            if json.loads(r.read())["source"] == "cache":
                                probe["seconds"] = time.perf_counter() - t0
                                return
                    except urllib.error.HTTPError as e:
                        probe.setdefault("errors", []).append(e.code)
                    time.sleep(0.01)

            t0 = time.perf_counter()
            watcher = threading.Thread(target=recover, args=(t0,))
            watcher.start()
            proc = start()
            started = time.perf_counter() - t0
            phases["restarted"] = wrk(base, counted, tmp / "fault.txt", args.fault_seconds, args.connections)
            watcher.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"mode": "fault", "store": "redis", "users": len(users), "phases": phases,
            "recover_s": probe.get("seconds"), "redis_start_s": round(started, 3), "probe_errors": probe.get("errors", []),
            "store_timeout_ms": 50, "store_retry_ms": 250, "connections": args.connections, "phase_seconds": args.fault_seconds}


def build_sample(run: Path, model: Path, n: int, tmp: Path) -> dict:
    """Wall time of `genrec cache build` for n users (a seeded sample), and at that rate for all."""
    import numpy as np

    from genrec.data.dataset import Dataset

    users = Dataset.load(run / "data").user_ids.tolist()
    sample = [str(u) for u in np.random.default_rng(1).permutation(users)[:n]]
    (tmp / "sample.txt").write_text("\n".join(sample) + "\n")
    cmd = [sys.executable, "-m", "genrec", "cache", "build", "--model", str(model), "--index", str(run / "index"),
           "--data", str(run / "data"), "--store", str(tmp / "build.db"), "--users", str(tmp / "sample.txt"), "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=True, env={**os.environ}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    found = re.search(r"decoded here in ([\d.]+)s \(the model loaded in ([\d.]+)s", proc.stderr)
    decoding = float(found.group(1)) - float(found.group(2))
    return {"mode": "build", "users": n, "all_users": len(users), "seconds": round(seconds, 1),
            "decode_seconds": round(decoding, 3), "all_users_seconds_at_this_rate": round(seconds - decoding + decoding / n * len(users), 1),
            "build_command": "genrec cache build --model M --index I --data D --store S --users SAMPLE (k 20, beams 20, "
                             "batch 8)"}


def fmt_counts(counts: dict | None) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted((counts or {}).items())) or "-"


TABLE = ["| store | mode | what | users | connections | requests/s | p50 ms | p90 ms | p99 ms | errors | by status | "
         "by source | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def table_row(r: dict) -> str:
    return (f"| {r['store']} | {r.get('mode', 'hit')} | {r.get('what', 'random cached users')} | {r.get('users', 0):,} | "
            f"{r['connections']} | {r['rps']:,.1f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} | {fmt_counts(r.get('by_status'))} | {fmt_counts(r.get('by_source'))} | {r['seconds']} |")


def section(rows: list[dict]) -> list[str]:
    """The Markdown of one command's rows: the load table, the fault run, the cache build."""
    lines = []
    load = [r for r in rows if r.get("mode", "hit") in ("hit", "miss", "hit during decoding")]
    if load:
        lines += [*TABLE, *map(table_row, load), ""]
        hits = {r["store"]: r for r in load if r.get("mode", "hit") == "hit"}
        if {"sqlite", "redis"} <= set(hits):
            lines += [f"Redis / SQLite throughput ratio: {hits['redis']['rps'] / hits['sqlite']['rps']:.2f}", ""]
        miss = next((r for r in load if r.get("mode") == "miss"), None)
        if miss and "sqlite" in hits:
            lines += [f"Cache miss (decoded on the fly) / cache hit latency on SQLite: p50 {miss['p50_ms'] / hits['sqlite']['p50_ms']:,.0f}x, "
                      f"p99 {miss['p99_ms'] / hits['sqlite']['p99_ms']:,.0f}x.", ""]
    for r in rows:
        if r.get("mode") == "fault":
            lines += ["### Redis store fault under load", "",
                      f"wrk ({r['connections']} connections, random cached users of {r['users']:,}) for {r['phase_seconds']} s in "
                      f"each phase against one `genrec serve` on the Redis store (store timeout {r['store_timeout_ms']} ms, "
                      f"retry after {r['store_retry_ms']} ms). Time to recover, from starting redis-server again until a "
                      f"cached user is served from the cache: **{r['recover_s'] and round(r['recover_s'], 3)} s** "
                      f"(redis-server answered a ping {r['redis_start_s']} s after its start; HTTP errors seen by the probe: "
                      f"{r['probe_errors'] or 'none'}).", "",
                      "| phase | requests | requests/s | p50 ms | p99 ms | by status | by source |", "|---|---|---|---|---|---|---|"]
            for name, ph in r["phases"].items():
                lines.append(f"| {name} | {ph['requests']:,} | {ph['rps']:,.0f} | {ph['p50_ms']:.2f} | {ph['p99_ms']:.2f} | "
                             f"{fmt_counts(ph.get('by_status'))} | {fmt_counts(ph.get('by_source'))} |")
            fives = sum(v for ph in r["phases"].values() for k, v in (ph.get("by_status") or {}).items() if k.startswith("5"))
            lines += ["", f"5xx responses over all phases: {fives}.", ""]
        if r.get("mode") == "build":
            lines += ["### Cache build", "", f"`{r['build_command']}` for a seeded sample of {r['users']:,} of the "
                      f"{r['all_users']:,} users: {r['seconds']} s wall, {r['decode_seconds']} s of it decoding (after the "
                      f"model loaded). At that rate every user takes **{r['all_users_seconds_at_this_rate'] / 60:,.1f} min** "
                      "(measured on a sample: the full build takes longer than this run's budget on this machine).", ""]
    return lines


def markdown(rows: list[dict], earlier: list[dict], command: str, info: dict, note: str) -> str:
    lines = ["# Serving load test", "", f"`{command}` on {describe(info)}. One `genrec serve` process (uvicorn) and wrk "
             "(1 thread) on the same machine, loopback. Target for cache hits: p99 under 5 ms at 1,000 requests/s or more, "
             "no errors.", "", *section(rows)]
    if note:
        lines += [note, ""]
    if earlier:
        lines += ["## Earlier runs", ""]
        for cmd in dict.fromkeys(r["command"] for r in earlier):
            rs = [r for r in earlier if r["command"] == cmd]
            lines += [f"`{cmd}` on {describe(rs[0]['machine'])}.", "", *section(rs)]
            if rs[0].get("note"):
                lines += [rs[0]["note"], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific", help="run folder with data/ and index/")
    ap.add_argument("--model", type=Path, default=None, help="trained model for the miss and build modes (default RUN/model)")
    ap.add_argument("--modes", nargs="+", default=["hit", "miss", "fault"], choices=["hit", "miss", "fault"])
    ap.add_argument("--seconds", type=int, default=60, help="wrk seconds of each cache-hit run")
    ap.add_argument("--miss-seconds", type=int, default=60, help="wrk seconds of each cache-miss run")
    ap.add_argument("--miss-users", type=int, default=500, help="users held out of the cache for the miss runs")
    ap.add_argument("--fault-seconds", type=int, default=10, help="wrk seconds of each phase of the fault run")
    ap.add_argument("--build-sample", type=int, default=0, help="also time `genrec cache build` of this many users")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3, help="seconds of load before the measured run")
    ap.add_argument("--stores", nargs="+", default=["sqlite", "redis"], help="stores of the cache-hit runs")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    model = args.model or args.run / "model"
    redis_needed = "fault" in args.modes or ("hit" in args.modes and "redis" in args.stores)
    for need in ("wrk", *(["redis-server"] if redis_needed else [])):
        if shutil.which(need) is None:
            sys.exit(f"{need} is not installed (`make setup` installs it with apt-get)")
    if not (args.run / "index" / "item_ids.json").is_file():
        sys.exit(f"{args.run}: expected a run folder with data/ and index/ (e.g. `genrec train --config configs/scientific.yaml`)")
    if ("miss" in args.modes or args.build_sample) and not (model / "train_config.json").is_file():
        sys.exit(f"{model}: expected a trained model folder for the miss and build modes (--model)")
    tmp = Path(tempfile.mkdtemp())
    redis = None
    rows = []
    try:
        (tmp / "users.lua").write_text(LUA)
        (tmp / "counted.lua").write_text(LUA_COUNTED)
        for store in args.stores if "hit" in args.modes else []:
            if store == "sqlite":
                url = str(tmp / "cache.db")
            else:
                port = free_port()
                redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no"], stdout=subprocess.DEVNULL)
                time.sleep(0.5)
                url = f"redis://127.0.0.1:{port}/0"
            users = fill(url, args.run)
            (tmp / "users.txt").write_text("\n".join(users) + "\n")
            row = serve_and_load(store, url, args.run, args, tmp / "users.txt")
            row["users"] = len(users)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        if "miss" in args.modes:
            rows += miss_rows(args.run, model, args, tmp)
        if "fault" in args.modes:
            rows.append(fault_rows(args.run, args, tmp))
        if args.build_sample:
            rows.append(build_sample(args.run, model, args.build_sample, tmp))
    finally:
        if redis is not None:
            redis.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    argv = sys.argv[1:]
    if "--out" in argv:  # where the results went is not part of what was measured
        del argv[argv.index("--out") : argv.index("--out") + 2]
    command = " ".join(["python benchmarks/serve_load.py", *(f"'{a}'" if " " in a else a for a in argv)])
    old = args.out / "serve_load.json"
    earlier = [r for r in (json.loads(old.read_text()) if old.is_file() else []) if r.get("command") != command]
    rows = [{**r, "machine": info, "command": command, "note": args.note} for r in rows]
    (args.out / "serve_load.json").write_text(json.dumps(earlier + rows, indent=2) + "\n")
    text = markdown(rows, earlier, command, info, args.note)
    (args.out / "serve_load.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
