"""Fine-tune the backbone on the alignment-task corpus: one loop, read top to bottom.

Per optimizer step the loop takes ``world_size * grad_accum`` micro-batches from a batch list
that depends only on (seed, epoch); rank r runs micro-batches r, r + world, ... of the step. The
loss of every micro-batch is its summed target-token NLL divided by the target count of the
whole step (known in advance on every rank, no communication), times the world size (DDP
averages gradients). So 2 processes x accumulation A compute the same update as 1 process x
accumulation 2A, and the loss is a true per-target-token mean however the batches are cut.

Batches are length-grouped (``grouping="length"``): samples of similar length, as many as fit a
budget of padded tokens, so short samples are not padded to the longest of a random batch.
Samples with the same prompt (a user's negative-behaviour samples) are batched as one unit,
the prompt once and a branch per sample (:class:`Units`, ``share_prefixes``): the same losses,
fewer tokens.

A checkpoint (every ``save_every`` steps and at each epoch end) holds the trainable weights,
the optimizer, the step and every rank's RNG state: a killed run resumed from it takes the
same next step as an uninterrupted run (its files: :mod:`genrec.llm.files`). Runs unchanged under ``accelerate launch`` (DDP; FSDP
and DeepSpeed through an accelerate config on GPUs).
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from genrec.artifacts import swap_dir, write_json_atomic
from genrec.errors import GenrecError
from genrec.llm import files
from genrec.llm.config import LLMTrainConfig
from genrec.llm.corpus import Corpus

# ---------------------------------------------------------------------------------------- batches


def make_batches(lengths: np.ndarray, cfg: LLMTrainConfig, epoch: int, share: np.ndarray | None = None) -> list[np.ndarray]:
    """Micro-batches (arrays of sample rows) of one epoch; a function of (seed, epoch) only.
    ``share[r]``: the probability that row r takes part in this epoch (``cfg.task_fraction``), drawn
    from a stream of its own, so that rows always kept are ordered as without it."""
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(len(lengths))
    if share is not None and (share < 1).any():
        keep = np.random.default_rng([cfg.seed, epoch, 1]).random(len(lengths)) < share
        order = order[keep[order]]
    if cfg.grouping == "random":
        return [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    return length_batches(order, lengths, cfg.batch_size, cfg.batch_tokens, cfg.batch_size * 64, rng, longest_first=True)


def task_shares(corpus: Corpus, units: Units, fraction: dict[str, float]) -> np.ndarray | None:
    """Each unit's share of epochs (``cfg.task_fraction`` by the task of its samples), or None when
    every task takes all. Raises for a task the corpus does not have."""
    if not fraction:
        return None
    missing = sorted(set(fraction) - set(corpus.task_names))
    if missing:
        raise GenrecError(f"train.task_fraction names {', '.join(missing)}, which the corpus does not have "
                          f"(its tasks: {', '.join(corpus.task_names)})")
    by_task = np.array([fraction.get(name, 1.0) for name in corpus.task_names])
    return by_task[corpus.task[[int(g[0]) for g in units.groups]]]


def length_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, batch_tokens: int, chunk: int,
                   rng: np.random.Generator, longest_first: bool = False) -> list[np.ndarray]:
    """Batches of the rows in ``order``: each chunk of ``chunk`` rows sorted by length (longest
    first, or shortest), cut into batches of at most ``batch_size`` rows and ``batch_tokens``
    padded tokens; the batches in random order (``rng``)."""
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        rows = rows[np.argsort(-lengths[rows] if longest_first else lengths[rows], kind="stable")]
        cur: list[int] = []
        longest = 0
        for r in rows:
            n = int(lengths[r])
            if cur and (len(cur) + 1 > batch_size or max(longest, n) * (len(cur) + 1) > batch_tokens):
                batches.append(np.array(cur))
                cur, longest = [], 0
            cur.append(int(r))
            longest = max(longest, n)
        if cur:
            batches.append(np.array(cur))
    return [batches[i] for i in rng.permutation(len(batches))]


class Units:
    """What micro-batches are cut from: single samples, or groups of samples that share a prompt.

    Samples whose tokens before the first target token are identical (the negative-behaviour
    samples of one user, say) form one unit: the prompt once, then each sample's remainder as a
    branch that attends to the prompt and to itself only, at the positions it would have alone
    (:func:`collate_units`). Every target token then sees exactly the context it sees in its own
    sample, so the losses are the same and the prompt is computed once instead of once per
    sample. A group is split so that no unit is longer than ``max_tokens`` (or its longest
    sample). With ``share=False`` every sample is its own unit.
    """

    def __init__(self, corpus: Corpus, share: bool = True, max_tokens: int | None = None):
        lengths, targets = corpus.lengths, corpus.n_targets
        first = np.zeros(len(corpus), dtype=np.int64)  # tokens before each sample's first target token
        groups: dict[bytes, list[int]] = {}
        for r in range(len(corpus)):
            x, m = corpus.sample(r)
            first[r] = int(np.argmax(m))
            shared = share and first[r] > 0 and m[first[r]]
            key = x[: first[r]].tobytes() if shared else r.to_bytes(8, "little") + b"#"
            groups.setdefault(key, []).append(r)
        self.groups: list[np.ndarray] = []
        self.prompt: list[int] = []
        for rows in groups.values():
            p = int(first[rows[0]]) if len(rows) > 1 else 0
            cap = max(max_tokens or sys.maxsize, int(lengths[rows].max()))
            cur, size = [], p
            for r in rows:
                if cur and size + int(lengths[r]) - p > cap:
                    self._add(cur, p)
                    cur, size = [], p
                cur.append(r)
                size += int(lengths[r]) - p
            self._add(cur, p)
        self.lengths = np.array([int(lengths[g].sum()) - (len(g) - 1) * p for g, p in zip(self.groups, self.prompt,
                                                                                          strict=True)], dtype=np.int64)
        self.targets = np.array([int(targets[g].sum()) for g in self.groups], dtype=np.int64)
        self.samples = np.array([len(g) for g in self.groups], dtype=np.int64)

    def _add(self, rows: list[int], prompt: int) -> None:
        self.groups.append(np.asarray(rows, dtype=np.int64))
        self.prompt.append(prompt if len(rows) > 1 else 0)

    def __len__(self) -> int:
        return len(self.groups)


def collate(corpus: Corpus, rows: np.ndarray, pad_id: int, device: torch.device,
            soft_rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and target mask of some samples (and, given
    ``soft_rows``, a per-token array parallel to the corpus's tokens, its values laid out alike)."""
    n = max(int(corpus.offsets[r + 1] - corpus.offsets[r]) for r in rows)
    ids = np.full((len(rows), n), pad_id, dtype=np.int64)
    att = np.zeros((len(rows), n), dtype=np.int64)
    tgt = np.zeros((len(rows), n), dtype=np.bool_)
    soft = np.full((len(rows), n), -1, dtype=np.int64)
    for b, r in enumerate(rows):
        x, m = corpus.sample(int(r))
        ids[b, : len(x)], att[b, : len(x)], tgt[b, : len(x)] = x, 1, m
        if soft_rows is not None:
            soft[b, : len(x)] = soft_rows[corpus.offsets[r] : corpus.offsets[r + 1]]
    out = {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(att).to(device),
        "target_mask": torch.from_numpy(tgt).to(device),
    }
    if soft_rows is not None:
        out["soft_rows"] = torch.from_numpy(soft).to(device)
    return out


