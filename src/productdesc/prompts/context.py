"""Alpaca with the nearest known products as context (:class:`ContextTemplate`, ``"context"``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import attrs
from attrs import field, frozen
from attrs import validators as v

from productdesc.errors import UserError
from productdesc.prompts.alpaca import ALPACA_PREAMBLE, PromptTemplate
from productdesc.prompts.base import TemplateError, _text, templates
from productdesc.retrieval.neighbours import neighbours
from productdesc.retrieval.store import open_index

__all__ = [
    "CONTEXT_PROMPT",
    "NO_CONTEXT",
    "ContextTemplate",
    "bind_retriever",
    "check_retriever",
    "uses_context",
]

CONTEXT_PROMPT = (
    ALPACA_PREAMBLE + "\n\n### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n"
    "### Input:\n{title}\n\n### Response:\n{response}"
)
"""The Alpaca prompt with a ``### Context:`` section of similar products before the input."""


NO_CONTEXT = "No similar product is known."
"""The context section's text when the retriever finds no related product."""


@templates.builtin("context")
@frozen(kw_only=True)
class ContextTemplate(PromptTemplate):
    """Alpaca with context (:data:`CONTEXT_PROMPT`): similar known products, then the title.

    The ``### Context:`` section lists up to :attr:`k` products nearest to the title in a
    retrieval index (:mod:`productdesc.retrieval`), best match first, each as a ``Product:`` line
    and a ``Description:`` line; the descriptions share :attr:`max_context_chars`. The model
    learns to write the asked product's description from its neighbours'.

    Context comes from :attr:`retriever` (bind one with :meth:`with_retriever` or
    ``get_template("context", retriever=index)``) or is passed to :meth:`render` as ``context``.
    :meth:`training_pairs` leaves every record out of its own context (its uid, its normalised
    title and, unless :attr:`leave_out_same_description` is off, its exact description), so
    the model never learns to copy the answer from it.

    Attributes:
        k: Neighbours shown at most (fewer when fewer share a word with the title).
        max_context_chars: Characters the neighbours' descriptions may take together: each gets
            an equal share, and what a short one leaves goes to the longer ones; a description
            over its share is cut at a word and ends with "…". Titles are not counted.
        retriever: What finds the neighbours: a :class:`~productdesc.retrieval.RetrievalIndex`
            or anything with its ``search``. Not compared, not shown in ``repr``.
        leave_out_same_description: Training pairs also leave out other listings (another uid
            and title) whose description is the record's own, word for word. ``False`` keeps
            them: another edition's identical description is then the answer in the context,
            as it is for a test record whose other edition is in the index.
        instruction: See :class:`PromptTemplate`.
        eos_token: See :class:`BaseTemplate`.
        questions: See :class:`BaseTemplate`.

    >>> t = ContextTemplate(eos_token="</s>")
    >>> print(t.render("Tutu Blue", context=[{"title": "Tutu Pink", "content": "A pink tutu."}])
    ...       .split("### Context:\\n")[1])
    Product: Tutu Pink
    Description: A pink tutu.
    <BLANKLINE>
    ### Input:
    Tutu Blue
    <BLANKLINE>
    ### Response:
    <BLANKLINE>
    """

    name: ClassVar[str] = "context"
    uses_context: ClassVar[bool] = True  # what Describer and LoraFineTuner look for

    # 3 x ~400 characters: about 300 tokens of context, so prompt and answer fit in 768 tokens.
    k: int = field(default=3, validator=[v.instance_of(int), v.ge(1)])
    max_context_chars: int = field(default=1200, validator=[v.instance_of(int), v.ge(1)])
    retriever: Any = field(default=None, eq=False, repr=False)
    leave_out_same_description: bool = field(default=True, validator=v.instance_of(bool))

    def with_retriever(self, retriever: Any) -> ContextTemplate:
        """This template finding its context with ``retriever``."""
        return attrs.evolve(self, retriever=retriever)

    def render(
        self,
        title: str,
        question: str | None = None,
        description: str | None = None,
        *,
        context: Iterable[Any] | None = None,
    ) -> str:
        """See :meth:`BaseTemplate.render`.

        Args:
            title: The product title.
            question: A user's question; replaces the instruction.
            description: The answer to train on.
            context: The neighbours to show: :class:`~productdesc.retrieval.Hit` objects or
                mappings with ``title`` and ``content``, best first. ``None``: ask
                :attr:`retriever` for the title's neighbours.

        Raises:
            TemplateError: No ``context`` and no retriever, or a neighbour without text.
        """
        hits = self.context_for(_text(title, "title")) if context is None else context
        return self._fill(
            CONTEXT_PROMPT, title, question, description, context=self.format_context(hits)
        )

    def render_pair(
        self,
        title: str,
        description: str,
        question: str | None = None,
        *,
        context: Iterable[Any] | None = None,
    ) -> dict[str, str]:
        """See :meth:`BaseTemplate.render_pair`; ``context`` as in :meth:`render`, looked up once."""
        hits = self.context_for(_text(title, "title")) if context is None else list(context)
        prompt = self.render(title, question, context=hits)
        # The answer is the pattern's last field, so prompt + completion == render(..., description).
        return {"prompt": prompt, "completion": _text(description, "description") + self._eos()}

    def _serving_pair(self, title: str, description: str, question: str | None) -> dict[str, str]:
        # A chat client sends no retrieval context: served prompts say no product is known.
        return self.render_pair(title, description, question, context=())

    def training_pairs(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        question_share: float = 0.0,
        seed: int = 3407,
    ) -> Iterator[dict[str, str]]:
        """See :meth:`BaseTemplate.training_pairs`; each record is left out of its own context.

        Records may carry a ``uid``; without one, the title and description still leave the
        record out.

        Raises:
            TemplateError: As the base method, and at once when there is no retriever.
        """
        self._retriever()
        return super().training_pairs(records, question_share=question_share, seed=seed)

    def _record_pair(
        self, record: Mapping[str, Any], title: str, content: str, question: str | None
    ) -> dict[str, str]:
        context = self.context_for(title, leave_out=record)
        return self.render_pair(title, content, question, context=context)

    def context_for(self, title: str, *, leave_out: Mapping[str, Any] | None = None) -> list[Any]:
        """The title's neighbours from :attr:`retriever` (see :func:`productdesc.retrieval.neighbours.neighbours`).

        Args:
            title: The product title (the query).
            leave_out: A record that must not be its own context (training).
        """
        return neighbours(
            self._retriever(),
            title,
            self.k,
            leave_out=leave_out,
            same_description=self.leave_out_same_description,
        )

    def format_context(self, hits: Iterable[Any]) -> str:
        """The context section's text for ``hits`` (the first :attr:`k`), within the budget."""
        entries = []
        for i, hit in enumerate(hits):
            if i == self.k:
                break
            title, content = (
                (hit.get("title"), hit.get("content"))
                if isinstance(hit, Mapping)
                else (getattr(hit, "title", None), getattr(hit, "content", None))
            )
            entries.append(
                (_text(title, f"context {i} title"), _text(content, f"context {i} content"))
            )
        if not entries:
            return NO_CONTEXT
        texts = [" ".join(content.split()) for _, content in entries]
        shares = _fair_shares([len(t) for t in texts], self.max_context_chars)
        return "\n\n".join(
            f"Product: {' '.join(title.split())}\nDescription: {_clip(text, share)}"
            for (title, _), text, share in zip(entries, texts, shares, strict=True)
        )

    def _retriever(self) -> Any:
        if self.retriever is None:
            raise TemplateError(
                "the 'context' template has no retriever to find similar products with: pass "
                "retriever= (a RetrievalIndex or its directory) to Describer or LoraFineTuner, "
                "--context INDEX on the command line, or context= to render"
            )
        return self.retriever


def _fair_shares(lengths: list[int], budget: int) -> list[int]:
    """Characters per text: an equal share each, a short text's leftover going to longer ones."""
    shares = [0] * len(lengths)
    left = budget
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for done, i in enumerate(order):
        shares[i] = min(lengths[i], left // (len(order) - done))
        left -= shares[i]
    return shares


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, marked with "…"."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    if cut and not text[len(cut)].isspace():  # the cut splits a word: drop its start
        space = cut.rfind(" ")
        if space > limit // 2:  # unless the word is very long
            cut = cut[:space]
    return cut.rstrip() + "…"


def uses_context(template: Any) -> bool:
    """Whether ``template`` (an object, a class or a registered name) shows retrieved context.

    A template says so with a true class attribute ``uses_context`` and offers
    ``with_retriever(retriever)``, as :class:`~productdesc.prompts.ContextTemplate` does.
    """
    if isinstance(template, str):
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
