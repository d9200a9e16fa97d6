"""Classic recommenders, one file each, all scored by the shared evaluator."""

from __future__ import annotations

from genrec.baselines.pop import Pop

#: name -> model class; each has ``fit(dataset)``, ``score(histories, users)``, ``save``/``load``.
BASELINES = {"pop": Pop}