def lay_out_branches(ids: np.ndarray, pos: np.ndarray, att: np.ndarray, causal: np.ndarray, b: int,
                     prompt: Sequence[int], branches: Sequence[Sequence[int]]) -> list[int]:
    """Lay out row ``b`` of a shared-prompt batch: ``prompt`` first, attending causally, then each
    branch, attending to the prompt and causally to itself only, at the positions it has right
    after the prompt (``ids``, ``pos``: [batch, T]; ``att``: [batch, 1, T, T], True = may attend;
    ``causal``: a [T, T] lower triangle). Returns each branch's first column."""
    p = len(prompt)
    ids[b, :p], pos[b, :p], att[b, 0, :p, :p] = prompt, np.arange(p), causal[:p, :p]
    starts, at = [], p
    for x in branches:
        k = len(x)
        ids[b, at : at + k], pos[b, at : at + k] = x, np.arange(p, p + k)
        att[b, 0, at : at + k, :p] = True
        att[b, 0, at : at + k, at : at + k] = causal[:k, :k]
        starts.append(at)
        at += k
    return starts


def collate_units(corpus: Corpus, units: Units, picked: np.ndarray, pad_id: int, device: torch.device,
                  soft_rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The micro-batch of some units. A batch of single samples is :func:`collate`'s. A batch with a
    shared prompt lays each unit out as prompt, then every branch, with a 4D attention mask
    ([batch, 1, T, T], True = may attend: the prompt causally, each branch to the prompt and
    causally to itself), the positions each token has in its own sample, and ``pred_from``: the
    position whose hidden state predicts each token (a branch's first token is predicted from
    the prompt's last one)."""
    if all(units.prompt[int(u)] == 0 for u in picked):  # single samples only
        return collate(corpus, np.array([units.groups[int(u)][0] for u in picked]), pad_id, device, soft_rows)
    n = int(units.lengths[picked].max())
    ids = np.full((len(picked), n), pad_id, dtype=np.int64)
    tgt = np.zeros((len(picked), n), dtype=np.bool_)
    pos = np.zeros((len(picked), n), dtype=np.int64)
    soft = np.full((len(picked), n), -1, dtype=np.int64)
    src = np.tile(np.arange(-1, n - 1, dtype=np.int64), (len(picked), 1))
    att = np.zeros((len(picked), 1, n, n), dtype=np.bool_)
    att[:, 0, np.arange(n), np.arange(n)] = True  # padding attends to itself (no empty softmax rows)
    causal = np.tril(np.ones((n, n), dtype=np.bool_))
    for b, u in enumerate(picked):
        rows, p = units.groups[int(u)], units.prompt[int(u)]
        samples = [corpus.sample(int(r)) for r in rows]
        starts = lay_out_branches(ids, pos, att, causal, b, samples[0][0][:p], [x[p:] for x, _ in samples])
        tgt[b, :p] = samples[0][1][:p]
        if soft_rows is not None:
            soft[b, :p] = soft_rows[corpus.offsets[rows[0]] : corpus.offsets[rows[0]] + p]
        for r, (x, m), at in zip(rows, samples, starts, strict=True):
            k = len(x) - p
            tgt[b, at : at + k] = m[p:]
            if soft_rows is not None:
                soft[b, at : at + k] = soft_rows[corpus.offsets[r] + p : corpus.offsets[r + 1]]
            if p:
                src[b, at] = p - 1
    out = {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(att).to(device),
        "target_mask": torch.from_numpy(tgt).to(device),
        "position_ids": torch.from_numpy(pos).to(device),
        "pred_from": torch.from_numpy(src).to(device),
    }
    if soft_rows is not None:
        out["soft_rows"] = torch.from_numpy(soft).to(device)
    return out


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------- model


def build_model(cfg: LLMTrainConfig, backbone: str, new_tokens: list[str], device: torch.device,
                vocab_size: int | None = None, item_tokens: list[list[int]] | None = None,
                item_vectors: np.ndarray | None = None):
    """(CodeLM, tokenizer): the backbone with the code tokens added, on ``device``.
    ``code_init="text"`` needs every item's token ids and text vector (``item_tokens``, ``item_vectors``)."""
    from genrec.llm.backbone import add_tokens, load_backbone, pick_dtype, truncate_layers
    from genrec.llm.model import CodeLM

    dtype = pick_dtype(device, cfg.dtype)
    # full fine-tuning keeps fp32 master weights and computes under autocast
    model, tok = load_backbone(backbone, device=str(device), dtype="fp32" if cfg.mode == "full" else cfg.dtype)
    if cfg.layers is not None:
        truncate_layers(model, cfg.layers)
    add_tokens(tok, model, new_tokens)
    if cfg.code_init == "scaled" and new_tokens:
        scale_new_rows(model.get_input_embeddings().weight, len(new_tokens), cfg.seed)
    elif cfg.code_init == "text" and new_tokens:
        if item_tokens is None or item_vectors is None:  # loading trained rows (decoding): their start is moot
            scale_new_rows(model.get_input_embeddings().weight, len(new_tokens), cfg.seed)
        elif len(item_vectors) != len(item_tokens):
            raise GenrecError(f"code_init='text': {len(item_vectors)} item text vectors for {len(item_tokens)} items in the corpus")
        else:
            text_init_rows(model.get_input_embeddings().weight, len(new_tokens), item_tokens, item_vectors, cfg.seed)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if vocab_size is not None and len(tok) != vocab_size:
        raise GenrecError(f"the corpus was built for a vocabulary of {vocab_size} tokens; backbone {backbone} "
                          f"with the index's code tokens has {len(tok)}: rebuild the corpus with this backbone")
    lora = {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
            "target_modules": list(cfg.lora_targets)}
    with warnings.catch_warnings():  # PEFT asks transformers a deprecated question; nothing for our users to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        lm = CodeLM(model, len(new_tokens), cfg.mode, lora, cfg.softmax, cfg.untie_codes, cfg.train_text_rows,
                    cfg.dropout).to(device)
    lm.compute_dtype = dtype
    return lm, tok


@torch.no_grad()
def scale_new_rows(weight: torch.Tensor, n_new: int, seed: int) -> None:
    """Redraw the last ``n_new`` rows of an embedding matrix per dimension from a normal with the
    mean and standard deviation of the rows before them (seeded), in place."""
    old = weight[:-n_new].float()
    mean, std = old.mean(0), old.std(0)
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(n_new, weight.shape[1], generator=g)
    weight[-n_new:] = (mean.cpu() + noise * std.cpu()).to(weight.device, weight.dtype)


@torch.no_grad()
def text_init_rows(weight: torch.Tensor, n_new: int, item_tokens: list[list[int]], vectors: np.ndarray, seed: int) -> None:
    """Set the last ``n_new`` rows of an embedding matrix (the code tokens) from the items' text
    vectors (``vectors[i]``: item i's, in the embedding's space), in place.

    Residual quantisation in reverse: a code at level 0 gets the mean of the vectors of the items
    whose first code it is; each item's residual is its vector minus that mean; a code at level l
    gets the mean residual of its items at level l, and so on. Each level's rows are then
    standardised per dimension and given the text rows' mean and spread (a level's codes sit at
    the scale of words, apart where their items differ). Codes no item uses keep the rows of
    :func:`scale_new_rows`, as does a level whose codes are fewer than two."""
    scale_new_rows(weight, n_new, seed)
    n_old = weight.shape[0] - n_new
    old = weight[:n_old].float()
    mean, std = old.mean(0).cpu().numpy(), old.std(0).cpu().numpy()
    vec = np.asarray(vectors, dtype=np.float64)
    has = np.abs(vec).sum(1) > 0  # items without text (zero vectors) leave the means alone
    residual = vec.copy()
    levels = max((len(t) for t in item_tokens), default=0)
    for level in range(levels):
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for i, toks in enumerate(item_tokens):
            if level < len(toks) and has[i] and toks[level] >= n_old:  # code tokens only, never a text row
                t = toks[level]
                sums[t] = sums.get(t, 0.0) + residual[i]
                counts[t] = counts.get(t, 0) + 1
        if not sums:
            continue
        codes = sorted(sums)
        means = np.stack([sums[t] / counts[t] for t in codes])
        for i, toks in enumerate(item_tokens):
            if level < len(toks) and has[i] and toks[level] in sums:
                residual[i] = residual[i] - sums[toks[level]] / counts[toks[level]]
        if len(codes) < 2:
            continue
        spread = means.std(0)
        z = (means - means.mean(0)) / np.where(spread > 0, spread, 1.0)
        rows = torch.from_numpy((mean + z * std).astype(np.float32))
        weight[torch.tensor(codes, device=weight.device)] = rows.to(weight.device, weight.dtype)


def param_groups(lm, cfg: LLMTrainConfig) -> list[dict]:
    """The optimizer's groups: the code-token rows at ``code_lr`` (when set), the rest at ``lr``.
    Each group records its base rate; the schedule scales it."""
    code = [p for p in (lm.embed.new, lm.out_new) if p is not None and p.requires_grad] if cfg.code_lr else []
    ids = {id(p) for p in code}
    rest = [p for p in lm.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "base_lr": cfg.lr}]
    if code:
        groups.append({"params": code, "base_lr": cfg.code_lr})
    return [g for g in groups if g["params"]]


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


