"""An OpenAI-compatible web service around one :class:`~productdesc.generation.describer.Describer`.

Build the app with :func:`create_app` and run it with any ASGI server, or run
``productdesc serve --model run/`` (uvicorn). Routes:

* ``POST /v1/completions``: the ``prompt`` is a product title (see :func:`split_user_text`).
* ``POST /v1/chat/completions``: the last ``user`` message is the title (and question).
* ``GET /v1/models``, ``GET /v1/models/{id}``: the one model served.
* ``GET /describe?title=...[&question=...][&max_new_tokens=N]``: the answer as chunked
  ``text/plain``.
* ``GET /health``: ``ok``, without a key.

With ``"stream": true`` the two ``/v1`` routes answer with server-sent events, one
``data: {json}`` chunk a piece of the answer, ending with ``data: [DONE]``, as OpenAI's API
does; the OpenAI SDK, LangChain and LiteLLM read them.

The model writes what it was trained to write: the server renders the run's own prompt
template around the title and question, and decodes with the describer's
:class:`~productdesc.config.GenerationConfig` (the library's defaults unless the describer was
built with others). A request may shorten the answer (``max_tokens``), and may ask for
sampling (``temperature`` above 0, ``top_p``); it cannot change anything else.

What it guards: the body, titles, questions and prompts have size caps (413 or 400 with a JSON
error), options are parsed strictly (``max_tokens`` is an integer or a string of ASCII digits),
an answer stops after ``timeout_s`` seconds, at most ``max_queue`` requests are answered or
waiting at once (more get 503 with ``Retry-After``), and with an ``api_key`` every route but
``/health`` wants ``Authorization: Bearer KEY``. What it does not: TLS (put it behind an HTTPS
proxy), accounts or per-client rate limits.

The package reads requests in :mod:`~productdesc.serve.requests`, makes answers in
:mod:`~productdesc.serve.answers` (queue, worker thread, time limit), writes them in
:mod:`~productdesc.serve.responses` and routes in :mod:`~productdesc.serve.server`. Importing it
imports only the standard library; Starlette (and, through the describer, torch) are needed
when :func:`create_app` is called: ``pip install "productdesc[serve]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from productdesc.serve.answers import Answers
from productdesc.serve.requests import (
    MAX_BODY_BYTES,
    MAX_NEW_TOKENS_CAP,
    MAX_PROMPT_TOKENS,
    MAX_PROMPTS,
    MAX_QUESTION_CHARS,
    MAX_TITLE_CHARS,
    split_user_text,
)
from productdesc.serve.server import API_KEY_ENV, TIMED_OUT, Server

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette

__all__ = [
    "API_KEY_ENV",
    "MAX_BODY_BYTES",
    "MAX_NEW_TOKENS_CAP",
    "MAX_PROMPTS",
    "MAX_PROMPT_TOKENS",
    "MAX_QUESTION_CHARS",
    "MAX_TITLE_CHARS",
    "TIMED_OUT",
    "create_app",
    "split_user_text",
]


def create_app(
    describer: Any,
    *,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_queue: int = 8,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
    model_name: str = "productdesc",
) -> Starlette:
    """A Starlette app serving ``describer`` over OpenAI's HTTP API (see the module's docs).

    Generation runs off the event loop: non-streamed answers on one worker thread of the app's
    own (so queued requests that time out never reach the model), streamed ones in the
    describer's stream thread. The describer's lock serialises them; one describer serves
    every request.

    :param describer: A :class:`~productdesc.generation.describer.Describer` (or an object with its
        ``describe_batch``, ``stream``, ``template`` and ``tokenizer``).
    :param api_key: When set, every route but ``/health`` wants ``Authorization: Bearer KEY``
        (401 otherwise); ``None`` serves anyone, and the app logs a warning saying so at
        startup.
    :param timeout_s: Seconds one answer may take, waiting in the queue included: a
        non-streamed answer not ready by then is a 504; a streamed one ends there (with
        ``finish_reason`` ``"length"``; ``/describe`` appends :data:`TIMED_OUT`).
    :param max_queue: Requests answered or waiting at once; more get 503 with ``Retry-After``.
    :param max_prompt_tokens: Tokens a rendered prompt may have (400 above).
    :param max_new_tokens_cap: The largest ``max_tokens`` a request may ask for (400 above).
    :param model_name: The model id ``/v1/models`` lists and the answers name.
    :returns: The ASGI application.
    :raises ValueError: ``timeout_s`` is negative or ``max_queue`` below 1.
    """
    from starlette.applications import Starlette

    if timeout_s < 0 or max_queue < 1:
        raise ValueError("timeout_s must be at least 0 and max_queue at least 1")
    server = Server(
        Answers(describer, timeout_s=timeout_s, max_queue=max_queue),
        api_key=api_key,
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens_cap=max_new_tokens_cap,
        model_name=model_name,
    )
    return Starlette(routes=server.routes(), lifespan=server.lifespan)
