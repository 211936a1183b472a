"""Copy when retrieval is sure, generate otherwise: a describer that knows when to look it up.

The catalogue lists one product many times: editions, volumes and formats under other titles,
with the same description word for word. For such a title no generator beats the known
description, and retrieval finds it; for a new product the retrieved description is another
product's, and a tuned model writes better. :class:`HybridDescriber` switches per title on
the nearest known title's BM25 score: at or above :attr:`HybridDescriber.threshold` it returns
that product's description, below it asks its :class:`~productdesc.generation.describer.Describer`.

The threshold is learned on validation records with :func:`fit_copy_threshold`, from the
retrieval score of each record, and how well copying and generating each answer it::

    describer = Describer.from_pretrained("run/")
    index = open_index("data/")                                # the train split
    threshold = fit_copy_threshold(scores, copy_rouge, generated_rouge)
    hybrid = HybridDescriber(describer, index, threshold)
    hybrid.describe("The Times Cryptic Crossword Book 19")      # copied or written

This module imports neither torch nor transformers (the describer it wraps does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from productdesc.errors import UserError
from productdesc.generation.description import Description

__all__ = ["HybridDescriber", "fit_copy_threshold", "sure_copies"]


def fit_copy_threshold(
    scores: Sequence[float], copy_quality: Sequence[float], generated_quality: Sequence[float]
) -> float:
    """The retrieval score above which copying beats generating most, on validation records.

    Each candidate threshold is one of the observed scores (and "never copy", ``inf``); the
    one with the highest mean quality of the switched answers wins, the higher one on a tie
    (copying is a claim that the products are the same: make it only where it pays).

    Args:
        scores: Each record's nearest known title's retrieval score.
        copy_quality: How good the copied description is for each record (e.g. ROUGE-L).
        generated_quality: How good the generated answer is for each record.

    Raises:
        UserError: The three sequences differ in length, or are empty.
    """
    n = len(scores)
    if n == 0 or len(copy_quality) != n or len(generated_quality) != n:
        raise UserError(
            f"fit_copy_threshold needs as many scores, copy and generated qualities, at "
            f"least one; got {len(scores)}, {len(copy_quality)} and {len(generated_quality)}"
        )
    order = sorted(range(n), key=lambda i: -scores[i])
    best_gain, best = 0.0, float("inf")
    gain = 0.0
    # Lowering the threshold past a score copies that record: the gain is copy - generated.
    for rank, i in enumerate(order):
        gain += copy_quality[i] - generated_quality[i]
        tied_next = rank + 1 < n and scores[order[rank + 1]] == scores[i]
        if not tied_next and gain > best_gain:
            best_gain, best = gain, float(scores[i])
    return best


def sure_copies(index: Any, titles: Sequence[str], threshold: float) -> list[Description | None]:
    """For each title, the nearest known product's description where its retrieval score is at
    least ``threshold`` (``source == "retrieval"``, no new tokens, ended), else ``None``: the
    titles a :class:`HybridDescriber` copies, and what it copies.

    Args:
        index: The known products (anything with a ``search_batch`` like
            :class:`~productdesc.retrieval.RetrievalIndex`'s).
        titles: The titles to answer.
        threshold: The BM25 score to reach; ``inf`` copies nothing.
    """
    hits = index.search_batch(list(titles), 1) if titles else []
    return [
        Description(text=found[0].content, stopped_at_eos=True, new_tokens=0, source="retrieval")
        if found and found[0].score >= threshold
        else None
        for found in hits
    ]


class HybridDescriber:
    """Answers with the nearest known product's description when it is surely the same product.

    Args:
        describer: What writes the answers that are not copied.
        index: The known products (a :class:`~productdesc.retrieval.RetrievalIndex`, or
            anything with its ``search_batch``).
        threshold: The BM25 score at or above which the nearest title's description is the
            answer (see :func:`fit_copy_threshold`); ``inf`` never copies.

    Attributes:
        describer: See above.
        index: See above.
        threshold: See above.
    """

    def __init__(self, describer: Any, index: Any, threshold: float) -> None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise UserError(f"threshold must be a number, got {threshold!r}")
        self.describer = describer
        self.index = index
        self.threshold = float(threshold)

    @property
    def template(self) -> Any:
        """The describer's prompt template (a copied answer has no prompt, but is asked with it)."""
        return self.describer.template

    @property
    def tokenizer(self) -> Any:
        """The describer's tokenizer."""
        return self.describer.tokenizer

    @property
    def generation(self) -> Any:
        """The describer's decoding settings."""
        return self.describer.generation

    def describe(self, title: str, question: str | None = None, **overrides: Any) -> str:
        """One title's answer: copied or generated (see :meth:`describe_batch`)."""
        questions = None if question is None else [question]
        return self.describe_batch([title], questions, **overrides)[0]

    def stream(self, title: str, question: str | None = None, **overrides: Any) -> Iterator[str]:
        """One title's answer in pieces: a copied description as one piece, else the
        describer's :meth:`~productdesc.generation.describer.Describer.stream` (closing the
        iterator stops its generation)."""
        (copied,) = sure_copies(self.index, [title], self.threshold)
        if copied is None:
            return self.describer.stream(title, question, **overrides)
        return _pieces(copied.text)

    def describe_batch(
        self,
        titles: Sequence[str],
        questions: Sequence[str | None] | None = None,
        *,
        progress: bool = False,
        return_details: bool = False,
        **overrides: Any,
    ) -> list[Any]:
        """Answers for ``titles``, in order, as :meth:`Describer.describe_batch
        <productdesc.generation.describer.Describer.describe_batch>` gives them.

        With ``return_details``, :class:`~productdesc.generation.describer.Description` objects: a copied
        answer has ``source == "retrieval"``, ``new_tokens == 0`` and counts as
        ended (``stopped_at_eos``): it is a whole description. The others are the describer's,
        generated together in one :meth:`~productdesc.generation.describer.Describer.describe_batch`.
        """
        if questions is not None and len(questions) != len(titles):
            raise UserError(f"got {len(titles)} titles but {len(questions)} questions")
        results: list[Any] = sure_copies(self.index, titles, self.threshold)
        todo = [i for i, copied in enumerate(results) if copied is None]
        if todo:
            asked = None if questions is None else [questions[i] for i in todo]
            written = self.describer.describe_batch(
                [titles[i] for i in todo],
                asked,
                progress=progress,
                return_details=True,
                **overrides,
            )
            for i, description in zip(todo, written, strict=True):
                results[i] = description
        return results if return_details else [d.text for d in results]


def _pieces(text: str) -> Iterator[str]:
    # A generator, not iter([text]): a stream's reader may close() it.
    yield text