# ---------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, lm, optimizer, step: int, epoch: int, acc, log_lines: list[dict],
                    train_config: dict | None = None, best: dict | None = None) -> None:
    """Atomically replace ``folder`` with the state after ``step`` optimizer steps (with the
    ``train_config.json`` of the run, so a checkpoint can be decoded like a finished model), and
    the best weights of model selection so far (``best``: trainable state, step, metric). The
    files are those of :mod:`genrec.llm.files`."""
    rank = acc.process_index
    tmp = folder.parent / f".{folder.name}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    files.write_rng(tmp, rank)
    if acc.is_main_process:
        files.write_checkpoint(tmp, acc.unwrap_model(lm).trainable_state(), optimizer.state_dict(), step, epoch, best)
        with open(tmp / "log.jsonl", "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in log_lines)
        if train_config is not None:
            (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2, sort_keys=True, default=str))
    acc.wait_for_everyone()
    if acc.is_main_process:
        swap_dir(tmp, folder)
    acc.wait_for_everyone()


def load_best(folder: Path) -> dict | None:
    """The best weights of model selection a checkpoint holds (trainable state, step, metric), if any."""
    return files.read_best(folder)


def load_checkpoint(folder: Path, lm, optimizer, acc) -> tuple[int, list[dict]]:
    trainable, optimizer_state, step = files.read_checkpoint(folder)
    acc.unwrap_model(lm).load_trainable(trainable, folder)
    optimizer.load_state_dict(optimizer_state)
    files.restore_rng(folder, acc.process_index)
    log = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines() if x.strip()]
    return step, log


