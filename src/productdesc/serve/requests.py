"""Reading an OpenAI-style request: the title and question in a chat or completion body, the
decoding options it may set, and the limits it must keep; a bad request is a
:class:`RequestError` with the status and the field to name. Nothing here knows the server."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_NEW_TOKENS_CAP",
    "MAX_PROMPTS",
    "MAX_PROMPT_TOKENS",
    "MAX_QUESTION_CHARS",
    "MAX_TITLE_CHARS",
    "RequestError",
    "read_json",
    "split_user_text",
]

MAX_TITLE_CHARS = 1_000
"""Characters in a title (the real titles are under 200)."""
MAX_QUESTION_CHARS = 500
"""Characters in a question."""
MAX_PROMPTS = 16
"""Prompts in one ``/v1/completions`` request (a list is answered as one batch)."""
MAX_NEW_TOKENS_CAP = 512
"""The longest answer a request may ask for (``max_tokens``); shorter is always allowed."""
MAX_PROMPT_TOKENS = 1_024
"""Tokens in a rendered prompt: with :data:`MAX_NEW_TOKENS_CAP`, inside 2048 positions."""
MAX_BODY_BYTES = 256 * 1024
"""Bytes in a request body (a chat history included)."""
_UNSUPPORTED = ("suffix", "echo", "logprobs", "top_logprobs", "best_of", "tools", "functions")


class RequestError(Exception):
    """A request the server refuses, with its HTTP status; becomes a JSON error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def split_user_text(text: str) -> tuple[str, str | None]:
    """A user's text as ``(title, question)``: the first line is the title, the rest a question.

    Product titles are one line, so a message of one line asks for a description, and lines
    after the first are a question about that product. A ``Product:`` label before the title
    is dropped, so the message the ``"chat"`` template writes for a question
    (``"Product: {title}\\n{question}"``) reads back as it was written.

    >>> split_user_text("Nice for Mice")
    ('Nice for Mice', None)
    >>> split_user_text("Product: Nice for Mice\\nIs it good for toddlers?")
    ('Nice for Mice', 'Is it good for toddlers?')
    """
    first, _, rest = text.strip().partition("\n")
    title = first.strip()
    if title[:8].lower() == "product:":
        title = title[8:].strip()
    question = rest.strip() or None
    return title, question


def _check_lengths(title: str, question: str | None, where: str) -> None:
    if not title:
        raise RequestError(400, f"{where} has no product title", param=where)
    for name, text, cap in (
        ("title", title, MAX_TITLE_CHARS),
        ("question", question, MAX_QUESTION_CHARS),
    ):
        if text is not None and len(text) > cap:
            raise RequestError(
                400, f"'{name}' is {len(text)} characters; at most {cap}", param=where
            )


def _max_tokens(value: Any, cap: int, name: str) -> int:
    """An answer length from a request: an integer, or a string of ASCII digits, 1 to ``cap``."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value):
        # ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= cap:
        raise RequestError(400, f"{name} must be an integer from 1 to {cap}", param=name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(400, f"{name} must be a number from {low} to {high}", param=name)
    return float(value)


def _overrides(body: dict[str, Any], cap: int) -> dict[str, Any]:
    """The :class:`~productdesc.config.GenerationConfig` fields an OpenAI request sets."""
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False, "", []):
            raise RequestError(400, f"'{name}' is not supported by this server", param=name)
    if body.get("stop") not in (None, "", []):
        raise RequestError(
            400, "'stop' is not supported: answers end where the model ends them", param="stop"
        )
    if body.get("n") not in (None, 1):
        raise RequestError(400, "only n=1 is supported", param="n")
    if not isinstance(body.get("stream", False), bool):
        raise RequestError(400, "stream must be true or false", param="stream")
    overrides: dict[str, Any] = {}
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            overrides["max_new_tokens"] = _max_tokens(body[name], cap, name)
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        # 0 is greedy, as in OpenAI's API; above 0 samples at that temperature.
        overrides["do_sample"] = temperature > 0
        if temperature > 0:
            overrides["temperature"] = temperature
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        if top_p == 0:
            raise RequestError(400, "top_p must be above 0", param="top_p")
        overrides["top_p"] = top_p
    return overrides


def _message_text(content: Any) -> str:
    """A chat message's text: a string, or the ``text`` parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(400, "only text content parts are supported", param="messages")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise RequestError(400, "a message's content must be a string or a list of parts")


def _chat_title(body: dict[str, Any]) -> tuple[str, str | None]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError(400, "'messages' has no user message", param="messages")
    title, question = split_user_text(_message_text(users[-1].get("content")))
    _check_lengths(title, question, "messages")
    return title, question


def _completion_titles(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError(400, "'prompt' must be a string or a list of strings", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(
            400, f"'prompt' has {len(prompts)} prompts; at most {MAX_PROMPTS}", param="prompt"
        )
    pairs = [split_user_text(p) for p in prompts]
    for title, question in pairs:
        _check_lengths(title, question, "prompt")
    return pairs


async def read_json(request: Any) -> dict[str, Any]:
    """A request's body as a JSON object, read in chunks up to :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return data
