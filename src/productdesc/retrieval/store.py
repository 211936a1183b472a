"""A retrieval index on disk: built from a prepared directory's train split, opened again.

Only the train split belongs in an index used for evaluation: then no test record's own
description can reach its context. A prepared data directory keeps its index in
``DATA/retrieval`` (:data:`INDEX_DIR`).

Example::

    index = build_index("data/prepared")            # writes data/prepared/retrieval
    index = open_index("data/prepared")             # loads it back (memory-mapped)

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from productdesc.data.manifest import MANIFEST_NAME
from productdesc.errors import UserError
from productdesc.retrieval.index import Analyzer, RetrievalIndex

__all__ = ["INDEX_DIR", "build_index", "open_index"]

logger = logging.getLogger(__name__)

INDEX_DIR = "retrieval"
"""Where a prepared data directory keeps its index (``DATA/retrieval``)."""

_INDEX_META = "index.json"


def open_index(source: Any, *, show_progress: bool = True) -> RetrievalIndex:
    """The retrieval index ``source`` names.

    Args:
        source: A :class:`~productdesc.retrieval.RetrievalIndex` (returned as is), an index
            directory (written by :meth:`RetrievalIndex.save` or ``productdesc index``), or a
            prepared data directory: its saved ``retrieval/`` index, else its train split,
            indexed in memory (slow for a large split: save one with :func:`build_index`).
        show_progress: Show tqdm bars when indexing.

    Raises:
        UserError: ``source`` is neither an index nor a prepared directory.
    """
    if isinstance(source, RetrievalIndex):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"a retriever is a RetrievalIndex or a directory, not {type(source).__name__}"
        )
    path = Path(source)
    if (path / _INDEX_META).is_file():
        return RetrievalIndex.load(path)
    if (path / INDEX_DIR / _INDEX_META).is_file():
        return RetrievalIndex.load(path / INDEX_DIR)
    if (path / MANIFEST_NAME).is_file():
        logger.info(
            "no saved index in %s; indexing the train split (save one with `productdesc index %s`)",
            path / INDEX_DIR,
            path,
        )
        return RetrievalIndex.from_prepared(path, "train", show_progress=show_progress)
    raise UserError(
        f"{path} is neither a retrieval index nor a prepared data directory; build an index with "
        f"`productdesc index DATA` (DATA: a directory written by `productdesc prepare`)"
    )


def build_index(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    analyzer: Analyzer | None = None,
    show_progress: bool = True,
) -> RetrievalIndex:
    """Index one split of a prepared directory and save it (default: ``DATA/retrieval``).

    Only the train split belongs in an index used for evaluation: then no test record's own
    description can reach its context.

    Raises:
        UserError: ``data_dir`` is not a prepared directory, or the split holds no usable record.
    """
    data_dir = Path(data_dir)
    if not (data_dir / MANIFEST_NAME).is_file():
        raise UserError(f"{data_dir} is not a prepared data directory (no {MANIFEST_NAME})")
    index = RetrievalIndex.from_prepared(
        data_dir, split, analyzer=analyzer, show_progress=show_progress
    )
    index.save(Path(out_dir) if out_dir is not None else data_dir / INDEX_DIR)
    return index
