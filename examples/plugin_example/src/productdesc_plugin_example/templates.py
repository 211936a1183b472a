"""A Portuguese Alpaca template: the seed's prompt, asking in Portuguese."""

from __future__ import annotations

from typing import ClassVar

import attrs
from attrs import field, frozen

from productdesc.prompts import PromptTemplate

PERGUNTAS: tuple[str, ...] = (
    "O que é {title}?",
    "Fale-me sobre {title}.",
    "Descreva {title}.",
    "Pode descrever {title}?",
    "O que você pode me dizer sobre {title}?",
    "Escreva uma descrição de produto para {title}.",
)
"""Question phrasings mixed into training data; ``{title}`` is the product title."""

# The parent's checks, reused so a bad value fails as it would on PromptTemplate.
_PARENT = attrs.fields(PromptTemplate)


@frozen(kw_only=True)
class PortugueseTemplate(PromptTemplate):
    """:class:`~productdesc.prompts.PromptTemplate` with a Portuguese instruction and questions.

    >>> t = PortugueseTemplate(eos_token="</s>")
    >>> t.render("Sabonete de queijo").splitlines()[2:4]
    ['### Instruction:', 'Descreva o produto']

    Attributes:
        instruction: The instruction when no question is asked.
        questions: Portuguese phrasings of a user's question, each with ``{title}``.
        eos_token: See :class:`~productdesc.prompts.BaseTemplate`.
    """

    name: ClassVar[str] = "alpaca_pt"

    instruction: str = field(default="Descreva o produto", validator=_PARENT.instruction.validator)
    questions: tuple[str, ...] = field(
        default=PERGUNTAS,
        converter=_PARENT.questions.converter,
        validator=_PARENT.questions.validator,
    )
