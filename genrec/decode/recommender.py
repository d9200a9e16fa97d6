"""The fine-tuned LLM as a recommender: sequential prompt -> constrained beam search -> items.

It has ``rank(histories, users, k)``, so it goes through the same evaluator as every baseline,
and ``recommend(history, k, query=None)`` over the dataset's own item ids: with a request in words
when the model was trained with the ``seq_query`` task (its corpus meta lists the tasks). ``save_pretrained(folder)`` writes
one self-contained folder (model settings and weights, corpus meta, decoding settings and the
index with its item ids, no pickle) that ``from_pretrained(folder)`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genrec.decode.beam import BeamResult, Decoder, TrieTensors, rank_prompts
from genrec.errors import DataError, GenrecError
from genrec.index.base import ItemIndex

ITEM_IDS_FILE = "item_ids.json"  #: beside an index's files: the dataset's item id of each item index
DECODING_FILE = "recommender.json"  #: in a save_pretrained folder: the decoding settings
POPULARITY_FILE = "popularity.npy"  #: in a save_pretrained folder: the training popularity, if ranked with it
INDEX_SUBDIR = "index"  #: in a save_pretrained folder: the index (ItemIndex.save) and its item ids


class GenerativeRecommender:
    def __init__(self, lm, tokenizer, index: ItemIndex, beams: int = 20, batch_users: int = 8, max_history: int = 20,
                 cold_from: int | None = None, layout: str = "per_prefix", prompt: str = "chat",
                 pop_alpha: float = 0.0, popularity: np.ndarray | None = None, exclude_history: bool = False,
                 item_ids: list | None = None, precision: str | None = None, query_max_chars: int | None = None):
        """``cold_from``: items from this index on were added after training (their unseen last
        codes are scored by their trained siblings; see :func:`genrec.decode.beam._backoff`; on an
        id-level index their own tokens have no model row: without ``cold_from`` they score -inf and
        never come out).
        ``layout`` and ``prompt``: the sequential layout and prompt form ('chat', 'plain' or 'codes') the
        model was trained on, which fix the prompt (see :meth:`genrec.llm.encode.PromptFormat.seq_prompt`).
        ``pop_alpha`` with ``popularity`` (training interactions per item; items past its end count
        0): rank by the model's log-probability minus ``pop_alpha`` times the item's log share of
        popularity + 1 (see :func:`genrec.decode.beam.beam_search`). ``exclude_history``: a user's
        history items never come out (they take no beam slot), as the evaluator's masking wants.
        ``item_ids``: the dataset's id of each item index (what :meth:`recommend` takes and gives).
        ``precision``: the decoding arithmetic (see :func:`inference_precision`); None: the dtype the
        model computes in (its training ``dtype``, ``auto`` by default). ``query_max_chars``: set when
        the model was trained with the ``seq_query`` task (the length its requests were cut to, which
        a request is cut to as well); None: it takes no request (:meth:`load` reads it from the
        model folder's ``corpus_meta.json``)."""
        from genrec.llm.encode import PromptFormat

        self.lm = lm.eval()
        self.fmt = PromptFormat(tokenizer, index, prompt)
        self.index = index
        self.beams, self.batch_users, self.max_history, self.layout = beams, batch_users, max_history, layout
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.precision, self.dtype, body = inference_precision(lm, precision)
        self.decoder = Decoder.from_codelm(lm, pad, body)
        cold = range(cold_from, index.n_items) if cold_from is not None else None
        weight = None
        if popularity is not None:
            weight = np.ones(index.n_items)
            weight[: len(popularity)] += np.asarray(popularity, dtype=np.float64)[: index.n_items]
        elif pop_alpha:
            raise ValueError("pop_alpha needs the items' training popularity")
        self.pop_alpha, self.exclude_history = pop_alpha, exclude_history
        self.cold_from, self.prompt = cold_from, prompt
        self.popularity = None if popularity is None else np.asarray(popularity)
        if item_ids is not None and len(item_ids) != index.n_items:
            raise GenrecError(f"{len(item_ids)} item ids for an index of {index.n_items} items")
        self.item_ids = None if item_ids is None else list(item_ids)
        self.query_max_chars = query_max_chars
        self._positions: dict | None = None
        self.model_dir: Path | None = None  # the folder the weights came from (load), which save_pretrained copies
        self.trie = TrieTensors.of(index.trie(self.fmt.items), self.decoder.device, cold, weight)
        # items added to an id-level index after training: their own token has no model row to read
        self.unreadable = {i for i, toks in enumerate(self.fmt.items) if max(toks) >= len(tokenizer)}

    @property
    def device(self):
        """The device the model runs on."""
        return self.decoder.device

    @classmethod
    def load(cls, model_dir: str | Path, index: str | Path | ItemIndex, device: str = "auto", **kw) -> GenerativeRecommender:
        """A model folder from the train stage, or a checkpoint folder of an unfinished one (its
        latest weights), with the index it was trained on (a folder, or the index itself, e.g.
        extended with items added after training). An index folder's ``item_ids.json`` (written by
        `genrec index build`) gives the item ids :meth:`recommend` works with, unless ``item_ids`` is given."""
        from genrec.device import pick_device
        from genrec.llm.config import LLMTrainConfig
        from genrec.llm.files import has_trained_weights, load_trained_weights
        from genrec.llm.train import build_model

        model_dir = Path(model_dir)
        cfg_file = model_dir / "train_config.json"
        if not cfg_file.is_file() or not has_trained_weights(model_dir):
            raise DataError(model_dir, None, "a trained model folder (train_config.json, trainable.safetensors) from "
                                             "`genrec train`, or one of its checkpoint folders")
        weights = load_trained_weights(model_dir)
        raw = json.loads(cfg_file.read_text())
        backbone = raw.pop("backbone", "default")
        raw.pop("new_tokens", None)
        layout = raw.pop("layout", None) or _corpus_layout(model_dir)
        prompt = raw.pop("prompt", "chat")
        kw.setdefault("query_max_chars", query_capacity(model_dir))
        cfg = LLMTrainConfig.model_validate(raw)
        if not isinstance(index, ItemIndex):
            if kw.get("item_ids") is None and (Path(index) / ITEM_IDS_FILE).is_file():
                kw["item_ids"] = json.loads((Path(index) / ITEM_IDS_FILE).read_text())
            index = ItemIndex.load(index)
        dev = pick_device(device)
        lm, tok = build_model(cfg, backbone, list(index.new_tokens), dev)
        lm.load_trainable(weights, model_dir)
        rec = cls(lm.merge_for_inference(), tok, index, **{"layout": layout, "prompt": prompt, **kw})
        rec.model_dir = model_dir
        return rec

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "auto", **kw) -> GenerativeRecommender:
        """A folder written by :meth:`save_pretrained`: the model, its index (subfolder ``index``)
        with the item ids, and the decoding settings it was saved with (``kw`` overrides them:
        ``beams``, ``batch_users``, ``max_history``, ``exclude_history``, ``pop_alpha``, ...)."""
        folder = Path(folder)
        if not (folder / INDEX_SUBDIR / "index.json").is_file():
            raise DataError(folder, None, "a folder written by GenerativeRecommender.save_pretrained (model files and "
                                          f"an {INDEX_SUBDIR}/ subfolder)")
        settings = json.loads((folder / DECODING_FILE).read_text()) if (folder / DECODING_FILE).is_file() else {}
        if (folder / POPULARITY_FILE).is_file():
            settings["popularity"] = np.load(folder / POPULARITY_FILE, allow_pickle=False)
        return cls.load(folder, folder / INDEX_SUBDIR, device=device, **{**settings, **kw})

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write everything :meth:`from_pretrained` needs into ``folder``: ``train_config.json``
        (settings, backbone reference, layout and prompt), ``trainable.safetensors`` (the trained
        weights), ``corpus_meta.json``, ``recommender.json`` (decoding settings; with
        ``popularity.npy`` if any) and ``index/`` (``ItemIndex.save`` plus ``item_ids.json``).
        Needs a recommender made by :meth:`load` or :meth:`from_pretrained` (the weights are those
        of its model folder, not the merged inference model) with item ids. Returns ``folder``."""
        from genrec.llm.files import TRAINABLE_FILE, load_trained_weights, save_trainable

        if self.model_dir is None:
            raise GenrecError("save_pretrained needs a recommender made by GenerativeRecommender.load or from_pretrained")
        if self.item_ids is None:
            raise GenrecError("save_pretrained needs the item ids: load with an index folder holding item_ids.json, "
                              "or pass item_ids=")
        # everything read before anything is written, so saving into the folder loaded from works
        weights = load_trained_weights(self.model_dir)
        config = json.loads((self.model_dir / "train_config.json").read_text())
        meta_file = self.model_dir / "corpus_meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        config.update(layout=self.layout, prompt=self.prompt)
        meta.update(layout=self.layout, prompt=self.prompt)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if folder.resolve() != self.model_dir.resolve() or not (folder / TRAINABLE_FILE).is_file():
            save_trainable(folder, weights)
        (folder / "train_config.json").write_text(json.dumps(config, indent=1))
        (folder / "corpus_meta.json").write_text(json.dumps(meta, indent=1))
        settings = {"beams": self.beams, "batch_users": self.batch_users, "max_history": self.max_history,
                    "cold_from": self.cold_from, "pop_alpha": self.pop_alpha, "exclude_history": self.exclude_history,
                    "precision": self.precision}
        (folder / DECODING_FILE).write_text(json.dumps(settings, indent=1))
        if self.popularity is not None:
            np.save(folder / POPULARITY_FILE, self.popularity, allow_pickle=False)
        else:
            (folder / POPULARITY_FILE).unlink(missing_ok=True)
        self.index.save(folder / INDEX_SUBDIR)
        ids = [i.item() if isinstance(i, np.generic) else i for i in self.item_ids]
        (folder / INDEX_SUBDIR / ITEM_IDS_FILE).write_text(json.dumps(ids, ensure_ascii=False))
        return folder

    def item_positions(self, ids: list) -> np.ndarray:
        """The item indices of the dataset's item ids; an unknown id raises GenrecError naming it."""
        if self.item_ids is None:
            raise GenrecError("this recommender has no item ids: load it with an index folder holding item_ids.json, "
                              "from a save_pretrained folder, or pass item_ids=")
        if self._positions is None:
            self._positions = {i: k for k, i in enumerate(self.item_ids)}
        out = []
        for i in ids:
            k = self._positions.get(i)
            if k is None and not isinstance(i, str):
                k = self._positions.get(str(i))  # ids stored as strings (item_ids.json), asked for as numbers
            if k is None:
                raise GenrecError(f"unknown item id {i!r}: not in the index's {len(self.item_ids)} items")
            out.append(k)
        return np.asarray(out, dtype=np.int64)

    def recommend(self, history: list, k: int = 10, query: str | None = None) -> list[tuple[object, float]]:
        """The top ``k`` items after ``history`` (the dataset's item ids, oldest first; may be empty)
        as (item id, log-probability) pairs, best first; history items are left out if
        ``exclude_history``. ``query``: a request in words ("a quiet mechanical keyboard"), which the
        items are decoded conditioned on too (a model trained with the ``seq_query`` task only; with
        an empty history: a cold user)."""
        return self.recommend_batch([history], k, None if query is None else [query])[0]

    def recommend_batch(self, histories: list[list], k: int = 10,
                        queries: list[str | None] | None = None) -> list[list[tuple[object, float]]]:
        """:meth:`recommend` for each history (and its request in ``queries``, None for none),
        decoded ``batch_users`` at a time. Beam search keeps at least ``k`` beams (``max(beams,
        k)``), so a list is shorter than ``k`` only when fewer items are left to recommend."""
        hist = [self.item_positions(h) for h in histories]
        if not hist:
            return []
        res = self.rank_scored(hist, k, max(self.beams, k), queries)
        return [[(self.item_ids[int(i)], float(s)) for i, s in zip(items, scores, strict=True) if i >= 0]
                for items, scores in zip(res.items, res.scores, strict=True)]

    def clean_queries(self, queries: list[str | None] | None, n: int) -> list[str | None]:
        """``queries`` as the model reads them (:func:`genrec.llm.tasks.clean_query`), one per history
        (None: no request). Raises GenrecError for a model trained without the ``seq_query`` task, a
        request that is not a string or is blank, or a count other than ``n``."""
        from genrec.llm.tasks import clean_query

        if queries is None:
            return [None] * n
        if len(queries) != n:
            raise GenrecError(f"{len(queries)} queries for {n} histories: one per history (None for none)")
        if any(q is not None for q in queries) and self.query_max_chars is None:
            where = f" ({self.model_dir})" if self.model_dir is not None else ""
            raise GenrecError(f"this model{where} was not trained to take a request in words: its corpus has no "
                              "seq_query task. Retrain with tasks.tasks including seq_query, or ask without query")
        out = []
        for q in queries:
            if q is not None and not isinstance(q, str):
                raise GenrecError(f"query {q!r}: expected a string")
            c = None if q is None else clean_query(q, self.query_max_chars)
            if q is not None and not c:
                raise GenrecError("query: a blank request (leave it out to recommend from the history alone)")
            out.append(c)
        return out

    def prompts(self, histories: list[np.ndarray], queries: list[str | None] | None = None) -> list[list[int]]:
        """Each history's prompt: the sequential task's, or with a request (``queries``) the
        ``seq_query`` task's (:meth:`genrec.llm.encode.PromptFormat.query_prompt`)."""
        queries = self.clean_queries(queries, len(histories))
        for h in histories if self.unreadable else []:
            bad = [int(i) for i in h if int(i) in self.unreadable]
            if bad:
                name = self.item_ids[bad[0]] if self.item_ids is not None else bad[0]
                raise GenrecError(f"item {name!r} was added after training to an id-level index: the model has no row "
                                  "for its own token, so it cannot read it in a history (it can recommend it). Leave "
                                  "it out of the history, or retrain with it")
        return [self.fmt.seq_prompt([int(i) for i in h], 0, self.max_history, self.layout) if q is None
                else self.fmt.query_prompt([int(i) for i in h], q, self.max_history)
                for h, q in zip(histories, queries, strict=True)]

    def rank_scored(self, histories: list[np.ndarray], k: int, beams: int | None = None,
                    queries: list[str | None] | None = None) -> BeamResult:
        """Top-``k`` items per history (and request, see :meth:`prompts`) with their
        log-probabilities, best first (-1 / -inf pad a list with fewer than k items). ``beams``:
        instead of ``self.beams``."""
        from genrec.llm.train import autocast

        prompts = self.prompts(histories, queries)
        with autocast(self.decoder.device, self.dtype):
            return rank_prompts(self.decoder, prompts, self.trie, beams or self.beams, k, self.batch_users,
                                self.pop_alpha, histories if self.exclude_history else None)

    def rank(self, histories: list[np.ndarray], users: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` items per history, best first (-1 pads a list with fewer than k items)."""
        return self.rank_scored(histories, k).items

    def score_items(self, histories: list[np.ndarray], items: np.ndarray,
                    queries: list[str | None] | None = None) -> np.ndarray:
        """Log-probability of each given item's codes after each history's prompt (and request, see
        :meth:`prompts`), [U, K] for ``items`` [U, K] (-1 pads: -inf); the score beam search ranks
        by, except for items added after training, which score by the model alone (no cold-item
        back-off: -inf for an item added to an id-level index, whose own token has no model row).
        ``batch_users`` users at a time, grouped by prompt length."""
        from genrec.decode.beam import score_sequences
        from genrec.llm.train import autocast

        items = np.asarray(items, dtype=np.int64)
        prompts = self.prompts(histories, queries)
        width = max(len(t) for t in self.fmt.items)
        seqs = np.full((*items.shape, width), -1, dtype=np.int64)
        for (u, j), i in np.ndenumerate(items):
            if i >= 0:
                toks = self.fmt.items[i]
                seqs[u, j, : len(toks)] = toks
        out = np.full(items.shape, -np.inf)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        with autocast(self.decoder.device, self.dtype):
            for lo in range(0, len(order), self.batch_users):
                rows = order[lo : lo + self.batch_users]
                out[rows] = score_sequences(self.decoder, [prompts[r] for r in rows], seqs[rows], self.trie)
        return np.where(items >= 0, out, -np.inf)


PRECISIONS = ("auto", "fp32", "bf16", "int8")


def check_precision(precision: str | None, name: str = "precision") -> None:
    """Refuse a precision :func:`inference_precision` does not know (``name``: what the user set)."""
    if precision is not None and precision not in PRECISIONS:
        raise GenrecError(f"{name} {precision!r}: expected one of {', '.join(PRECISIONS)}")


def inference_precision(lm, precision: str | None = None):
    """(precision, compute dtype, decoder body) for decoding ``lm`` in ``precision``:

    - None: the dtype ``lm`` computes in (``lm.compute_dtype``, from its training ``dtype``);
    - ``auto``: bf16 where the hardware computes it natively (CUDA with bf16, a CPU with
      AVX512-BF16 or AMX; :func:`genrec.llm.backbone.pick_dtype`), fp32 elsewhere;
    - ``fp32``; ``bf16``, which falls back to fp32 (with a warning) where ``auto`` would not pick
      it (a CPU without native bf16, where it would be emulated and slower; a GPU without bf16);
    - ``int8``: the decoder body's linear layers quantised dynamically to int8 weights
      (``torch.ao.quantization.quantize_dynamic``, a copy: ``lm`` is left alone), fp32 elsewhere; CPU only.

    Under bf16 the matmuls run under autocast; the logits come back as fp32, and every score is summed in fp32."""
    import warnings

    import torch

    from genrec.llm.backbone import pick_dtype

    device = next(lm.parameters()).device
    if precision is None:
        return None, getattr(lm, "compute_dtype", torch.float32), None
    check_precision(precision)
    if precision == "int8":
        if device.type != "cpu":
            raise GenrecError(f"precision int8 (dynamic quantisation) runs on the CPU only, not on {device}")
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch announces the move of its quantisation to torchao
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
            body = quantize_dynamic(lm.body, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
        return precision, torch.float32, body
    if precision == "bf16" and pick_dtype(device, "auto") != torch.bfloat16:
        warnings.warn(f"precision bf16: no native bf16 on this {device.type} (a CPU needs AVX512-BF16 or AMX); "
                      "decoding in fp32", stacklevel=3)
        return precision, torch.float32, None
    return precision, pick_dtype(device, precision), None


def query_capacity(model_dir: Path) -> int | None:
    """The request length (characters) a model folder's corpus cut its ``seq_query`` requests to, or
    None when it was trained without that task (or before corpora listed their tasks)."""
    meta = Path(model_dir) / "corpus_meta.json"
    meta = json.loads(meta.read_text()) if meta.is_file() else {}
    return int(meta.get("query_max_chars", 300)) if "seq_query" in meta.get("tasks", []) else None


def _corpus_layout(model_dir: Path) -> str:
    """The layout of a model folder written before train_config.json recorded it: its corpus
    meta, else the per-prefix default."""
    meta = model_dir / "corpus_meta.json"
    return json.loads(meta.read_text()).get("layout", "per_prefix") if meta.is_file() else "per_prefix"


class PrecomputedRanker:
    """Ranked lists computed elsewhere (e.g. by every rank of a launch), looked up by user."""

    def __init__(self, lists: dict[int, list[int]]):
        self.lists = lists

    def rank(self, histories, users: np.ndarray, k: int) -> list[list[int]]:
        return [self.lists[int(u)][:k] for u in users]


def evaluate_generative(rec: GenerativeRecommender, evaluator, stage: str = "test", users: np.ndarray | None = None,
                        dump_path: Path | None = None, resume_dir: Path | None = None, key: dict | None = None,
                        chunk_users: int = 256):
    """Evaluate through the shared evaluator. Under a multi-process launch every rank decodes a
    shard of the users, the lists are gathered, and rank 0 evaluates them (same result as one
    process); the other ranks return None.

    With ``resume_dir`` the decoded lists are written there ``chunk_users`` users at a time, so a
    killed evaluation resumes where it stopped (decoding is deterministic: the result is the one
    an uninterrupted run gives). ``key`` names what was decoded (model, index, beams, the user
    sample, ...); lists kept under another key are discarded. ``seconds`` is the wall time of the decoding over every
    session plus this session's evaluation."""
    import dataclasses
    import time

    from genrec.device import launch_rank

    if resume_dir is None and launch_rank()[1] == 1:
        return evaluator.evaluate(rec, stage=stage, dump_path=dump_path, users=users)
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    state = PartialState(cpu=rec.decoder.device.type == "cpu")
    start = time.perf_counter()
    split = evaluator.split(stage)
    todo = np.arange(evaluator.dataset.n_users) if users is None else np.asarray(users)
    todo = todo[split.targets[todo] >= 0]
    k = max(evaluator.ks)
    lists, spent = {}, 0.0
    if resume_dir is not None:
        key = _partial_key(key or {}, stage, k)
        if state.is_main_process:
            partial_open(resume_dir, key)
        state.wait_for_everyone()
        lists, spent = partial_read(resume_dir)
        wanted = set(todo.tolist())
        lists = {u: x for u, x in lists.items() if u in wanted}
    left = np.array([u for u in todo if int(u) not in lists], dtype=np.int64)
    mine = left[state.process_index :: state.num_processes]
    step = chunk_users if resume_dir is not None else max(1, len(mine))
    bar = tqdm(total=len(todo), initial=len(lists), unit="user", dynamic_ncols=True,
               disable=not (evaluator.progress and state.is_main_process and resume_dir is not None))
    decoded = []
    for a in range(0, len(mine), step):
        part = mine[a : a + step]
        t = time.perf_counter()
        ranked = rec.rank([split.histories[u] for u in part], part, k)
        rows = [(int(u), [int(i) for i in row if i >= 0]) for u, row in zip(part, ranked, strict=True)]
        decoded += rows
        if resume_dir is not None:
            partial_append(resume_dir, state.process_index, rows, time.perf_counter() - t)
        bar.update(len(part) * state.num_processes)
    bar.close()
    gathered = gather_object(decoded)
    if not state.is_main_process:
        return None
    lists.update(dict(gathered))
    res = evaluator.evaluate(PrecomputedRanker(lists), stage=stage, dump_path=dump_path, users=users)
    return dataclasses.replace(res, seconds=spent + time.perf_counter() - start)


def _partial_key(key: dict, stage: str, k: int) -> dict:
    """What a folder of decoded lists holds, as JSON would give it back. The callers' keys name the
    user sample too, so the seconds a folder records are those of this evaluation's users only;
    under a key without it, lists of users not asked for are skipped on reading."""
    return json.loads(json.dumps({**key, "stage": stage, "k": k}, sort_keys=True))


def _holds(folder: Path, key: dict) -> bool:
    kf = Path(folder) / "key.json"
    try:
        return kf.is_file() and json.loads(kf.read_text()) == key
    except json.JSONDecodeError:
        return False


def partial_open(folder: Path, key: dict) -> None:
    """Make ``folder`` hold decoded lists of ``key``: kept if it already does, emptied otherwise."""
    import shutil

    if _holds(folder, key):
        return
    shutil.rmtree(folder, ignore_errors=True)
    Path(folder).mkdir(parents=True)
    (Path(folder) / "key.json").write_text(json.dumps(key, sort_keys=True))


def partial_seconds(folder: Path, key: dict, stage: str, k: int) -> float:
    """Decoding seconds already spent on the lists ``folder`` holds for this evaluation (0 if none)."""
    return partial_read(folder)[1] if _holds(folder, _partial_key(key, stage, k)) else 0.0


def partial_append(folder: Path, rank: int, rows: list[tuple[int, list[int]]], seconds: float) -> None:
    """One chunk of decoded lists, appended as one JSON line (a line cut short by a kill is ignored)."""
    import os

    line = json.dumps({"users": [u for u, _ in rows], "items": [x for _, x in rows], "seconds": round(seconds, 3)})
    with open(Path(folder) / f"part-{rank}.jsonl", "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def partial_read(folder: Path) -> tuple[dict[int, list[int]], float]:
    """(user -> decoded list, decoding seconds) of every complete chunk in ``folder``, any rank's."""
    lists, seconds = {}, 0.0
    for p in sorted(Path(folder).glob("part-*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                chunk = json.loads(line)
            except json.JSONDecodeError:
                continue  # the chunk being written when the run was killed
            lists.update(zip(chunk["users"], chunk["items"], strict=True))
            seconds += chunk["seconds"]
    return lists, seconds
