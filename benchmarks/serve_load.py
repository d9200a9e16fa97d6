"""Load test of `genrec serve`: wrk against the running server on loopback, SQLite and Redis stores.

    .venv/bin/python benchmarks/serve_load.py [--run runs/scientific] [--seconds 60] [--connections 4]

For each store: fill a cache with a top-20 list for every user of the run's dataset, start
`genrec serve` (uvicorn, one process) on a free port, run `wrk --latency` for ``--seconds`` with
random known users (`GET /users/{id}/recommendations?k=10`), and read requests/s, p50/p99 latency
and errors (non-2xx responses and socket errors). The server and wrk share this machine's cores.

The cached lists are popularity lists without the user's own items, written through the same
store API `genrec cache build` uses: serving cost (one lookup, one JSON row, one response) does
not depend on which model wrote the rows, and decoding every user with the LLM takes hours here.
Writes benchmarks/results/serve_load.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(url: str, run: Path) -> list[str]:
    """Every user's top-20 popular items they have not interacted with, as one active cache version."""
    import numpy as np

    from genrec.serve.catalog import Catalog
    from genrec.serve.store import encode_row, open_store

    st = open_store(url)
    catalog = Catalog(run / "index", run / "data", st)
    popular = catalog.popular(200)
    pos = {i: k for k, i in enumerate(catalog.ids)}
    users = catalog.ds.user_ids.tolist()
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
    total = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)), "p50_ms": ms(pct["50"]),
            "p90_ms": ms(pct["90"]), "p99_ms": ms(pct["99"]), "requests": total, "errors": errors}


def serve_and_load(store: str, url: str, run: Path, args, users_file: Path) -> dict:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "genrec", "serve", "--index", str(run / "index"), "--data", str(run / "data"),
                               "--store", url, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not start: {server.stderr.read().decode()[-2000:]}")
        # warm-up, then the measured run
        wrk_env = {**os.environ, "GENREC_USERS": str(users_file)}
        lua = users_file.parent / "users.lua"
        subprocess.run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.warmup}s", "-s", str(lua), base], env=wrk_env,
                       capture_output=True, check=True)
        out = subprocess.run(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", str(lua), base],
                             env=wrk_env, capture_output=True, text=True, check=True).stdout
        row = {"store": store, **parse_wrk(out), "seconds": args.seconds, "connections": args.connections}
        print(out, file=sys.stderr)
        return row
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific", help="run folder with data/ and index/")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3, help="seconds of load before the measured run")
    ap.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    for need in ("wrk", *(["redis-server"] if "redis" in args.stores else [])):
        if shutil.which(need) is None:
            sys.exit(f"{need} is not installed (`make setup` installs it with apt-get)")
    if not (args.run / "index" / "item_ids.json").is_file():
        sys.exit(f"{args.run}: expected a run folder with data/ and index/ (e.g. `genrec train --config configs/scientific.yaml`)")
    tmp = Path(tempfile.mkdtemp())
    redis = None
    rows = []
    try:
        (tmp / "users.lua").write_text(LUA)
        for store in args.stores:
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
    finally:
        if redis is not None:
            redis.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": f"python benchmarks/serve_load.py --seconds {args.seconds} --connections {args.connections}"}
    # one row per store, each self-describing (machine, command, note)
    (args.out / "serve_load.json").write_text(json.dumps(
        [{**r, "machine": info, "command": result["command"], "note": args.note} for r in rows], indent=2) + "\n")
    lines = [
        "# Serving load test", "",
        f"`{result['command']}` on {describe(info)}. One `genrec serve` process (uvicorn) and wrk (1 thread, "
        f"{args.connections} connections) on the same machine, loopback, random known users, "
        "`GET /users/{id}/recommendations?k=10` served from the cache. Target: p99 under 5 ms at 1,000 requests/s or more, no errors.",
        "", "| store | users | requests/s | p50 ms | p90 ms | p99 ms | errors | seconds |", "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['store']} | {r['users']:,} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['errors']} | {r['seconds']} |")
    if len(rows) == 2:
        lines += ["", f"Redis / SQLite throughput ratio: {rows[1]['rps'] / rows[0]['rps']:.2f}"]
    if args.note:
        lines += ["", args.note]
    (args.out / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
