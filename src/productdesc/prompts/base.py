"""The template interface: what every prompt template does, and the question phrasings.

:class:`BaseTemplate` renders a record as training text or an inference prompt, splits it
into TRL's prompt-completion pair, parses an answer out of generated text, and writes the same
prompt as a Jinja chat template and an Ollama ``TEMPLATE``. Subclasses say only how a prompt
looks (:mod:`~productdesc.prompts.alpaca`, :mod:`~productdesc.prompts.chat`,
:mod:`~productdesc.prompts.context`).
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

import attrs
from attrs import field, frozen
from attrs import validators as v

from productdesc.errors import UserError
from productdesc.plugins import Registry, class_with

__all__ = ["QUESTIONS", "BaseTemplate", "TemplateError", "seeded_question", "templates"]

templates: Registry[type] = Registry(
    "productdesc.templates", "prompt template", class_with("render", "parse")
)
"""Prompt templates: ``name -> template class`` (entry-point group ``productdesc.templates``)."""

QUESTIONS: tuple[str, ...] = (
    "What is {title}?",
    "Tell me about {title}.",
    "Describe {title}.",
    "Can you describe {title}?",
    "What can you tell me about {title}?",
    "Give me a description of {title}.",
    "What should I know about {title}?",
    "Write a product description for {title}.",
)
"""Default question phrasings mixed into training data; ``{title}`` is the product title."""

_T = TypeVar("_T", bound="BaseTemplate")

# Tokens a batch decode can leave before an echoed prompt: left padding, BOS (<s>, <|endoftext|>).
_LEADING_SPECIALS = re.compile(r"(?:\s|<[^<>\s]{1,40}>)*")
# Small models often run on after the answer into a new section, or a new prompt (perhaps cut
# short by max_new_tokens).
_NEXT_SECTION = re.compile(r"^(?:### |Below is an instruction that describes a task)", re.MULTILINE)


def seeded_question(
    title: str,
    content: str = "",
    *,
    share: float = 1.0,
    seed: int = 3407,
    phrasings: tuple[str, ...] = QUESTIONS,
) -> str | None:
    """A user's question about ``title``, or ``None``, drawn from a hash of the record.

    With probability ``share`` (over records) the answer is one of ``phrasings`` filled with
    the title; which one, and whether, depends only on ``seed``, the title and ``content``.
    Training (:meth:`BaseTemplate.training_pairs`) and ``evaluate --questions`` ask this way.

    >>> seeded_question("Nice for Mice", seed=0)
    'Write a product description for Nice for Mice.'
    """
    digest = hashlib.blake2b(f"{seed}\x00{title}\x00{content}".encode(), digest_size=16).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if draw >= share:
        return None
    phrasing = phrasings[int.from_bytes(digest[8:], "big") % len(phrasings)]
    return phrasing.format(title=title)


class TemplateError(UserError, ValueError):
    """A template cannot render: no EOS, no chat template, an empty title, a bad option."""


def _formats_with(*names: str):
    """Validator: a ``str.format`` pattern that fills with exactly these names."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        patterns = (value,) if isinstance(value, str) else value
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.strip():
                raise TemplateError(f"{attribute.name}: expected non-empty text, got {pattern!r}")
            try:
                pattern.format(**dict.fromkeys(names, "x"))
            except (KeyError, IndexError, ValueError) as exc:
                allowed = ", ".join("{" + n + "}" for n in names)
                raise TemplateError(
                    f"{attribute.name}: {pattern!r} is not a valid pattern ({exc!r}); "
                    f"it may use only {allowed}, and literal braces doubled"
                ) from None

    return check


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TemplateError(f"{what} must be non-empty text, got {value!r}")
    return value


def _strip_echo(text: str, head: str, tail: str) -> str:
    """Drop an echoed prompt: ``head`` at the start (after padding) up to the first ``tail``.

    Only an echo at the start counts, so an answer that goes on to write a second prompt of its
    own is not mistaken for one.
    """
    start = text.find(head)
    if start < 0 or _LEADING_SPECIALS.fullmatch(text, 0, start) is None:
        return text
    end = text.find(tail, start + len(head))
    return "" if end < 0 else text[end + len(tail) :]


