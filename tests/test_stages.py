"""Every stage lives in genrec/stages.py (docs/design.md, "Stages, artifacts and manifests")."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import genrec
import genrec.stages


def test_every_stage_is_defined_in_genrec_stages():
    names = [n for n in genrec.stages.__all__ if n.startswith("stage_")]
    assert len(names) >= 11
    for name in names:
        fn = getattr(genrec.stages, name)
        assert fn.__module__ == "genrec.stages", name
        assert Path(inspect.getsourcefile(fn)).name == "stages.py"
        if name != "stage_cache":  # the cache build is versioned and resumable itself: no force
            assert inspect.signature(fn).parameters["force"].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_no_stage_is_defined_elsewhere():
    root = Path(genrec.__file__).parent
    home = root / "stages.py"
    defined = {node.name for node in ast.walk(ast.parse(home.read_text())) if isinstance(node, ast.FunctionDef)
               and node.name.startswith("stage_")}
    assert defined == {n for n in genrec.stages.__all__ if n.startswith("stage_")}
    elsewhere = [f"{path.relative_to(root)}: {node.name}" for path in sorted(root.rglob("*.py")) if path != home
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("stage_")]
    assert not elsewhere, f"stages defined outside genrec/stages.py: {elsewhere}"
