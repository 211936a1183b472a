"""Prompt templates: a product title (and a user's question) in, model text out, and back.

A template turns a record into the exact text the model trains on, the prompt it sees at
inference, and the answer it gives back:

* :meth:`~BaseTemplate.render` ``(title, question=None, description=None)``: with a
  description, the training text (ending in EOS); without, the inference prompt.
* :meth:`~BaseTemplate.render_pair`: the same training text split as TRL's prompt-completion
  format, so the loss is computed on the answer only.
* :meth:`~BaseTemplate.training_pairs`: records to pairs, phrasing a seeded share of them as a
  user's question (:data:`QUESTIONS`) so the tuned model answers questions, not one instruction.
* :meth:`~BaseTemplate.parse`: generated text to the answer alone.
* :meth:`~BaseTemplate.chat_template` and :meth:`~BaseTemplate.ollama_template`: the same
  prompt as a Jinja chat template (saved with the tokenizer, so chat endpoints prompt as
  training did) and as an Ollama ``TEMPLATE``.

Three templates are built in, registered in :data:`productdesc.plugins.templates`:
``"alpaca"`` (:class:`PromptTemplate`, the seed notebook's), ``"chat"`` (:class:`ChatTemplate`,
the tokenizer's own chat template) and ``"context"`` (:class:`ContextTemplate`: Alpaca with the
nearest known products' titles and descriptions, from a retrieval index). Build any of them for a
tokenizer, which supplies the EOS string, with :meth:`~BaseTemplate.for_tokenizer` or
:func:`get_template`.

Encode rendered text with the tokenizer's defaults (``add_special_tokens=True``), as TRL does for
prompt-completion strings: the texts hold no BOS of their own.

>>> t = PromptTemplate(eos_token="</s>")
>>> pair = t.render_pair("Nice for Mice", "A cheese-scented soap.")
>>> pair["prompt"].endswith("### Input:\\nNice for Mice\\n\\n### Response:\\n")
True
>>> pair["completion"]
'A cheese-scented soap.</s>'
>>> t.parse(pair["prompt"] + pair["completion"])
'A cheese-scented soap.'

This module imports neither torch nor transformers; :class:`ChatTemplate` only calls the
tokenizer it is given.
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
from productdesc.models import tokenizer_adds_bos

__all__ = [
    "ALPACA_PREAMBLE",
    "ALPACA_PROMPT",
    "CONTEXT_PROMPT",
    "QUESTIONS",
    "BaseTemplate",
    "ChatTemplate",
    "ContextTemplate",
    "PromptTemplate",
    "TemplateError",
    "get_template",
    "seeded_question",
]

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
ALPACA_PROMPT = (
    ALPACA_PREAMBLE + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{title}\n\n"
    "### Response:\n{response}"
)
"""The classic Alpaca prompt as Unsloth's notebooks (and the seed) write it."""

CONTEXT_PROMPT = (
    ALPACA_PREAMBLE + "\n\n### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n"
    "### Input:\n{title}\n\n### Response:\n{response}"
)
"""The Alpaca prompt with a ``### Context:`` section of similar products before the input."""

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


NO_CONTEXT = "No similar product is known."
"""The context section's text when the retriever finds no related product."""


@frozen(kw_only=True)
class ContextTemplate(PromptTemplate):
    """Alpaca with context (:data:`CONTEXT_PROMPT`): similar known products, then the title.

    The ``### Context:`` section lists up to :attr:`k` products nearest to the title in a
    retrieval index (:mod:`productdesc.context`), best match first, each as a ``Product:`` line
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
        """The title's neighbours from :attr:`retriever` (see :func:`productdesc.context.neighbours`).

        Args:
            title: The product title (the query).
            leave_out: A record that must not be its own context (training).
        """
        from productdesc.context import neighbours

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


def get_template(name: str, tokenizer: Any = None, **options: Any) -> BaseTemplate:
    """The template registered as ``name``, built with ``options`` (for ``tokenizer`` if given).

    >>> get_template("alpaca", instruction="Describe this item").instruction
    'Describe this item'

    Raises:
        productdesc.plugins.PluginError: No template is registered as ``name``.
        TemplateError: An option the template does not have, or a bad value.
    """
    from productdesc.plugins import templates

    cls = templates.get(name)
    if attrs.has(cls):
        known = {f.alias for f in attrs.fields(cls) if f.init} - {"tokenizer", "tokenizer_bos"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TemplateError(
                f"template {name!r} has no option {', '.join(unknown)}; "
                f"its options: {', '.join(sorted(known))}"
            )
    return cls.for_tokenizer(tokenizer, **options) if tokenizer is not None else cls(**options)
