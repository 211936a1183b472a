"""The Alpaca template of the seed notebook (:class:`PromptTemplate`, registered as ``"alpaca"``)."""

from __future__ import annotations

from typing import ClassVar

from attrs import field, frozen

from productdesc.prompts.base import (
    _NEXT_SECTION,
    BaseTemplate,
    _cut,
    _formats_with,
    _strip_echo,
    _text,
    templates,
)

__all__ = ["ALPACA_PREAMBLE", "ALPACA_PROMPT", "PromptTemplate"]

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
ALPACA_PROMPT = (
    ALPACA_PREAMBLE + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{title}\n\n"
    "### Response:\n{response}"
)
"""The classic Alpaca prompt as Unsloth's notebooks (and the seed) write it."""


@templates.builtin("alpaca")
@frozen(kw_only=True)
class PromptTemplate(BaseTemplate):
    """The seed's Alpaca prompt (:data:`ALPACA_PROMPT`): instruction, the title as input, answer.

    A user's question takes the instruction's place; the title stays the input.

    Attributes:
        instruction: The instruction when no question is asked.
        eos_token: See :class:`BaseTemplate`.
        questions: See :class:`BaseTemplate`.

    >>> t = PromptTemplate(eos_token="</s>")
    >>> t.render("Nice for Mice", question="Is it safe for kids?").splitlines()[2:5]
    ['### Instruction:', 'Is it safe for kids?', '']
    >>> t.parse("A soap.\\n\\n### Instruction:\\nDescribe the product")
    'A soap.'
    """

    name: ClassVar[str] = "alpaca"

    instruction: str = field(default="Describe the product", validator=_formats_with())

    def render(
        self, title: str, question: str | None = None, description: str | None = None
    ) -> str:
        """See :meth:`BaseTemplate.render`."""
        return self._fill(ALPACA_PROMPT, title, question, description)

    def _fill(
        self,
        pattern: str,
        title: str,
        question: str | None,
        description: str | None,
        **fields: str,
    ) -> str:
        instruction = self.instruction if question is None else _text(question, "question")
        response = "" if description is None else _text(description, "description") + self._eos()
        return pattern.format(
            instruction=instruction, title=_text(title, "title"), response=response, **fields
        )

    def parse(self, generated_text: str) -> str:
        """See :meth:`BaseTemplate.parse`; also cuts at a following ``"### "`` section."""
        answer = _strip_echo(generated_text, ALPACA_PREAMBLE, "### Response:")
        answer = _cut(answer, self.eos_token)
        return _NEXT_SECTION.split(answer.lstrip(), 1)[0].strip()
