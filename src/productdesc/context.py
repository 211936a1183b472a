"""Context from ``trn.json``: the nearest known products, for prompts that answer from them.

The ``"context"`` prompt template (:class:`~productdesc.prompts.ContextTemplate`) shows the model
the titles and descriptions of the products nearest to the one asked about, found by a
:class:`~productdesc.retrieval.RetrievalIndex` over the prepared train split. This module holds
what the template, the fine-tuner, the describer and the CLI share:

* :func:`open_index`: an index from an index directory or a prepared data directory;
* :func:`neighbours`: the ``k`` nearest products, optionally leaving one record out;
* :func:`build_index`: index a prepared directory's train split and save it beside the shards;
* :func:`bind_retriever`: a template that takes context, given its retriever.

Leave-one-out is what keeps training honest: a training record's context must never hold its own
description, or the model learns to copy it (and at test time there is nothing to copy).
:func:`neighbours` with ``leave_out=record`` drops records with the same uid, the same normalised
title (the same product under another uid) and the same description (a duplicate listing).

Example::

    index = build_index("data/prepared")            # writes data/prepared/retrieval
    index = open_index("data/prepared")             # loads it back (memory-mapped)
    neighbours(index, "Girls Ballet Tutu Pink", 3)  # -> [Hit(...), ...]

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from productdesc.data.manifest import MANIFEST_NAME
from productdesc.errors import UserError
from productdesc.retrieval import Analyzer, Hit, RetrievalIndex

__all__ = [
    "INDEX_DIR",
    "bind_retriever",
    "build_index",
    "check_retriever",
    "neighbours",
    "open_index",
    "uses_context",
]

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


def uses_context(template: Any) -> bool:
    """Whether ``template`` (an object, a class or a registered name) shows retrieved context.

    A template says so with a true class attribute ``uses_context`` and offers
    ``with_retriever(retriever)``, as :class:`~productdesc.prompts.ContextTemplate` does.
    """
    if isinstance(template, str):
        from productdesc.plugins import templates

        template = templates.get(template)
    return bool(getattr(template, "uses_context", False))


def bind_retriever(template: Any, retriever: Any = None, *, default: Any = None) -> Any:
    """``template`` set to find its context with ``retriever``, when it takes context.

    Args:
        template: A template object.
        retriever: What :func:`open_index` accepts, or ``None``: the template's own retriever,
            else ``default``.
        default: The fallback source (a prepared data directory), or ``None``.

    Raises:
        UserError: See :func:`check_retriever`.
    """
    if not uses_context(template):
        check_retriever(template, retriever)  # refuses an index it would ignore
        return template
    if retriever is None and getattr(template, "retriever", None) is not None:
        return template
    source = retriever if retriever is not None else default
    check_retriever(template, source)
    return template.with_retriever(open_index(source))


def check_retriever(template: Any, retriever: Any) -> None:
    """Check that a template and a retriever go together, before anything slow happens.

    Args:
        template: A template object or a registered name.
        retriever: The index (or its directory) to be used, or ``None``.

    Raises:
        UserError: A retriever for a template that shows no context (it would be ignored), or
            a template that shows context with neither a retriever nor one of its own.
    """
    name = template if isinstance(template, str) else template.name
    if not uses_context(template):
        if retriever is not None:
            raise UserError(
                f"a retrieval index was given, but the {name!r} prompt template shows no "
                f"context; train and answer with the 'context' template to use one"
            )
    elif retriever is None and getattr(template, "retriever", None) is None:
        raise UserError(
            f"the {name!r} prompt template answers from similar products and needs a retrieval "
            f"index: build one with `productdesc index DATA`, then pass it as retriever= "
            f"(Python) or --context INDEX (command line)"
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


def neighbours(
    retriever: Any,
    title: str,
    k: int,
    *,
    leave_out: Mapping[str, Any] | None = None,
    same_description: bool = True,
) -> list[Hit]:
    """Up to ``k`` known products nearest to ``title``, best first, for a prompt's context.

    Hits that share no word with ``title`` (score 0) are dropped, as are hits with an empty
    description and hits whose description repeats a better hit's (one listing under several
    titles): context is for information, and its character budget is small. So fewer than
    ``k`` may come back, or none.

    Args:
        retriever: Anything with :meth:`RetrievalIndex.search`'s signature.
        title: The product asked about (the query).
        k: How many neighbours at most.
        leave_out: A record (``uid``, ``title``, ``content``) that must not appear in its own
            context: hits with its uid, its normalised title or its exact description (after
            collapsing whitespace) are skipped. For training data; ``None`` at answer time.
        same_description: With ``leave_out``, also skip other listings (another uid and title:
            another edition or format) whose description is the record's own, word for word.
            ``False`` keeps them, so training shows what a test record meets when another
            edition of it is known (see ``docs/results/context-600``).
    """
    if leave_out is None:
        uid = own_title = own_content = None
    else:
        uid = None if leave_out.get("uid") is None else str(leave_out["uid"])
        own_title = leave_out.get("title") or title
        own_content = _collapse(leave_out.get("content")) if same_description else None
    fetch = k
    while True:
        hits = retriever.search(title, fetch, exclude_uid=uid, exclude_title=own_title)
        kept, seen = [], {own_content}
        for hit in hits:
            content = _collapse(hit.content)
            if hit.score <= 0 or not content or content in seen:
                continue
            seen.add(content)
            kept.append(hit)
        # Stop once k survive, or the index has no more (fewer hits than asked), or only
        # unrelated records are left (a score of 0 ranks after every match).
        if len(kept) >= k or len(hits) < fetch or (hits and hits[-1].score <= 0):
            return kept[:k]
        fetch *= 2


def _collapse(text: Any) -> str | None:
    return " ".join(text.split()) if isinstance(text, str) else None
