"""Classic recommenders, one file each, all scored by the shared evaluator."""

from __future__ import annotations

from genrec.baselines.bert4rec import BERT4RecBaseline
from genrec.baselines.fmlp import FMLPBaseline
from genrec.baselines.gru4rec import GRU4RecBaseline
from genrec.baselines.pop import Pop
from genrec.baselines.sasrec import SASRecBCE, SASRecCE
from genrec.baselines.tiger import TigerBaseline
from genrec.cf.dccf import DCCFBaseline
from genrec.cf.lightgcn import LightGCNBaseline

#: name -> model class; each has ``fit(dataset, seed=...)``, ``score(histories, users)``,
#: ``save(folder)`` and ``load(folder)``.
BASELINES = {
    "pop": Pop,
    "sasrec": SASRecBCE,
    "sasrec-ce": SASRecCE,
    "bert4rec": BERT4RecBaseline,
    "gru4rec": GRU4RecBaseline,
    "fmlp": FMLPBaseline,
    "lightgcn": LightGCNBaseline,
    "dccf": DCCFBaseline,
    "tiger": TigerBaseline,  # needs config {index: FOLDER}: TIGER-style encoder-decoder on that index's codes
}
