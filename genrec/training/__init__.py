"""What the neural models of every layer share: the training loop (:mod:`genrec.training.trainer`,
imported with torch) and its settings and model specs (:mod:`genrec.training.config`, pydantic only).

It is foundation, below the model packages, because ``genrec.baselines`` and ``genrec.cf`` are
siblings that may not import each other, yet both train through the same loop.
"""
