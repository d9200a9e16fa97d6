#!/usr/bin/env bash
# Keep a finished run's small model in git, for machines that keep only the checkout.
#   scripts/carry_run.sh save    runs/scientific   # its fine-tuned adapter (at most 50 MB: LoRA and the
#                                                   # code-token rows), the index it decodes with, and the
#                                                   # evaluation's metrics, into carry/scientific
#   scripts/carry_run.sh restore runs/scientific   # copy them back; `genrec serve`, `genrec evaluate`
#                                                   # and the benchmarks' --model then work on it
# Nothing else is carried: no checkpoints or optimizer states, no baseline or CF weights, no full
# fine-tune (they stay in runs/; tests/test_hygiene.py fails when git holds them). An unfinished
# run cannot be carried: budget a long run to end inside one session.
set -euo pipefail
what=${1:?save or restore}; run=${2:?run folder, e.g. runs/scientific}
store="carry/$(basename "$run")"
case "$what" in
  save)
    [ -f "$run/model/manifest.json" ] || { echo "$run/model: no finished fine-tune to carry" >&2; exit 1; }
    size=$(du -sm --apparent-size --exclude='.ckpt-*' "$run/model" | cut -f1)
    [ "$size" -le 50 ] || { echo "$run/model: $size MB, more than a small adapter (50 MB); it stays in runs/" >&2; exit 1; }
    rm -rf "$store.tmp" && mkdir -p "$store.tmp/evaluate"
    cp -r "$run/model" "$run/index" "$store.tmp/" && rm -rf "$store.tmp"/model/.ckpt-*
    for f in metrics.json manifest.json; do [ -f "$run/evaluate/$f" ] && cp "$run/evaluate/$f" "$store.tmp/evaluate/"; done
    rm -rf "$store" && mv "$store.tmp" "$store"
    du -sh "$store" ;;
  restore)
    [ -d "$store" ] || { echo "nothing carried in $store" >&2; exit 1; }
    mkdir -p "$run" && cp -r "$store"/. "$run"/
    ls -a "$run" ;;
  *) echo "usage: $0 save|restore RUN_DIR" >&2; exit 2 ;;
esac
