"""Benchmarks that run each side in its own process (so peak memory is its own): the child prints
one ``RESULT {json}`` line, the parent runs it and reads that line back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PREFIX = "RESULT "


def report(result: dict) -> None:
    """In the child: hand ``result`` to the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(cmd: list[str], which: str) -> dict:
    """In the parent: run ``cmd`` (this interpreter, the environment as it is) and return its result;
    exit with the child's stderr tail if it failed."""
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=os.environ.copy())
    lines = [x for x in proc.stdout.splitlines() if x.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{which} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(PREFIX) :])
