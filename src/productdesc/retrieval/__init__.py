"""Retrieval: the known products nearest to a title, for context and for the copy baseline.

* :mod:`~productdesc.retrieval.index`: :class:`RetrievalIndex`, BM25 over train titles;
* :mod:`~productdesc.retrieval.store`: an index built from a prepared directory and opened again;
* :mod:`~productdesc.retrieval.neighbours`: the ``k`` nearest for a prompt, leaving a training
  record out of its own context.

It knows records and titles, not prompts or models.
"""

from productdesc.retrieval.index import Analyzer, Hit, RetrievalIndex, normalize_title
from productdesc.retrieval.neighbours import neighbours
from productdesc.retrieval.store import INDEX_DIR, build_index, open_index

__all__ = [
    "INDEX_DIR",
    "Analyzer",
    "Hit",
    "RetrievalIndex",
    "build_index",
    "neighbours",
    "normalize_title",
    "open_index",
]
