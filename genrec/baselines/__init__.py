"""Classic recommenders, one file each, all scored by the shared evaluator.

``SPECS`` and the settings classes need only pydantic; the classes are imported on first use (torch
with them), by name (``Pop``, ``SASRecCE``, ...). The registry of every model a run config can name
as a baseline (these, the graph models of :mod:`genrec.cf` and TIGER) is :mod:`genrec.registry`.
"""

from __future__ import annotations

from genrec.baselines.configs import BERT4RecConfig, FMLPConfig, GRU4RecConfig, SASRecConfig
from genrec.training.config import Spec

#: name -> :class:`~genrec.training.config.Spec`. Each class has ``fit(dataset, seed=...)``,
#: ``score(histories, users)``, ``save(folder)`` and ``load(folder)``; the neural ones are built as
#: ``cls(config, train)``.
SPECS: dict[str, Spec] = {
    "pop": Spec("genrec.baselines.pop:Pop", None),
    "sasrec": Spec("genrec.baselines.sasrec:SASRecBCE", SASRecConfig),
    "sasrec-ce": Spec("genrec.baselines.sasrec:SASRecCE", SASRecConfig),
    "bert4rec": Spec("genrec.baselines.bert4rec:BERT4RecBaseline", BERT4RecConfig),
    "gru4rec": Spec("genrec.baselines.gru4rec:GRU4RecBaseline", GRU4RecConfig),
    "fmlp": Spec("genrec.baselines.fmlp:FMLPBaseline", FMLPConfig),
}


def __getattr__(name: str) -> object:
    """The classes by name (``Pop``, ``SASRecCE``, ...), imported the first time they are asked for."""
    spec = next((s for s in SPECS.values() if s.cls.endswith(f":{name}")), None)
    if spec is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = spec.load()
    return value
