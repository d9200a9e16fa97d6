from __future__ import annotations

from pathlib import Path

import pytest

from genrec.cli import main

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(name: str) -> Path:
    """Path of a benchmark dataset under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"benchmark data {path} is absent (it lives in ../shared/data beside the repo)")
    return path


@pytest.fixture
def cli(capsys):
    """Run the genrec CLI in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def real_tokenizer(tmp_path_factory):
    """The default backbone's real tokenizer (read once from the GGUF file, then from a folder)."""
    pytest.importorskip("transformers")
    from genrec.llm.backbone import load_tokenizer

    tok = load_tokenizer("default")
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def tokenizer(real_tokenizer):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_tokenizer)
