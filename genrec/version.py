"""The library's version, apart from the package (:mod:`genrec`, the top layer) so that the
artifact manifests, which are foundation, can record it."""

__version__ = "0.1.0"
