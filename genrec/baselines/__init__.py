"""Classic recommenders, one file each, all scored by the shared evaluator."""

from __future__ import annotations

from genrec.baselines.pop import Pop
from genrec.baselines.sasrec import SASRecBCE, SASRecCE

#: name -> model class; each has ``fit(dataset, seed=...)``, ``score(histories, users)``,
#: ``save(folder)`` and ``load(folder)``.
BASELINES = {"pop": Pop, "sasrec": SASRecBCE, "sasrec-ce": SASRecCE}
