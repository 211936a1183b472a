"""The nearest known products for a prompt's context, leaving a training record out of its own.

Leave-one-out is what keeps training honest: a training record's context must never hold its own
description, or the model learns to copy it (and at test time there is nothing to copy).
:func:`neighbours` with ``leave_out=record`` drops records with the same uid, the same normalised
title (the same product under another uid) and the same description (a duplicate listing).

Example::

    neighbours(open_index("data/prepared"), "Girls Ballet Tutu Pink", 3)  # -> [Hit(...), ...]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from productdesc.retrieval.index import Hit

__all__ = ["neighbours"]


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
