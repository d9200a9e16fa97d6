"""genrec: LLM-based generative recommendation on one data pipeline and one evaluator.

The Python API, imported on first use so ``import genrec`` stays cheap (no torch):

- ``GenerativeRecommender``: ``from_pretrained(folder)``, ``recommend(history, k)``,
  ``recommend_batch(histories, k)``, ``save_pretrained(folder)``, ``load(model_dir, index_dir)``;
- ``run`` (a run config's stages) and ``load_config`` (read and check a run config);
- ``Evaluator``: the shared evaluator every model is scored by;
- ``BASELINES`` (name -> classic recommender class) and ``INDEXERS`` (name -> item indexer class).
"""

from __future__ import annotations

import importlib

from genrec.version import __version__

#: public name -> "module:attribute", imported the first time it is asked for
_LAZY = {
    "GenerativeRecommender": "genrec.decode.recommender:GenerativeRecommender",
    "run": "genrec.pipeline:run",
    "load_config": "genrec.config:load_config",
    "Evaluator": "genrec.evaluate:Evaluator",
    "BASELINES": "genrec.registry:BASELINES",
    "INDEXERS": "genrec.index.registry:INDEXERS",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
