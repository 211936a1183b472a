"""The tokenizer's own chat template as a prompt template (:class:`ChatTemplate`, ``"chat"``)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
from attrs import field, frozen
from attrs import validators as v

from productdesc.prompts.base import (
    BaseTemplate,
    TemplateError,
    _cut,
    _formats_with,
    _strip_echo,
    _text,
    templates,
)
from productdesc.tokenizers import tokenizer_adds_bos

__all__ = ["ChatTemplate"]


@templates.builtin("chat")
@frozen(kw_only=True)
class ChatTemplate(BaseTemplate):
    """The tokenizer's own chat template (``tokenizer.apply_chat_template``).

    Messages: the optional system message, the user's message (the instruction, or the question
    with the title), and the description as the assistant's answer. Build it with
    :meth:`for_tokenizer`, which keeps the tokenizer.

    If the chat template already ends the answer with EOS, training text ends there (trailing
    whitespace dropped); otherwise EOS is appended. A BOS the template writes is dropped when the
    tokenizer adds one itself on encoding, so encoded text starts with one BOS, not two.

    Attributes:
        system: The system message, or ``None`` for none (the chat template may add its own).
        instruction: The user's message when no question is asked; ``{title}`` is the title.
        question_message: The user's message for a question; ``{question}`` and ``{title}``
            (a user's question may not name the product).
        tokenizer: The tokenizer whose chat template renders; set by :meth:`for_tokenizer`.
        tokenizer_bos: The BOS string the tokenizer adds on encoding; set by :meth:`for_tokenizer`.
        eos_token: See :class:`BaseTemplate`.
        questions: See :class:`BaseTemplate`.
    """

    name: ClassVar[str] = "chat"

    system: str | None = field(default=None, validator=v.optional(v.instance_of(str)))
    instruction: str = field(
        default="Describe the product: {title}", validator=_formats_with("title")
    )
    question_message: str = field(
        default="Product: {title}\n{question}", validator=_formats_with("title", "question")
    )
    tokenizer: Any = field(default=None, eq=False, repr=False)
    tokenizer_bos: str | None = field(default=None, validator=v.optional(v.min_len(1)))

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, **options: Any) -> ChatTemplate:
        """This template rendering with ``tokenizer``'s chat template and EOS.

        Raises:
            TemplateError: The tokenizer has no ``chat_template`` or no ``eos_token``.
        """
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                f"tokenizer {type(tokenizer).__name__} has no chat_template; use the 'alpaca' "
                f"template, or set tokenizer.chat_template to a Jinja chat template"
            )
        template = super().for_tokenizer(tokenizer, **options)
        bos = getattr(tokenizer, "bos_token", None)
        adds_bos = bool(bos) and tokenizer_adds_bos(tokenizer)
        return attrs.evolve(template, tokenizer=tokenizer, tokenizer_bos=bos if adds_bos else None)

    def render(
        self, title: str, question: str | None = None, description: str | None = None
    ) -> str:
        """See :meth:`BaseTemplate.render`."""
        title = _text(title, "title")
        if question is None:
            user = self.instruction.format(title=title)
        else:
            user = self.question_message.format(title=title, question=_text(question, "question"))
        if description is None:
            return self._apply([("user", user)], add_generation_prompt=True)
        text = self._apply(
            [("user", user), ("assistant", _text(description, "description"))],
            add_generation_prompt=False,
        )
        eos = self._eos()
        ended = text.rstrip()
        return ended if ended.endswith(eos) else text + eos

    def chat_template(self) -> None:
        """``None``: the tokenizer's own chat template is the one this template trained with.

        A chat client then sends the user's message as training wrote it (:attr:`instruction`
        or :attr:`question_message` filled in) and :attr:`system`, if set. Ollama's
        :meth:`~BaseTemplate.ollama_template` takes the title alone, as for the other templates.
        """
        return None

    def parse(self, generated_text: str) -> str:
        """See :meth:`BaseTemplate.parse`; also cuts at the template's end-of-turn marker.

        An echoed prompt is recognised only when decoded with its special tokens
        (``skip_special_tokens=False``); decoding only the new tokens needs no echo removal.
        """
        answer = generated_text
        end_of_turn = None
        if self.tokenizer is not None:
            head, tail, end_of_turn = self._markers()
            if head and tail:
                answer = _strip_echo(answer, head, tail)
        return _cut(answer, self.eos_token, end_of_turn).strip()

    def _markers(self) -> tuple[str, str, str]:
        """The prompt around the user's message, and what ends an answer, read off the template."""
        user, answer = "\x1fPRODUCTDESC-USER\x1f", "\x1fPRODUCTDESC-ANSWER\x1f"
        prompt = self._apply([("user", user)], add_generation_prompt=True)
        text = self._apply([("user", user), ("assistant", answer)], add_generation_prompt=False)
        head, _, tail = prompt.partition(user)
        return head, tail, text.partition(answer)[2].strip()

    def _apply(self, turns: list[tuple[str, str]], *, add_generation_prompt: bool) -> str:
        if self.tokenizer is None:
            raise TemplateError(
                "the 'chat' template has no tokenizer to render with; build it with "
                "ChatTemplate.for_tokenizer(tokenizer)"
            )
        messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages += [{"role": role, "content": content} for role, content in turns]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        if self.tokenizer_bos and text.startswith(self.tokenizer_bos):
            text = text[len(self.tokenizer_bos) :]
        return text
