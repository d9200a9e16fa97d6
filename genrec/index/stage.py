"""What the index stage (:func:`genrec.stages.stage_index`, on top) needs from the index layer: which
indexers read which embeddings, the checks of a request, loading the embeddings, and assigning
codes to new items from a built index without retraining.

The LLM sits above the index, so its work comes in as data: the text stage's folder
(:func:`genrec.stages.stage_text`), and for new items a function that embeds their text."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.artifacts import fingerprint, read_manifest
from genrec.data.dataset import Dataset
from genrec.errors import DataError, GenrecError
from genrec.index.base import ItemIndex, codes_to_strings

#: indexers that read the items' LLM embeddings (alignment: LLM alignment and text encoding of new items)
NEEDS_LLM = {"alignment", "rqvae", "semid"}
#: indexers that read behaviour embeddings from the cf stage
NEEDS_BEHAVIOUR = {"alignment", "rqvae"}
EMBEDDINGS_FILE = "item_embeddings.npy"
#: indexers whose codebooks give new items codes (:func:`encode_new_item`)
ENCODES_NEW_ITEMS = {"alignment", "rqvae", "semid"}


def needs_behaviour(method: str, config: dict | None = None) -> bool:
    """Whether the indexer ``method`` with ``config`` reads behaviour embeddings (``NEEDS_BEHAVIOUR``, and
    SemID when it quantises them: RQ-KMeans on behaviour)."""
    return method in NEEDS_BEHAVIOUR or (method == "semid" and (config or {}).get("input") == "behaviour")


def load_embeddings(path: str | Path, n_items: int) -> np.ndarray:
    """Behaviour embeddings from a cf artifact folder or a .npy file, checked against the catalogue."""
    path = Path(path)
    f = path / EMBEDDINGS_FILE if path.is_dir() else path
    if not f.is_file():
        raise DataError(f, None, f"expected behaviour embeddings ({EMBEDDINGS_FILE}); run `genrec cf train` first")
    emb = np.load(f, allow_pickle=False)
    if emb.ndim != 2 or emb.shape[0] != n_items:
        raise DataError(f, None, f"expected an array [n_items={n_items}, dim], found shape {emb.shape}")
    return emb.astype(np.float32)


def check_request(method: str, data: Path, embeddings: Path | None = None, config: dict | None = None) -> None:
    """Refuse what the index stage would fail on (the indexer, its settings, the behaviour
    embeddings) before any work, the text stage's backbone loading before it included."""
    from genrec.index.registry import make_indexer

    if needs_behaviour(method, config) and embeddings is None:
        raise GenrecError(f"the {method} indexer needs behaviour embeddings: pass --embeddings (a `genrec cf train` output)")
    make_indexer(method, config)
    if embeddings is not None:
        load_embeddings(embeddings, Dataset.load(data).n_items)


def text_encoder(text: Path | None, data: Path) -> tuple[str, int | None]:
    """The backbone and the depth (``layers``; None: the input-layer mean) of the text stage's folder
    ``text``, after checking it embeds ``data``'s items."""
    made = read_manifest(text) if text is not None else None
    if made is None or made.get("stage") != "text":
        raise GenrecError(f"the index needs the items' text embeddings: {text} is no text stage folder "
                          "(genrec.stages.stage_text)")
    if made["inputs"]["data"]["fingerprint"] != fingerprint(data):
        raise DataError(text, None, f"text embeddings of another dataset than {data}: rebuild them")
    return made["config"]["backbone"], made["config"].get("layers")