# ---------------------------------------------------------------------------------------- loop


@torch.no_grad()
def validation_loss(lm, corpus: Corpus, cfg: LLMTrainConfig, pad_id: int, device, dtype, acc) -> dict:
    """Mean target-token NLL and next-token accuracy on the validation corpus (sharded over ranks)."""
    lm.eval()
    rows = np.argsort(corpus.lengths, kind="stable")[acc.process_index :: acc.num_processes]
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    model = acc.unwrap_model(lm)
    for i in range(0, len(rows), cfg.batch_size):
        batch = collate(corpus, rows[i : i + cfg.batch_size], pad_id, device)
        with autocast(device, dtype):
            nll, n, correct = model(**batch)
        totals += torch.stack([nll.double(), n.double(), correct.double()])
    totals = acc.reduce(totals, "sum")
    lm.train()
    n = max(1.0, float(totals[1]))
    return {"val_loss": round(float(totals[0]) / n, 5), "val_acc": round(float(totals[2]) / n, 5)}


def step_batches(batches: list[np.ndarray], pos: int, group: int) -> list[np.ndarray]:
    """The ``group`` micro-batches of step ``pos`` of an epoch. Every epoch takes epoch 0's number
    of steps; an epoch whose shuffle cut fewer batches wraps around to its first ones (and one
    that cut more leaves its last ones out)."""
    mine = batches[pos * group : (pos + 1) * group]
    while len(mine) < group:
        mine = mine + batches[: group - len(mine)]
    return mine


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(
    cfg: LLMTrainConfig,
    backbone: str,
    corpus: Corpus,
    valid: Corpus | None,
    new_tokens: list[str],
    out: Path,
    checkpoint_dir: Path,
    vocab_size: int | None = None,
    progress: bool = True,
    log=None,
    stop_after: int | None = None,
    layout: str = "per_prefix",
    prompt: str = "chat",
    select=None,
    item_tokens: list[list[int]] | None = None,
    soft: tuple[np.ndarray, np.ndarray] | None = None,
    item_vectors: np.ndarray | None = None,
) -> dict:
    """Fine-tune; write ``trainable.safetensors``, ``log.jsonl`` and ``train_config.json`` to ``out``.

    ``layout`` and ``prompt`` are the corpus's sequential layout and prompt form, recorded in
    ``train_config.json`` so decoding builds its prompts in the form the model was trained on.

    ``select(lm, tokenizer) -> {metric: value}`` ranks a validation sample with the model as it
    is (model selection, ``cfg.select_users``): called at each epoch end and every
    ``cfg.select_every`` steps; the weights with the best ``cfg.select_metric`` are the ones
    written, and with ``cfg.patience`` training stops after that many calls without a better one.
    Under a launch only the main process's values count.

    ``item_tokens`` (every item's token ids) gives ``softmax="trie"`` its trie of valid items.

    ``item_vectors``: every item's text vector, for ``cfg.code_init="text"``.

    ``soft``: with ``cfg.distill``, the teacher's targets of :mod:`genrec.llm.distill` (rows per
    corpus token, probabilities per row); the loss of a token with one mixes them in.

    Resumes from ``checkpoint_dir`` when it holds a checkpoint of this run. ``stop_after`` ends
    this call after that many optimizer steps with a checkpoint (a session budget; the schedule
    is unchanged, and the next call resumes): it then returns ``{"stopped": True, "step": ...}``.
    Returns metrics.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from genrec.device import pick_device

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    want = pick_device(cfg.device)
    acc = Accelerator(cpu=want.type == "cpu")
    device = acc.device
    torch.manual_seed(cfg.seed)
    if cfg.code_init == "text" and (item_tokens is None or item_vectors is None):
        raise GenrecError("code_init='text' needs the items' token ids and text vectors (the text stage): train through `genrec run`")
    lm, tok = build_model(cfg, backbone, new_tokens, device, vocab_size, item_tokens, item_vectors)
    if cfg.softmax == "trie":
        if item_tokens is None:
            raise GenrecError("softmax='trie' needs the items' token ids: rebuild the corpus (genrec tasks build) so it keeps them")
        lm.set_trie(item_tokens)
    soft_rows, soft_table = None, None
    if cfg.distill is not None:
        if soft is None:
            raise GenrecError("train.distill needs the teacher's targets (the distill stage of a run)")
        soft_rows, soft_table = soft[0], torch.from_numpy(soft[1]).to(device)
        lm.distill_weight = cfg.distill.weight
    run_config = {**cfg.model_dump(), "backbone": backbone, "new_tokens": len(new_tokens), "layout": layout,
                  "prompt": prompt}
    dtype = lm.compute_dtype
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    params = [p for p in lm.parameters() if p.requires_grad]
    # the fused kernel: one pass over all weights per step (on a CPU ~5x the default per-tensor loop)
    optimizer = torch.optim.AdamW([{**g, "lr": g["base_lr"]} for g in param_groups(lm, cfg)], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, fused=device.type in ("cpu", "cuda") or None)
    lm, optimizer = acc.prepare(lm, optimizer)

    world, accum = acc.num_processes, cfg.grad_accum
    group = world * accum
    units = Units(corpus, cfg.share_prefixes, cfg.batch_tokens)
    share = task_shares(corpus, units, cfg.task_fraction)
    steps_per_epoch = len(make_batches(units.lengths, cfg, 0, share)) // group
    if steps_per_epoch == 0:
        raise GenrecError(f"the corpus ({len(corpus)} samples) makes fewer than {group} micro-batches: one optimizer step needs {group}")
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total)

    if cfg.select_users and select is None:
        raise GenrecError("model selection (train.select_users) ranks validation users: it needs the dataset and the index, "
                          "so run it through a run config (genrec run / genrec train --config)")
    step, log_lines, best = 0, [], None
    if files.is_checkpoint(checkpoint_dir):
        step, log_lines = load_checkpoint(checkpoint_dir, lm, optimizer, acc)
        best = load_best(checkpoint_dir)
        log(f"resumed from {checkpoint_dir} at step {step}")
        if select is not None and _out_of_patience(cfg, log_lines, best):
            total = step  # it had stopped early: finish with the best weights
    n_trainable = sum(p.numel() for p in params)
    if acc.is_main_process:
        log(f"training {n_trainable:,} parameters ({cfg.mode}, {dtype}) on {world} x {device}: {len(corpus):,} samples, "
            f"{steps_per_epoch:,} steps per epoch, {total:,} steps"
            + (f" ({len(corpus) - len(units):,} prompts shared)" if len(units) < len(corpus) else ""))

    first_step = step
    bar = tqdm(total=total, initial=step, disable=not (progress and acc.is_main_process), unit="step", dynamic_ncols=True)
    start, tokens_seen, targets_seen, samples_seen = time.time(), 0, 0, 0
    epoch_batches: tuple[int, list[np.ndarray]] | None = None
    lm.train()
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch_batches is None or epoch_batches[0] != epoch:
            epoch_batches = (epoch, make_batches(units.lengths, cfg, epoch, share))
        batches = epoch_batches[1]
        mine = step_batches(batches, pos, group)
        step_targets = float(sum(units.targets[b].sum() for b in mine))
        for g in optimizer.param_groups:
            g["lr"] = g.get("base_lr", cfg.lr) * lr_factor(step, total, warmup, cfg.min_lr_ratio)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for j, rows in enumerate(mine[acc.process_index :: world]):
            batch = collate_units(corpus, units, rows, pad_id, device, soft_rows)
            if soft_table is not None:
                batch["soft_table"] = soft_table
            sync = j == accum - 1
            with acc.no_sync(lm) if not sync else contextlib.nullcontext():
                with autocast(device, dtype):
                    nll, _, _ = lm(**batch)
                acc.backward(nll * (world / step_targets))
            loss_sum += nll.detach().double()
            tokens_seen += int(units.lengths[rows].sum())
            targets_seen += int(units.targets[rows].sum())
            samples_seen += int(units.samples[rows].sum())
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(acc.reduce(loss_sum, "sum")) / step_targets
        step += 1
        bar.update(1)
        elapsed = time.time() - start
        rate = tokens_seen * world / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", epoch=f"{step / steps_per_epoch:.2f}")
        entry = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": round(loss, 5),
                 "lr": optimizer.param_groups[0]["lr"], "seconds": round(elapsed, 2)}
        if step % cfg.log_every == 0 or step == total:
            entry.update(tokens_per_s=round(rate, 1), target_tokens_per_s=round(targets_seen * world / max(elapsed, 1e-9), 1),
                         peak_mem_mb=round(peak_memory_mb(device), 1))
        log_lines.append(entry)
        if not progress and acc.is_main_process and "tokens_per_s" in entry:
            log(f"step {step}/{total} (epoch {entry['epoch']:.3f}): loss {loss:.4f}, {rate:,.0f} tokens/s")
        epoch_end = step % steps_per_epoch == 0 or step == total
        if cfg.val_loss and valid is not None and len(valid) and (epoch_end or (cfg.eval_every and step % cfg.eval_every == 0)):
            v = validation_loss(lm, valid, cfg, pad_id, device, dtype, acc)
            log_lines.append({"step": step, "epoch": round(step / steps_per_epoch, 4), **v})
            if acc.is_main_process:
                bar.write(f"step {step}: train loss {loss:.4f}, validation loss {v['val_loss']:.4f}, accuracy {v['val_acc']:.3f}")
        stop_early = False
        if select is not None and cfg.select_users and (epoch_end or (cfg.select_every and step % cfg.select_every == 0)):
            best, stop_early = _select(select, lm, tok, cfg, step, steps_per_epoch, best, log_lines, device, acc, log)
        budget_spent = stop_after is not None and step - first_step >= stop_after and step < total
        if step % cfg.save_every == 0 or epoch_end or budget_spent or stop_early:
            save_checkpoint(checkpoint_dir, lm, optimizer, step, epoch, acc, log_lines, run_config, best)
        if stop_early:
            log(f"stopped early at step {step}: {cfg.patience} selections without a better validation "
                f"{cfg.select_metric} than step {best['step']}'s {best['metric']:.5f}")
            total = step
            break
        if budget_spent:
            bar.close()
            log(f"stopped after {step - first_step} steps at step {step} of {total}; checkpoint in {checkpoint_dir}")
            return {"stopped": True, "step": step, "total": total}
    bar.close()
    elapsed = time.time() - start
    metrics = _summary(log_lines, steps_per_epoch, total, total - first_step, elapsed, tokens_seen * world,
                       targets_seen * world, samples_seen * world, peak_memory_mb(device), n_trainable, world)
    if best is not None:
        metrics.update(selected_step=best["step"], selected_epoch=round(best["step"] / steps_per_epoch, 4),
                       **{f"valid_{cfg.select_metric}": best["metric"]})
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        files.save_trainable(out, best["trainable"] if best is not None else acc.unwrap_model(lm).trainable_state())
        with open(out / "log.jsonl", "w") as f:
            f.writelines(json.dumps(x) + "\n" for x in log_lines)
        write_json_atomic(out / "train_config.json", run_config)
    acc.wait_for_everyone()
    return metrics


def _select(select, lm, tok, cfg: LLMTrainConfig, step: int, steps_per_epoch: int, best: dict | None,
            log_lines: list[dict], device, acc, log) -> tuple[dict | None, bool]:
    """One model selection: rank the validation sample, keep the weights if they are the best so
    far; (best, stop early?)."""
    t = time.time()
    model = acc.unwrap_model(lm)
    metrics = select(model, tok) if acc.is_main_process else None
    lm.train()
    value = torch.tensor([float(metrics[cfg.select_metric]) if metrics else 0.0], dtype=torch.float64, device=device)
    value = float(acc.reduce(value, "sum"))  # the main process's value on every rank
    if best is None or value > best["metric"]:
        best = {"trainable": model.trainable_state(), "step": step, "metric": value}
    entry = {"step": step, "epoch": round(step / steps_per_epoch, 4), "select": {k: round(float(v), 5) for k, v in
             (metrics or {}).items() if k.startswith(("HR@", "NDCG@", "MRR", "coverage@"))},
             "select_value": round(value, 5), "best_step": best["step"], "select_seconds": round(time.time() - t, 1)}
    log_lines.append(entry)
    log(f"step {step}: validation {cfg.select_metric} {value:.5f} (best {best['metric']:.5f} at step {best['step']}, "
        f"{entry['select_seconds']:.0f}s to rank)")
    return best, _out_of_patience(cfg, log_lines, best)


def _out_of_patience(cfg: LLMTrainConfig, log_lines: list[dict], best: dict | None) -> bool:
    """Whether the last ``cfg.patience`` selections in the log all came after the best one."""
    if not cfg.patience or best is None:
        return False
    return sum(1 for x in log_lines if "select_value" in x and x["step"] > best["step"]) >= cfg.patience


def sessions(log_lines: list[dict]) -> list[dict]:
    """The training sessions of a log that may span resumes: ``{"first_step", "last_step", "seconds"}``
    each. An entry's ``seconds`` counts from the start of its own process, so a drop marks a resume.
    Steps lost to a kill after the last checkpoint are not in the log and not counted."""
    out: list[dict] = []
    for x in log_lines:
        if "seconds" not in x:
            continue
        if not out or x["seconds"] < out[-1]["seconds"]:
            out.append({"first_step": x["step"], "last_step": x["step"], "seconds": x["seconds"]})
        out[-1].update(last_step=x["step"], seconds=x["seconds"])
    return out


def training_seconds(log_lines: list[dict]) -> tuple[float, int]:
    """(training seconds, sessions) of a log that may span resumed sessions (see ``sessions``)."""
    parts = sessions(log_lines)
    return sum(p["seconds"] for p in parts), len(parts)


def _summary(log_lines, steps_per_epoch, total, steps_here, elapsed, tokens, targets, samples, peak_mb, n_trainable,
             world) -> dict:
    """What the run measured; throughput and time per epoch from the steps run in this process,
    ``train_seconds`` over every session that led to the model."""
    train = [x for x in log_lines if "loss" in x]
    val = [x for x in log_lines if "val_loss" in x]
    seconds, n_sessions = training_seconds(log_lines)
    return {
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "epochs": round(total / steps_per_epoch, 4),
        "final_train_loss": train[-1]["loss"] if train else None,
        "val_loss": val[-1]["val_loss"] if val else None,
        "val_acc": val[-1]["val_acc"] if val else None,
        "seconds_this_session": round(elapsed, 1),
        "train_seconds": round(seconds, 1),
        "sessions": n_sessions,
        "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
        "target_tokens_per_s": round(targets / max(elapsed, 1e-9), 1),
        "samples_per_s": round(samples / max(elapsed, 1e-9), 2),
        "seconds_per_epoch": round(elapsed / steps_here * steps_per_epoch, 1) if steps_here else None,
        "peak_mem_mb": round(peak_mb, 1),
        "trainable_parameters": n_trainable,
        "world_size": world,
    }
