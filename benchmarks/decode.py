"""Constrained decoding speed: our batched trie beam search against Hugging Face ``generate`` and
against the floor of reading each prompt once.

    .venv/bin/python benchmarks/decode.py [--model runs/scientific/model] [--users 16]

Same backbone, same weights, same prompts (the sequential prompt of test users), same trie of
valid code tuples, beam 20, top 10, fp32. Hugging Face: ``generate(num_beams=20,
prefix_allowed_tokens_fn=trie)`` one user at a time (as LC-Rec decodes), LoRA merged. Ours:
:func:`genrec.decode.beam.rank_prompts`, ``--batch`` users at a time batched by prompt length,
LoRA merged, each user's prompt keys and values read by all its beams without copies
(``SharedPromptSteps``), the last level stepped ``--round-beams`` beams per user at a time with
the beams that cannot reach the top k skipped. The floor: one batched forward over the same
users' prompts in the same batches (each prompt read once, the next-token distribution at its
end), no beam step: what no decoder of these prompts can beat. Reports users per second and
seconds per user of each, each one's ratio to the floor, ours over HF generate, and the share of
users whose top-k lists are identical. Ours and the floor are timed batch by batch, each batch
``--repeats`` times, the floor and ours in turn, and each batch's best time is kept: on a shared
machine the others' load only adds time, and timing the two side by side gives both the same load.

Weights: the trained model folder if given (or a checkpoint of the scientific run), else the
default backbone with freshly initialised code-token rows (speed and agreement do not depend on
training). Writes benchmarks/results/decode.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import describe, machine  # noqa: E402


def load(args):
    import torch

    from genrec.data.dataset import Dataset
    from genrec.index.base import ItemIndex
    from genrec.llm.config import LLMTrainConfig
    from genrec.llm.files import checkpoint_step, has_trained_weights, is_checkpoint, load_trained_weights
    from genrec.llm.train import build_model

    ds = Dataset.load(args.run / "data")
    index = ItemIndex.load(args.run / "index")
    cfg, backbone, prompt, layout = LLMTrainConfig(mode="full"), "default", "chat", "per_prefix"
    weights, label, folder = None, "untrained code rows", None
    if args.model and has_trained_weights(args.model):
        folder, label = args.model, str(args.model)
    else:
        ckpts = sorted(d for d in args.run.glob(".ckpt-model-*") if is_checkpoint(d))
        if ckpts:
            folder, label = ckpts[-1], f"{ckpts[-1].name} step {checkpoint_step(ckpts[-1])}"
    if folder is not None:
        weights = load_trained_weights(folder)
        if (folder / "train_config.json").is_file():  # what the model was trained as: backbone, prompt form, layout
            cfg, backbone, prompt, layout = _model_config(folder)
        else:  # a checkpoint from before checkpoints carried their train_config.json
            cfg = LLMTrainConfig.model_validate(_train_section(args.config))

    def make():
        torch.manual_seed(0)  # the same fresh code rows in both copies when there are no trained weights
        lm, tok = build_model(cfg, backbone, list(index.new_tokens), torch.device("cpu"))
        if weights is not None:
            lm.load_trainable(weights)
        return lm.eval(), tok

    return ds, index, make, label, backbone, prompt, layout


def _model_config(folder: Path):
    """(training settings, backbone, prompt form, layout) of a model or checkpoint folder's train_config.json."""
    from genrec.decode.recommender import _corpus_layout
    from genrec.llm.config import LLMTrainConfig

    raw = json.loads((folder / "train_config.json").read_text())
    backbone = raw.pop("backbone", "default")
    raw.pop("new_tokens", None)
    layout = raw.pop("layout", None) or _corpus_layout(folder)
    prompt = raw.pop("prompt", "chat")
    return LLMTrainConfig.model_validate(raw), backbone, prompt, layout


