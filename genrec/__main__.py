"""``python -m genrec`` (and ``accelerate launch -m genrec train ...``)."""

from genrec.cli import entry

entry()