def _cut(text: str, *stops: str | None) -> str:
    for stop in filter(None, stops):
        text = text.split(stop, 1)[0]
    return text


# Stand-ins rendered in place of the user's text and the answer, then found again in the
# rendered prompt: what is left between them is the template's fixed text. Mixed case, so that
# a template that changes the case of the title (upper, lower, title) loses them.
_TITLE, _QUESTION, _ANSWER = (
    f"\x1fProductDesc-{slot}\x1f" for slot in ("Title", "Question", "Answer")
)
_SLOTS = re.compile(f"({_TITLE}|{_QUESTION}|{_ANSWER})")

# The user's text as productdesc.serve.split_user_text reads it: the last user message, its
# first line the title (a "Product:" label dropped), further lines a question; an assistant
# message after it is the answer (training text). Only expressions write output, so the result
# is the same with and without trim_blocks / lstrip_blocks (transformers and llama.cpp set them).
_JINJA_HEAD = """\
{#- productdesc: the last user message is a product title; lines after the first are a question -#}
{%- set ns = namespace(user=none, answer=none) -%}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}
        {%- set ns.user = message['content'] -%}
        {%- set ns.answer = none -%}
    {%- elif message['role'] == 'assistant' -%}
        {%- set ns.answer = message['content'] -%}
    {%- endif -%}
{%- endfor -%}
{%- if ns.user is none -%}
    {{- raise_exception('productdesc: a user message with the product title is needed') -}}
{%- endif -%}
{%- set lines = ns.user.strip().split('\\n') -%}
{%- set title = lines[0].strip() -%}
{%- if title.lower().startswith('product:') -%}
    {%- set title = title[8:].strip() -%}
{%- endif -%}
{%- set question = (lines[1:] | join('\\n')).strip() -%}
"""
_JINJA_NAMES = {_TITLE: "title", _QUESTION: "question", _ANSWER: "ns.answer"}
# Ollama's TEMPLATE (Go text/template) cannot split a message into lines: the title is the
# prompt and a question is the system message.
_GO_NAMES = {_TITLE: "{{ .Prompt }}", _QUESTION: "{{ .System }}", _ANSWER: "{{ .Response }}"}


class _Shape(NamedTuple):
    """A template's prompt without and with a question, and its completion, as pieces: fixed
    text, and the stand-ins for the title, the question and the answer."""

    plain: list[str]
    asked: list[str]
    completion: list[str]


def _shape(template: BaseTemplate) -> _Shape | None:
    """The template's pieces, or ``None`` when it does not write the user's text as given."""
    plain = template._serving_pair(_TITLE, _ANSWER, None)
    asked = template._serving_pair(_TITLE, _ANSWER, _QUESTION)
    shape = _Shape(
        *(_SLOTS.split(text) for text in (plain["prompt"], asked["prompt"], plain["completion"]))
    )

    def counts(pieces: list[str]) -> tuple[int, ...]:
        return tuple(pieces.count(slot) for slot in (_TITLE, _QUESTION, _ANSWER))

    # A question may leave the title out (the chat template's question_message may not name it).
    if (
        counts(shape.plain) != (1, 0, 0)
        or counts(shape.asked) not in ((1, 1, 0), (0, 1, 0))
        or counts(shape.completion) != (0, 0, 1)
    ):
        return None
    return shape


def _jinja_expression(pieces: list[str]) -> str:
    # Fixed text as string literals (json.dumps writes Jinja's escapes), joined with ~.
    return " ~ ".join(
        _JINJA_NAMES.get(piece) or json.dumps(piece, ensure_ascii=False)
        for piece in pieces
        if piece
    )


