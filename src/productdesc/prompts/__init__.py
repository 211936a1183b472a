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

Three templates are built in, registered in :data:`~productdesc.prompts.base.templates`:
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

from typing import Any

import attrs

from productdesc.prompts.alpaca import ALPACA_PREAMBLE, ALPACA_PROMPT, PromptTemplate
from productdesc.prompts.base import (
    QUESTIONS,
    BaseTemplate,
    TemplateError,
    seeded_question,
    templates,
)
from productdesc.prompts.chat import ChatTemplate
from productdesc.prompts.context import (
    CONTEXT_PROMPT,
    NO_CONTEXT,
    ContextTemplate,
    bind_retriever,
    check_retriever,
    uses_context,
)

__all__ = [
    "ALPACA_PREAMBLE",
    "ALPACA_PROMPT",
    "CONTEXT_PROMPT",
    "NO_CONTEXT",
    "QUESTIONS",
    "BaseTemplate",
    "ChatTemplate",
    "ContextTemplate",
    "PromptTemplate",
    "TemplateError",
    "bind_retriever",
    "check_retriever",
    "get_template",
    "seeded_question",
    "templates",
    "uses_context",
]


def get_template(name: str, tokenizer: Any = None, **options: Any) -> BaseTemplate:
    """The template registered as ``name``, built with ``options`` (for ``tokenizer`` if given).

    >>> get_template("alpaca", instruction="Describe this item").instruction
    'Describe this item'

    Raises:
        productdesc.plugins.PluginError: No template is registered as ``name``.
        TemplateError: An option the template does not have, or a bad value.
    """
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
