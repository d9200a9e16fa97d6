"""Classic recommenders, one file each, all scored by the shared evaluator.

``BASELINES`` (name -> class) and the classes themselves are imported on first use, torch with
them; ``SPECS`` and the settings classes need only pydantic, so a run config's baselines are
checked before any stage runs (:func:`genrec.config.load_config`).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from pydantic import BaseModel

from genrec.baselines.configs import BERT4RecConfig, FMLPConfig, GRU4RecConfig, SASRecConfig, TigerConfig
from genrec.cf.configs import DCCFConfig, LightGCNConfig


class Spec(NamedTuple):
    """A baseline: its class, imported on use, and its model settings (the class's ``config_cls``)."""

    cls: str  #: "module:Class"
    config: type[BaseModel] | None  #: None: no settings at all; otherwise neural, also taking TrainConfig settings


#: name -> :class:`Spec`. Each class has ``fit(dataset, seed=...)``, ``score(histories, users)``,
#: ``save(folder)`` and ``load(folder)``; the neural ones are built as ``cls(config, train)``.
SPECS: dict[str, Spec] = {
    "pop": Spec("genrec.baselines.pop:Pop", None),
    "sasrec": Spec("genrec.baselines.sasrec:SASRecBCE", SASRecConfig),
    "sasrec-ce": Spec("genrec.baselines.sasrec:SASRecCE", SASRecConfig),
    "bert4rec": Spec("genrec.baselines.bert4rec:BERT4RecBaseline", BERT4RecConfig),
    "gru4rec": Spec("genrec.baselines.gru4rec:GRU4RecBaseline", GRU4RecConfig),
    "fmlp": Spec("genrec.baselines.fmlp:FMLPBaseline", FMLPConfig),
    "lightgcn": Spec("genrec.cf.lightgcn:LightGCNBaseline", LightGCNConfig),
    "dccf": Spec("genrec.cf.dccf:DCCFBaseline", DCCFConfig),
    # needs config {index: FOLDER}: TIGER-style encoder-decoder on that index's codes
    "tiger": Spec("genrec.baselines.tiger:TigerBaseline", TigerConfig),
}


def _import(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str) -> object:
    """``BASELINES`` (name -> class, in ``SPECS`` order) and the classes by name (``Pop``,
    ``SASRecCE``, ...), imported the first time they are asked for."""
    if name == "BASELINES":
        value: object = {n: _import(s.cls) for n, s in SPECS.items()}
    else:
        path = next((s.cls for s in SPECS.values() if s.cls.endswith(f":{name}")), None)
        if path is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = _import(path)
    globals()[name] = value
    return value