def _jinja(shape: _Shape) -> str:
    return (
        _JINJA_HEAD
        + f"{{%- if question -%}}\n    {{{{- {_jinja_expression(shape.asked)} -}}}}\n"
        + f"{{%- else -%}}\n    {{{{- {_jinja_expression(shape.plain)} -}}}}\n{{%- endif -%}}\n"
        + "{%- if ns.answer is not none -%}\n"
        + f"    {{{{- {_jinja_expression(shape.completion)} -}}}}\n{{%- endif -%}}\n"
    )


def _go(pieces: list[str]) -> str:
    # In Go's text/template only "{{" starts an action; the Modelfile quotes TEMPLATE in """.
    escaped = {"{{": '{{ "{{" }}', '"""': '{{ "\\"\\"\\"" }}'}
    return "".join(
        _GO_NAMES.get(piece) or re.sub('{{|"""', lambda match: escaped[match.group()], piece)
        for piece in pieces
    )


@frozen(kw_only=True)
class BaseTemplate(abc.ABC):
    """What every template offers; the fine-tuner and the describer use only this.

    A plugin template subclasses this (a frozen ``attrs`` class), sets :attr:`name` and
    implements :meth:`render` and :meth:`parse`; the rest follows from those two.

    Attributes:
        eos_token: The tokenizer's end-of-sequence string, appended to training text. ``None``
            until set by :meth:`for_tokenizer`; rendering training text needs it.
        questions: Phrasings of a user's question, each with ``{title}``, that
            :meth:`training_pairs` mixes in.
    """

    name: ClassVar[str]

    eos_token: str | None = field(default=None, validator=v.optional(v.min_len(1)))
    questions: tuple[str, ...] = field(
        default=QUESTIONS, converter=tuple, validator=[v.min_len(1), _formats_with("title")]
    )

    @classmethod
    def for_tokenizer(cls: type[_T], tokenizer: Any, **options: Any) -> _T:
        """This template with ``options`` and the tokenizer's EOS string.

        Raises:
            TemplateError: The tokenizer has no ``eos_token`` (set one first), or ``options``
                names ``eos_token`` (it comes from the tokenizer).
        """
        eos = getattr(tokenizer, "eos_token", None)
        if not eos:
            raise TemplateError(
                f"tokenizer {type(tokenizer).__name__} has no eos_token; set "
                f"tokenizer.eos_token to the token that ends an answer before building the "
                f"{cls.name!r} template"
            )
        if "eos_token" in options:
            raise TemplateError(
                "eos_token comes from the tokenizer; set tokenizer.eos_token instead of "
                "passing it as an option"
            )
        return cls(eos_token=eos, **options)

    @abc.abstractmethod
    def render(
        self, title: str, question: str | None = None, description: str | None = None
    ) -> str:
        """Training text when ``description`` is given (ending in EOS), else the inference prompt.

        Args:
            title: The product title.
            question: A user's question about the product; replaces the default instruction.
            description: The answer to train on.
        """

    @abc.abstractmethod
    def parse(self, generated_text: str) -> str:
        """The answer alone from generated text: no prompt echo, nothing from EOS on, stripped."""

    def render_pair(
        self, title: str, description: str, question: str | None = None
    ) -> dict[str, str]:
        """The training text split for response-only loss (TRL's prompt-completion format).

        ``prompt + completion`` is exactly ``render(title, question, description)``; the
        completion is the answer and ends with EOS.

        Raises:
            TemplateError: The template renders the prompt differently once the answer is added.
        """
        prompt = self.render(title, question)
        text = self.render(title, question, description)
        if not text.startswith(prompt):
            raise TemplateError(
                f"the {self.name!r} template renders the prompt differently with and without an "
                f"answer, so it cannot be split for response-only loss; prompt {prompt!r}, "
                f"training text {text!r}"
            )
        return {"prompt": prompt, "completion": text[len(prompt) :]}

    def training_pairs(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        question_share: float = 0.0,
        seed: int = 3407,
    ) -> Iterator[dict[str, str]]:
        """Prompt-completion pairs from records, a share of them phrased as a user's question.

        Whether a record gets a question, and which phrasing, depends only on ``seed`` and the
        record's title and content (a hash), so the result does not depend on order, chunking or
        the process, and a larger share keeps every question a smaller share chose.

        Args:
            records: Mappings with ``title`` and ``content``, as ``AmazonTitlesDataset`` yields.
            question_share: Expected share of examples phrased as a question, 0 to 1.
            seed: Changes which records get a question and which phrasing.

        Raises:
            TemplateError: ``question_share`` is out of range (at once), or a record lacks a
                title or content (when reached; the message gives its position).
        """
        if (
            isinstance(question_share, bool)
            or not isinstance(question_share, (int, float))
            or not 0.0 <= question_share <= 1.0
        ):
            raise TemplateError(f"question_share must be between 0 and 1, got {question_share!r}")
        if self.eos_token is None:
            self._eos()  # fail before the first record rather than inside a data pipeline
        return self._pairs(records, float(question_share), seed)

    def _pairs(
        self, records: Iterable[Mapping[str, Any]], share: float, seed: int
    ) -> Iterator[dict[str, str]]:
        for index, record in enumerate(records):
            try:
                title = _text(record.get("title"), "title")
                content = _text(record.get("content"), "content")
            except (TemplateError, AttributeError) as exc:
                raise TemplateError(
                    f"record {index}: {exc}; training pairs need records with 'title' and "
                    f"'content' (run `productdesc prepare` to clean the data)"
                ) from None
            question = self._question_for(title, content, share, seed)
            yield self._record_pair(record, title, content, question)

    def _record_pair(
        self, record: Mapping[str, Any], title: str, content: str, question: str | None
    ) -> dict[str, str]:
        """One record's pair; a template that needs more of the record than its text overrides."""
        return self.render_pair(title, content, question)

    def _question_for(self, title: str, content: str, share: float, seed: int) -> str | None:
        return seeded_question(title, content, share=share, seed=seed, phrasings=self.questions)

    def chat_template(self) -> str | None:
        """This template's prompt as a Jinja chat template, or ``None`` to keep the tokenizer's.

        Training saves it with the tokenizer (``chat_template.jinja``), so ``run/``,
        ``run/merged/`` and the exported GGUF carry the prompt they were trained on: the chat
        endpoints of llama.cpp, vLLM and transformers' pipelines then prompt as training did.
        Rendering the messages ``[{"role": "user", "content": title}]`` (a question on the lines
        after the title) with ``add_generation_prompt=True`` gives exactly
        ``render(title, question)``; an assistant message after it gives the training text.

        It is derived from :meth:`render_pair` with stand-ins for the title, the question and
        the answer; a template that changes the user's text (not writing it as given) gets
        ``None`` and should override this.

        Raises:
            TemplateError: The template has no ``eos_token`` (the training text ends with it).
        """
        shape = _shape(self)
        return None if shape is None else _jinja(shape)

    def ollama_template(self) -> str | None:
        """This template's prompt as an Ollama ``TEMPLATE`` (Go template), or ``None``.

        ``.Prompt`` (the user's message) is the title and ``.System`` (the system message) a
        question, since a Go template cannot split a message into lines; with no system
        message it renders exactly ``render(title)``, and ``render(title, question)`` with one.
        ``None`` as for :meth:`chat_template`.
        """
        shape = _shape(self)
        if shape is None:
            return None
        return (
            f"{{{{ if .System }}}}{_go(shape.asked)}{{{{ else }}}}{_go(shape.plain)}{{{{ end }}}}"
            + _go(shape.completion)
        )

    def _serving_pair(self, title: str, description: str, question: str | None) -> dict[str, str]:
        """The pair a served prompt renders: :meth:`render_pair`, unless the template needs more."""
        return self.render_pair(title, description, question)

    def _eos(self) -> str:
        if self.eos_token is None:
            raise TemplateError(
                f"the {self.name!r} template has no eos_token, which training text ends with; "
                f"build it with {type(self).__name__}.for_tokenizer(tokenizer) or set eos_token"
            )
        return self.eos_token