def read_new_items(path: Path) -> list[dict]:
    """New items as JSON lines: {"item_id", "title", "description", and one of "embedding" (a
    behaviour vector), "neighbours" (ids of co-interacted catalogue items) or text alone}."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, f"line {n}", f"expected one JSON object per line ({e.msg})") from None
                if not isinstance(obj, dict) or "item_id" not in obj:
                    raise DataError(path, f"line {n}", 'expected an object with "item_id"')
                obj["_line"] = n
                rows.append(obj)
    except OSError as e:
        raise DataError(path, None, f"cannot read ({e.strerror})") from None
    if not rows:
        raise DataError(path, None, "expected at least one new item")
    return rows


def load_indexer(index_dir: Path):
    """The fitted indexer of a built index folder (it gives new items their codes)."""
    from genrec.index.registry import INDEXERS

    manifest = read_manifest(index_dir)
    if manifest is None:
        raise DataError(index_dir, None, "expected a built index (manifest.json missing)")
    method = manifest["config"]["method"]
    if method not in ENCODES_NEW_ITEMS:
        raise GenrecError(f"the {method} index cannot give new items codes: build the index with "
                          f"{', '.join(sorted(ENCODES_NEW_ITEMS))} to add items without retraining")
    if not (index_dir / "indexer").is_dir():
        raise DataError(index_dir / "indexer", None, "expected the fitted indexer of the built index (rebuild the index)")
    indexer = INDEXERS[method].load(index_dir / "indexer")
    return indexer, manifest


def encode_new_item(indexer, row: dict, pos: dict[str, int], taken: set[tuple[int, ...]],
                    text_embed: Callable[[pd.DataFrame], np.ndarray],
                    item_code: int | None = None) -> tuple[tuple[int, ...], str]:
    """Codes of one new item, unique against ``taken``, and what they came from: its behaviour
    ``embedding``, else its co-interacted catalogue items (``neighbours``, ids), else its text
    (``text_embed`` maps a title/description frame to LLM embeddings). Raises ValueError with
    what was expected.

    ``item_code``: the index is id-level (:func:`genrec.index.base.with_id_level`) and this is the
    item's own last code, its position among the items (see :meth:`ItemIndex.extended`); the
    codebooks then give its cluster codes, the nearest ones as for the catalogue (the own code makes
    the tuple unique: ``taken`` is not consulted)."""
    if item_code is not None:
        codes, source = encode_new_item(indexer, row, pos, set(), text_embed)
        return (*codes, int(item_code)), source

    def text_embedding() -> np.ndarray | None:
        title, desc = str(row.get("title") or ""), str(row.get("description") or "")
        return text_embed(pd.DataFrame([{"title": title, "description": desc}])) if title else None

    vec = None
    if row.get("embedding") is not None:
        with np.errstate(over="ignore"):  # a number past float32's range becomes inf, refused below
            vec = np.asarray(row["embedding"], dtype=np.float32)
        if vec.ndim != 1 or not np.isfinite(vec).all():
            raise ValueError('"embedding" must be a flat list of finite numbers within float32 range (|x| < 3.4e38)')
    kind = getattr(getattr(indexer, "cfg", None), "input", None)
    if kind is not None:  # RQ-VAE, SemID: one kind of item embedding goes in
        x = vec if kind == "behaviour" else text_embedding()
        if x is None:
            raise ValueError(f"this index encodes new items from their {kind} embedding: give "
                             + ('"embedding"' if kind == "behaviour" else 'a "title"'))
        return tuple(int(c) for c in indexer.encode(np.asarray(x, np.float32).reshape(1, -1), taken)[0]), kind
    if vec is not None:
        if indexer.mean is not None and indexer.mean.numel() != vec.size:
            raise ValueError(f'"embedding" must have {indexer.mean.numel()} numbers, found {vec.size}')
        codes, source = indexer.encode(behaviour=vec[None], taken=taken), "behaviour"
    elif row.get("neighbours"):
        nb = row["neighbours"]
        missing = [n for n in nb if str(n) not in pos] if isinstance(nb, list) else [nb]
        if missing:
            raise ValueError(f"neighbour {missing[0]!r} is not a catalogue item")
        codes, source = indexer.encode(neighbours=[[pos[str(n)] for n in nb]], taken=taken), "neighbours"
    else:
        llm = text_embedding()
        if llm is None:
            raise ValueError('expected "embedding", "neighbours" or a "title"')
        codes, source = indexer.encode(llm=llm, taken=taken), "text"
    return tuple(int(c) for c in codes[0]), source


def assign_new_items(index_dir: Path, new_items: Path,
                     embedder: Callable[[str | None, int | None], Callable[[pd.DataFrame], np.ndarray]]) -> list[dict]:
    """Codes for new items from a built index's codebooks, without retraining; returns one dict per
    item (item_id, codes, item_string, source). Items are encoded in file order, each unique
    against the catalogue and the items before it (on an id-level index by its own last code: the
    catalogue's size, then the next, ...). ``embedder(backbone, layers)``: a function of a
    title/description frame giving the LLM embeddings the index's text stage gave the catalogue
    (:class:`genrec.llm.backbone.TextEmbedder`), made when the first item needs it."""
    indexer, manifest = load_indexer(index_dir)
    index = ItemIndex.load(index_dir)
    made: list = []

    def embed(items: pd.DataFrame) -> np.ndarray:
        if not made:
            made.append(embedder(manifest["config"].get("backbone"), manifest["config"].get("text_layers")))
        return made[0](items)

    ids = json.loads((index_dir / "item_ids.json").read_text())
    pos = {i: k for k, i in enumerate(ids)}
    taken = {tuple(r) for r in index.codes.tolist()}
    out = []
    for row in read_new_items(new_items):
        where = f"line {row['_line']}"
        if str(row["item_id"]) in pos:
            raise DataError(new_items, where, f"item {row['item_id']!r} is already in the catalogue")
        try:
            t, source = encode_new_item(indexer, row, pos, taken, embed, index.n_items + len(out) if index.id_level else None)
        except ValueError as e:
            raise DataError(new_items, where, str(e)) from None
        taken.add(t)
        out.append({"item_id": str(row["item_id"]), "codes": list(t), "item_string": codes_to_strings(np.array([t]))[0],
                    "source": source})
    return out
