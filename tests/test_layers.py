"""The import contract: genrec's layers flow one way (docs/design.md, "Layers").

Every import in every module counts, at module level or inside a function (a lazy import is still
an edge), under ``TYPE_CHECKING`` too, and so does a ``"genrec.x.y:Name"`` string, the form the
registries import a class by on first use. The table below is the contract's one statement.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import genrec

#: bottom to top: (layer, its units). A unit is genrec's top-level module or subpackage (``genrec``
#: itself is the package's ``__init__``). A module may import its own unit and the units of lower
#: layers; in the foundation, only the units before its own (the order is the one they build on each
#: other in); the units of one other layer are siblings and import none of each other; the top may
#: import anything. ``evaluate`` is foundation: every trainer's validation ranks through it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("version", "errors", "device", "safefiles", "artifacts", "data", "evaluate", "training")),
    ("models", ("baselines", "cf")),
    ("index", ("index",)),
    ("llm", ("llm",)),
    ("decode", ("decode",)),
    ("serve", ("serve",)),
    ("top", ("config", "registry", "stages", "pipeline", "report", "cli", "genrec", "__main__")),
]
LEVEL = {unit: n for n, (_, units) in enumerate(LAYERS) for unit in units}
FOUNDATION = LAYERS[0][1]
TOP = len(LAYERS) - 1
#: a registry's "module:Class" entry, imported with importlib on first use
LAZY_CLASS = re.compile(r"^(genrec(?:\.\w+)+):\w+$")


class Edge(NamedTuple):
    importer: str  #: dotted module name
    imported: str  #: dotted module name
    where: str  #: path:line


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_edges(root: Path) -> list[Edge]:
    """Every import of the package at ``root`` (a folder named after it) of its own modules."""
    package = root.name
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = []
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                # ``from genrec import pipeline`` imports the module genrec.pipeline, not genrec's __init__
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := LAZY_CLASS.match(node.value)):
                targets = [m.group(1)]
            edges += [Edge(name, t, f"{path}:{node.lineno}") for t in targets if t.split(".")[0] == package]
    return edges


def rule_broken(importer: str, imported: str) -> str | None:
    """What ``importer`` importing ``imported`` breaks, or None."""
    a, b = unit(importer), unit(imported)
    for u in (a, b):
        if u not in LEVEL:
            return f"{u!r} is in no layer: add it to the table in tests/test_layers.py and docs/design.md"
    if a == b or LEVEL[a] == TOP:
        return None
    if LEVEL[a] == 0:
        if LEVEL[b] == 0 and FOUNDATION.index(b) < FOUNDATION.index(a):
            return None
        return f"foundation imports only the foundation modules before its own ({', '.join(FOUNDATION)})"
    if LEVEL[b] == LEVEL[a]:
        return f"{a} and {b} are siblings in the {LAYERS[LEVEL[a]][0]} layer and import neither each other"
    if LEVEL[b] > LEVEL[a]:
        return f"layer {LAYERS[LEVEL[a]][0]} imports only lower layers, not {LAYERS[LEVEL[b]][0]}"
    return None


def violations(edges: list[Edge]) -> list[str]:
    return [f"{e.importer} imports {e.imported} ({e.where}): {why}"
            for e in edges if (why := rule_broken(e.importer, e.imported)) is not None]


def test_the_layers_flow_one_way():
    root = Path(genrec.__file__).parent
    edges = import_edges(root)
    assert len(edges) > 100  # the scan sees the package
    problems = violations(edges)
    assert not problems, "import contract broken:\n" + "\n".join(problems)


def test_the_check_catches_every_kind_of_violation(tmp_path):
    """A small fake genrec: each rule broken once (one import inside a function, one relative, one a
    registry string), beside imports the contract allows."""
    files = {
        "__init__.py": "from genrec import pipeline\n",
        "errors.py": "",
        "pipeline.py": "import genrec.serve.app\n",
        "data/__init__.py": "from genrec.errors import DataError\nfrom .. import evaluate\n",
        "evaluate/__init__.py": "import genrec.data\n",
        "cf/graph.py": "from genrec.baselines.trainer import fit\n",
        "baselines/__init__.py": 'SPECS = {"tiger": "genrec.decode.tiger:TigerBaseline"}\n',
        "baselines/trainer.py": "from genrec import evaluate\n",
        "index/stage.py": "def build():\n    from genrec.llm.backbone import embed\n",
        "llm/backbone.py": "from genrec.index import stage\n",
        "decode/tiger.py": "from genrec.baselines import trainer\nfrom . import beam\n",
        "decode/beam.py": "",
        "serve/app.py": "from genrec.decode.tiger import x\n",
        "extra.py": "",
    }
    for name, text in files.items():
        path = tmp_path / "genrec" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    edges = import_edges(tmp_path / "genrec")
    assert len(edges) == 13
    broken = {(e.importer, e.imported): rule_broken(e.importer, e.imported) for e in edges}
    assert {k for k, why in broken.items() if why} == {
        ("genrec.data", "genrec.evaluate"),  # foundation upwards, relative
        ("genrec.cf.graph", "genrec.baselines.trainer"),  # siblings
        ("genrec.baselines", "genrec.decode.tiger"),  # upwards, by a registry string
        ("genrec.index.stage", "genrec.llm.backbone"),  # upwards, inside a function
    }
    assert "foundation" in broken["genrec.data", "genrec.evaluate"]
    assert "siblings" in broken["genrec.cf.graph", "genrec.baselines.trainer"]
    assert "not decode" in broken["genrec.baselines", "genrec.decode.tiger"]
    message = "\n".join(violations(edges))
    assert "genrec.index.stage imports genrec.llm.backbone (" in message and "stage.py:2)" in message
    # a module outside the table is a violation too (here the fake tree's extra.py, once imported)
    assert "in no layer" in rule_broken("genrec.extra", "genrec.errors")
