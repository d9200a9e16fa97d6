"""Fine-tuning throughput: our trainer against a plain Hugging Face Trainer, same supervision and model.

    .venv/bin/python benchmarks/train_throughput.py --corpus runs/scientific/tasks --users 32

``--corpus`` is an ``all_positions`` corpus; the benchmark takes the sequential samples of
``--users`` random users (one sequence per user, the loss on every item after the first) and
cuts them into their per-prefix samples (:meth:`genrec.llm.corpus.Corpus.unpacked`: the
sequence up to each item, the loss on that item only). A causal LM takes exactly the same
losses on both forms (``tests/test_train.py`` checks it), so every run below learns from the
same (context, target token) pairs:

- ``hf``: ``transformers.Trainer`` on the per-prefix samples, with PEFT's
  ``trainable_token_indices`` for the code rows, random batches padded to the batch maximum and
  the full-vocabulary logits at every position (the usual recipe, as in LC-Rec);
- ``ours-per-prefix``: genrec's trainer on the same per-prefix samples (length-grouped batches,
  the output layer only where a target token is): what the trainer alone gains;
- ``ours``: genrec's trainer on the packed sequences (the ``all_positions`` layout).

All: the same LoRA adapters (r=8 on every projection) plus the new code-token rows, one epoch,
batch 8, the same learning rate and dtype. Each runs in its own process (so peak memory is its
own). Writes benchmarks/results/train_throughput.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._child import report, run_child  # noqa: E402
from benchmarks._machine import describe, machine  # noqa: E402

LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def subset(corpus_dir: Path, users: int, seed: int, form: str):
    """The sequential samples of ``users`` random users, packed or unpacked into per-prefix samples."""
    import numpy as np

    from genrec.llm.corpus import load_corpus

    train, _, meta = load_corpus(corpus_dir)
    if meta.get("layout") != "all_positions" or "seq_all" not in train.task_names:
        sys.exit(f"{corpus_dir}: expected an all_positions corpus with the seq task (genrec tasks build --set layout=all_positions)")
    seq = np.flatnonzero(train.task == train.task_names.index("seq_all"))
    rows = np.sort(np.random.default_rng(seed).choice(seq, size=min(users, len(seq)), replace=False))
    packed = train.subset(rows)
    return (packed if form == "packed" else packed.unpacked()), meta


def run_ours(corpus_dir: Path, n: int, seed: int, dtype: str, lr: float, batch: int, batch_tokens: int, form: str) -> dict:
    import tempfile

    from genrec.llm.config import LLMTrainConfig
    from genrec.llm.train import train

    corpus, meta = subset(corpus_dir, n, seed, form)
    cfg = LLMTrainConfig(lr=lr, epochs=1, batch_size=batch, batch_tokens=batch_tokens, dtype=dtype,
                         lora_dropout=0.0, warmup_ratio=0.0, save_every=10**9, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = train(cfg, meta.get("backbone") or "default", corpus, None, meta["new_token_list"], Path(tmp) / "out",
                  Path(tmp) / "ckpt", meta["vocab_size"], progress=False)
        seconds = time.time() - t
        steps = [json.loads(x) for x in (Path(tmp) / "out" / "log.jsonl").read_text().splitlines()]
        mean_loss = sum(x["loss"] for x in steps) / len(steps)
    # the timed loop only (model loading excluded), as for the HF run
    loop = m["seconds_this_session"]
    return {"samples": len(corpus), "target_tokens": int(corpus.mask.sum()), "tokens": int(corpus.lengths.sum()),
            "seconds": loop, "seconds_with_loading": round(seconds, 1), "mean_loss": round(mean_loss, 4)}


def run_hf(corpus_dir: Path, n: int, seed: int, dtype: str, lr: float, batch: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from genrec.llm.backbone import add_tokens, load_backbone

    corpus, meta = subset(corpus_dir, n, seed, "unpacked")
    from transformers import AutoModelForCausalLM

    model, tok = load_backbone(meta.get("backbone") or "default", device="cpu", dtype="fp32")
    # Trainer refuses a model loaded from GGUF (flagged as quantized): copy the dequantized
    # weights into a plain model of the same config
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    model = plain
    new_ids = add_tokens(tok, model, meta["new_token_list"])
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", trainable_token_indices=new_ids, **LORA))
    rows = []
    for i in range(len(corpus)):
        ids, mask = corpus.sample(i)
        ids = ids.astype("int64").tolist()
        rows.append({"input_ids": ids, "labels": [x if m else -100 for x, m in zip(ids, mask.tolist(), strict=True)]})

    def collate(batch):  # pad to the batch maximum, labels -100 on padding
        n_max = max(len(r["input_ids"]) for r in batch)
        pad = tok.pad_token_id
        return {
            "input_ids": torch.tensor([r["input_ids"] + [pad] * (n_max - len(r["input_ids"])) for r in batch]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (n_max - len(r["input_ids"])) for r in batch]),
            "labels": torch.tensor([r["labels"] + [-100] * (n_max - len(r["labels"])) for r in batch]),
        }

    args = TrainingArguments(output_dir="/tmp/genrec-hf-bench", per_device_train_batch_size=batch, num_train_epochs=1,
                             learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, save_strategy="no",
                             logging_strategy="no", report_to=[], bf16=dtype == "bf16", use_cpu=True, seed=seed,
                             dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    t = time.time()
    out = trainer.train()
    return {"samples": len(corpus), "target_tokens": int(corpus.mask.sum()), "tokens": int(corpus.lengths.sum()),
            "seconds": round(time.time() - t, 2), "mean_loss": round(float(out.training_loss), 4)}


def child(args) -> None:
    if args.which == "hf":
        r = run_hf(args.corpus, args.users, args.seed, args.dtype, args.lr, args.batch)
    else:
        form = "packed" if args.which == "ours" else "unpacked"
        r = run_ours(args.corpus, args.users, args.seed, args.dtype, args.lr, args.batch, args.batch_tokens, form)
    r["peak_mem_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report(r)


def spawn(which: str, corpus: Path, args) -> dict:
    cmd = [__file__, "--child", which, "--corpus", str(corpus), "--users", str(args.users),
           "--seed", str(args.seed), "--dtype", args.dtype, "--lr", str(args.lr), "--batch", str(args.batch),
           "--batch-tokens", str(args.batch_tokens)]
    r = run_child(cmd, which)
    r["tokens_per_s"] = round(r["tokens"] / r["seconds"], 1)
    r["target_tokens_per_s"] = round(r["target_tokens"] / r["seconds"], 2)
    r["samples_per_s"] = round(r["samples"] / r["seconds"], 3)
    print(f"{which:<20} {r['samples']} samples in {r['seconds']:.1f}s: {r['samples_per_s']:.2f} samples/s, "
          f"{r['target_tokens_per_s']:.1f} target tokens/s, peak {r['peak_mem_mb']:.0f} MB", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "runs" / "scientific" / "tasks", help="an all_positions corpus")
    ap.add_argument("--users", type=int, default=32, help="users whose sequential samples are trained on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=8192,
                    help="our padded-token budget per micro-batch (the default never binds at batch 8: same batch size as HF)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--child", choices=["ours", "ours-per-prefix", "hf"], dest="which", default=None)
    args = ap.parse_args()
    if args.which:
        child(args)
        return
    if not (args.corpus / "meta.json").is_file():
        sys.exit(f"no corpus at {args.corpus}: build one with `genrec tasks build` (see the README)")
    if json.loads((args.corpus / "meta.json").read_text()).get("prompt") == "codes":
        # Corpus.unpacked cuts a sequence between runs of target tokens; in the codes prompt they are one run
        sys.exit(f"{args.corpus}: a codes-prompt corpus (items' codes back to back, no separator) cannot be cut into "
                 "per-prefix samples; build one with the chat or plain prompt (genrec tasks build --set prompt=chat)")
    rows = {w: spawn(w, args.corpus, args) for w in ("hf", "ours-per-prefix", "ours")}
    info = machine()
    ratio = rows["ours"]["target_tokens_per_s"] / rows["hf"]["target_tokens_per_s"]
    result = {
        "ours_tokens_per_s": rows["ours"]["target_tokens_per_s"],
        "baseline_tokens_per_s": rows["hf"]["target_tokens_per_s"],
        "ratio": round(ratio, 2),
        "trainer_only_ratio": round(rows["ours-per-prefix"]["target_tokens_per_s"] / rows["hf"]["target_tokens_per_s"], 2),
        "peak_mem_mb": rows["ours"]["peak_mem_mb"],
        "baseline_peak_mem_mb": rows["hf"]["peak_mem_mb"],
        "tokens": "target tokens (the tokens a loss is taken on); every run has the same ones",
        "runs": rows,
        "settings": {"users": args.users, "dtype": args.dtype, "batch": args.batch, "batch_tokens": args.batch_tokens,
                     "lr": args.lr, "corpus": str(args.corpus), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "machine": info,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    cmd = " ".join(["python benchmarks/train_throughput.py", *sys.argv[1:]])
    n_items = rows["hf"]["samples"]
    lines = ["# Fine-tuning throughput", "", f"Machine: {describe(info)}.", "", f"Command: `{cmd}`", "",
             f"The sequential samples of {args.users} random scientific users: {args.users} packed sequences "
             f"(`all_positions`) or, cut at each item, {n_items} per-prefix samples; the same target tokens either way "
             f"(a causal LM takes identical losses on both). Same backbone, LoRA r=8 on every projection plus trainable "
             f"code-token rows, batch {args.batch}, one epoch, {args.dtype}. A sample is one (context, next item) pair: "
             f"samples/s below counts those pairs, {n_items} in every run.",
             "", "| run | samples | (context, item) pairs/s | target tokens/s | all tokens/s | seconds | peak MB | mean train loss |",
             "|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['samples']} | {n_items / r['seconds']:.2f} | {r['target_tokens_per_s']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {r['seconds']:.1f} | {r['peak_mem_mb']:.0f} | {r['mean_loss']} |")
    lines += ["", f"Ratio ours / Hugging Face Trainer: **{ratio:.2f}x** target tokens per second (the trainer alone, "
              f"on the same per-prefix samples: {result['trainer_only_ratio']:.2f}x).", "",
              "Mean train loss is the mean of the per-step losses: the packed run covers the same pairs in fewer "
              "optimizer steps, so its mean weighs the untrained first steps more. Runs take turns in one process "
              "each (OMP_NUM_THREADS as in the settings), on a machine that may have other jobs: the ratio is "
              "measured under the same conditions for both, the absolute rates are lower bounds."]
    (args.out / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print(f"ratio {ratio:.2f}x (trainer alone {result['trainer_only_ratio']:.2f}x)")


if __name__ == "__main__":
    main()
