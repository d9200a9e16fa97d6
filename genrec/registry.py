"""Every model a run config (``baselines``, ``train.distill.teacher``, ``cf.model``) or
``genrec baselines`` names, in one registry.

It is assembled here, on top, because its members live in four layers: the classic models
(:mod:`genrec.baselines`), the graph models (:mod:`genrec.cf`, a sibling the baselines may not
import), CLLM4Rec and CLLM4Rec-Emb (:mod:`genrec.llm.cllm4rec`, an LLM with user/item tokens) and
TIGER (:mod:`genrec.decode.tiger`, which ranks by constrained beam search). ``SPECS``
needs only pydantic, so a run config is checked before any stage runs; ``BASELINES`` (name ->
class) imports the classes, torch with them, the first time it is asked for.
"""

from __future__ import annotations

from genrec.baselines import SPECS as CLASSIC
from genrec.cf import SPECS as GRAPH
from genrec.decode.configs import TigerConfig
from genrec.llm.config import CLLM4RecConfig, CLLM4RecEmbConfig, SASRecLLMConfig
from genrec.training.config import Spec

#: name -> :class:`~genrec.training.config.Spec`, the user-facing baseline names in listing order
SPECS: dict[str, Spec] = {
    **CLASSIC,
    **GRAPH,
    # needs config {index: FOLDER}: TIGER-style encoder-decoder on that index's codes
    "tiger": Spec("genrec.decode.tiger:TigerBaseline", TigerConfig),
    # an LLM with user/item tokens (config.variant: cllm4rec, prerec, ftall, scratch)
    "cllm4rec": Spec("genrec.llm.cllm4rec:CLLM4Rec", CLLM4RecConfig),
    # a two-tower model over a fitted cllm4rec's token embeddings (config.source, or genrec run's cllm4rec)
    "cllm4rec-emb": Spec("genrec.llm.cllm4rec_emb:CLLM4RecEmb", CLLM4RecEmbConfig),
    # SASRec over the items' LLM text embeddings (config.mode: add or replace; the encoder's cache)
    "sasrec-llm": Spec("genrec.llm.sasrec_llm:SASRecLLMBaseline", SASRecLLMConfig),
}

#: the baselines that read item text: with a run's ``tags`` section they read the tagged dataset
READS_ITEM_TEXT = ("sasrec-llm", "cllm4rec")

#: behaviour model of the cf stage -> the baseline it trains (its class, model and trainer settings)
EMBEDDING_MODELS: dict[str, str] = {
    "dccf": "dccf",
    "lightgcn": "lightgcn",
    "sasrec": "sasrec-ce",
}


def __getattr__(name: str) -> object:
    """``BASELINES`` (name -> class, in ``SPECS`` order), imported the first time it is asked for."""
    if name != "BASELINES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = {n: s.load() for n, s in SPECS.items()}
    return value