def _train_section(config: Path) -> dict:
    from genrec.config import load_config

    return load_config(config).train.model_dump()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "scientific", help="run folder with data and index")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "scientific.yaml")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--round-beams", type=int, default=5, help="last-level beams per user per round; 0: all at once")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of ours and of the floor (the best is kept)")
    ap.add_argument("--note", default="", help="a remark for the results file (e.g. the machine's other load)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not (args.run / "index").is_dir():
        sys.exit(f"no index in {args.run}: run `genrec train --config {args.config}` (or its index stage) first")
    import numpy as np
    import torch

    from genrec.decode.beam import Decoder, TrieTensors, _encode_prompts, beam_search
    from genrec.llm.encode import PromptFormat
    from genrec.llm.model import merged_hf_model

    ds, index, make, label, backbone, prompt, layout = load(args)
    lm, tok = make()
    fmt = PromptFormat(tok, index, prompt)
    trie = index.trie(fmt.items)
    split = ds.eval_split("test")
    users = np.random.default_rng(0).choice(np.flatnonzero(split.targets >= 0), size=args.users, replace=False)
    prompts = [fmt.seq_prompt([int(i) for i in split.histories[u]], 0, 20, layout) for u in users]
    mean_len = float(np.mean([len(p) for p in prompts]))

    dec, tt = Decoder.from_codelm(lm.merge_for_inference(), tok.pad_token_id), TrieTensors.of(trie, torch.device("cpu"))
    rounds = args.round_beams or None
    order = np.argsort([len(p) for p in prompts], kind="stable")  # the batches of rank_prompts: by prompt length
    ours = np.full((len(prompts), args.k), -1, dtype=np.int64)
    beam_search(dec, prompts[:2], tt, args.beams, args.k)  # warm-up
    ours_s = floor_s = 0.0
    for lo in range(0, len(order), args.batch):
        rows = order[lo : lo + args.batch]
        batch = [prompts[r] for r in rows]
        best_floor = best_ours = float("inf")
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            with torch.no_grad():
                _encode_prompts(dec, batch)
            best_floor = min(best_floor, time.perf_counter() - t)
            t = time.perf_counter()
            ours[rows] = beam_search(dec, batch, tt, args.beams, args.k, round_beams=rounds).items
            best_ours = min(best_ours, time.perf_counter() - t)
        floor_s, ours_s = floor_s + best_floor, ours_s + best_ours

    hf = merged_hf_model(make()[0])
    levels = index.codes.shape[1]
    renorm = None
    if lm.softmax == "trie":  # trained with each step's softmax over the trie node's children: so is HF's step scored
        from transformers import LogitsProcessor, LogitsProcessorList

        class Renormalise(LogitsProcessor):  # after prefix_allowed_tokens_fn: log-softmax over the allowed tokens
            def __call__(self, input_ids, scores):
                return torch.log_softmax(scores, -1)

        renorm = LogitsProcessorList([Renormalise()])
    hf_lists = []
    t = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p])

        def allowed(_b, sent, n=len(p)):
            return trie.allowed(sent[n:].tolist())

        with torch.no_grad():
            gen = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=args.beams, num_return_sequences=args.k,
                              max_new_tokens=levels, do_sample=False, length_penalty=0.0, early_stopping=True,
                              prefix_allowed_tokens_fn=allowed, logits_processor=renorm,
                              pad_token_id=tok.pad_token_id)
        hf_lists.append([trie.lookup(g[len(p) :].tolist()) for g in gen])
    hf_s = time.perf_counter() - t
    identical = float(np.mean([ours[i].tolist() == hf_lists[i] for i in range(len(prompts))]))
    n = len(prompts)
    info = machine()
    rows = {"hf": hf_s, "ours": ours_s, "floor": floor_s}
    result = {"ours_users_per_s": round(n / ours_s, 3), "hf_users_per_s": round(n / hf_s, 3),
              "floor_users_per_s": round(n / floor_s, 3),
              **{f"{name}_s_per_user": round(s / n, 5) for name, s in rows.items()},
              "ratio": round(hf_s / ours_s, 2), "floor_ratio": round(ours_s / floor_s, 3),
              "hf_floor_ratio": round(hf_s / floor_s, 2), "identical_top10_share": identical, "users": n,
              "mean_prompt_tokens": round(mean_len, 1), "beams": args.beams, "k": args.k, "batch": args.batch,
              "round_beams": rounds, "repeats": args.repeats, "precision": "fp32", "weights": label, "backbone": backbone,
              "prompt": prompt, "softmax": lm.softmax, "threads": torch.get_num_threads(), "note": args.note,
              "cpu_bf16": info.get("cpu_bf16"), "machine": info}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")
    cmd = shlex.join(["python", "benchmarks/decode.py", *sys.argv[1:]])
    line = lambda name, s: f"| {name} | {n / s:.3f} | {s / n:.4f} | {s / floor_s:.2f} |"  # noqa: E731
    (args.out / "decode.md").write_text("\n".join([
        "# Constrained decoding", "", f"Machine: {describe(info)}; torch threads {torch.get_num_threads()}."
        + (f" {args.note}" if args.note else ""), "",
        f"Command: `{cmd}`", "",
        f"{n} test users of {args.run.name}, mean prompt {mean_len:.1f} tokens ({prompt} prompt), beam {args.beams}, "
        f"top {args.k}, {levels} code levels, fp32, backbone {backbone}, weights: {label}. Ours and the floor: best of "
        f"{args.repeats} runs of each batch, in turn; HF generate: one run.", "",
        "| decoder | users/s | s/user | x floor |", "|---|---|---|---|",
        line("HF generate, prefix_allowed_tokens_fn, one user at a time", hf_s),
        line(f"genrec beam_search, {args.batch} users per batch (by prompt length), last level "
             + (f"{rounds} beams per round" if rounds else "in one step"), ours_s),
        line(f"floor: one forward over the prompts, {args.batch} per batch, no beam step", floor_s),
        "", f"Speed-up over HF generate: **{hf_s / ours_s:.1f}x**. Ours over the floor: **{ours_s / floor_s:.2f}x**. "
        f"Identical top-{args.k} lists (ours, HF): {identical:.0%} of users.", ""]))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
