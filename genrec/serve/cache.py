"""``genrec cache build``: every user's top-K through the batched constrained decoder, into a store.

Users are cut into fixed chunks; each chunk is decoded as its own batches and written with its
done marker in one transaction. A rerun of the same build (same model, index, data, added items
and settings: the same *version*) skips the chunks already written, so a build killed at any
point and rerun ends with exactly the cache an uninterrupted build writes. Under ``accelerate
launch`` rank r decodes chunks r, r + world, ...; rank 0 waits for all and switches the store to
the new version atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from genrec.artifacts import fingerprint
from genrec.errors import GenrecError
from genrec.serve.catalog import Catalog
from genrec.serve.store import CacheStore, encode_row


def cache_version(model_dir: Path, catalog: Catalog, users: Sequence[str], settings: dict) -> str:
    """A hash of everything the cache's content depends on."""
    blob = {
        "model": fingerprint(model_dir),
        "index": fingerprint(catalog.index_dir),
        "data": fingerprint(catalog.data_dir),
        "added": [(r["item_id"], r["codes"]) for r in catalog.added],
        "users": hashlib.sha256("\n".join(users).encode()).hexdigest(),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def load_decoder(model_dir: str | Path, catalog: Catalog, beams: int = 20, batch_users: int = 8, pop_alpha: float = 0.0,
                 device: str = "auto", precision: str | None = None):
    """The decoder a cache build ranks with, over the catalogue with its added items (their last
    codes backed off to their siblings'), the popularity adjustment, and the user's history left out
    on data without repeats, in ``precision`` (None: the model's training dtype). `genrec serve
    --decode` decodes cache misses with it too."""
    from genrec.decode.recommender import GenerativeRecommender

    return GenerativeRecommender.load(model_dir, catalog.extended_index(), device=device, beams=beams, precision=precision,
                                      batch_users=batch_users, cold_from=catalog.n_catalogue, pop_alpha=pop_alpha,
                                      popularity=catalog.ds.item_popularity(), exclude_history=not catalog.ds.has_repeats())


def build_cache(
    store: CacheStore,
    catalog: Catalog,
    model_dir: str | Path,
    users: Sequence[str] | None = None,
    k: int = 20,
    beams: int = 20,
    batch_users: int = 8,
    chunk_users: int = 64,
    device: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    pop_alpha: float = 0.0,
    precision: str | None = None,
) -> dict:
    """Build (or finish) the cache of ``users`` (default: every user of the dataset) and activate it.
    ``pop_alpha``: the popularity adjustment of the ranking (as the evaluate stage's, over the
    training popularity; added items count 0). ``precision``: the decoding arithmetic
    (:func:`genrec.decode.recommender.inference_precision`; None: the model's training dtype). Returns a summary: version, users, chunks decoded
    by this process, seconds."""
    from genrec.device import launch_rank

    rank, world = launch_rank()
    model_dir = Path(model_dir)
    catalog.refresh()
    users = list(catalog.ds.user_ids.tolist()) if users is None else [str(u) for u in users]
    unknown = [u for u in users if catalog.history(u) is None]
    if unknown:
        raise GenrecError(f"user {unknown[0]!r} is not in the dataset ({len(unknown)} unknown users)")
    if k > beams:
        raise GenrecError(f"--k {k} needs at least as many beams (--beams {beams})")
    settings = {"k": k, "beams": beams, "batch_users": batch_users, "chunk_users": chunk_users}
    if pop_alpha:  # absent at 0, so caches built before the setting keep their versions
        settings["pop_alpha"] = pop_alpha
    if precision is not None:  # likewise; another arithmetic gives other lists, so another version
        settings["precision"] = precision
    version = cache_version(model_dir, catalog, users, settings)
    active = store.active()
    if active is not None and active["version"] == version:
        echo(f"cache {store.url}: version {version} is up to date ({active['n_users']:,} users)")
        return {"version": version, "users": len(users), "decoded_chunks": 0, "seconds": 0.0, "skipped": True}
    chunks = [users[i : i + chunk_users] for i in range(0, len(users), chunk_users)]
    meta = {
        "model": str(model_dir), "model_version": fingerprint(model_dir)[:12], "n_users": len(users),
        "n_items": len(catalog.ids), "added_items": len(catalog.added), "n_chunks": len(chunks),
        "popular": catalog.popular(max(k, 100)), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **settings,
    }
    store.begin(version, meta)
    done = store.done_chunks(version)
    mine = [c for c in range(len(chunks)) if c % world == rank and c not in done]
    if rank == 0 and done:
        echo(f"cache {store.url}: resuming version {version}: {len(done)} of {len(chunks)} chunks already written")
    start, loaded = time.time(), 0.0
    if mine:
        from tqdm.auto import tqdm

        rec = load_decoder(model_dir, catalog, beams, batch_users, pop_alpha, device, precision)
        loaded = time.time() - start
        bar = tqdm(total=sum(len(chunks[c]) for c in mine), unit="user", desc=f"cache [rank {rank}]",
                   disable=not progress)
        for c in mine:
            res = rec.rank_scored([catalog.history(u) for u in chunks[c]], k)
            rows = []
            for u, items, scores in zip(chunks[c], res.items, res.scores, strict=True):
                ok = items >= 0
                rows.append((u, encode_row([catalog.ids[i] for i in items[ok]], scores[ok].tolist())))
            store.write_chunk(version, c, rows)
            bar.update(len(chunks[c]))
        bar.close()
    if world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    if rank == 0:
        missing = sorted(set(range(len(chunks))) - store.done_chunks(version))
        if missing:
            raise GenrecError(f"cache version {version}: chunks {missing[:5]} were not written; rerun to finish")
        store.activate(version)
        echo(f"cache {store.url}: version {version} active: {len(users):,} users, top-{k}, "
             f"{len(mine)} chunks decoded here in {time.time() - start:.3f}s (the model loaded in {loaded:.3f}s of it)")
    return {"version": version, "users": len(users), "decoded_chunks": len(mine),
            "seconds": round(time.time() - start, 3), "skipped": False}


def read_user_list(path: Path) -> list[str]:
    """User ids, one per line (blank lines ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise GenrecError(f"{path}: cannot read the user list ({e.strerror})") from None
    users = [ln.strip() for ln in lines if ln.strip()]
    if not users:
        raise GenrecError(f"{path}: expected user ids, one per line")
    return users

