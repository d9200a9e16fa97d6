#!/usr/bin/env bash
# Carry a long run between sessions on machines that keep only the git checkout.
#   scripts/carry_run.sh save    runs/scientific   # copy cf, index, baselines, a finished LoRA model, its
#                                                   # evaluation (or the lists of a partial one) and
#                                                   # checkpoints into carry/
#   scripts/carry_run.sh restore runs/scientific   # copy them back; `genrec train --config ...` then resumes
# Stage fingerprints are content hashes of configs and inputs, so restored stages are "up to date"
# and the checkpoint folder keeps its name. The corpus (tasks) is rebuilt, deterministically.
set -euo pipefail
what=${1:?save or restore}; run=${2:?run folder, e.g. runs/scientific}
store="carry/$(basename "$run")"
case "$what" in
  save)
    rm -rf "$store.tmp" && mkdir -p "$store.tmp"
    # data is not carried: it is derived from ../shared/data and rebuilt identically (same fingerprint)
    for d in cf index baselines evaluate .evaluate-partial; do [ -d "$run/$d" ] && cp -r "$run/$d" "$store.tmp/"; done
    # a finished fine-tune when it is small (LoRA and the code-token rows), not a fully trained backbone
    if [ -f "$run/model/manifest.json" ] && [ "$(du -sm "$run/model" | cut -f1)" -le 50 ]; then cp -r "$run/model" "$store.tmp/"; fi
    # every checkpoint folder of an unfinished stage (fine-tuning, neural baselines), at its relative path
    (cd "$run" && find . -maxdepth 2 -type d -name '.ckpt-*') | while read -r c; do
      mkdir -p "$store.tmp/$(dirname "$c")" && cp -r "$run/$c" "$store.tmp/$c"
    done
    rm -rf "$store" && mv "$store.tmp" "$store"
    du -sh "$store" ;;
  restore)
    [ -d "$store" ] || { echo "nothing carried in $store" >&2; exit 1; }
    mkdir -p "$run" && cp -r "$store"/. "$run"/
    ls -a "$run" ;;
  *) echo "usage: $0 save|restore RUN_DIR" >&2; exit 2 ;;
esac
