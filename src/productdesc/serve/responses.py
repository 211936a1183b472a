"""Writing answers as OpenAI's API does: JSON errors with their types and headers, usage counts,
finish reasons and server-sent events. Starlette is imported where a response is built.
Nothing here knows the model or the queue."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from productdesc.serve.requests import RequestError

if TYPE_CHECKING:  # pragma: no cover
    from starlette.responses import Response

# One logger for the server, whichever of its modules logs.
logger = logging.getLogger("productdesc.serve")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    503: "server_overloaded",
    504: "timeout",
}


def json_response(data: dict[str, Any], status: int = 200) -> Response:
    """``data`` as a JSON response; a 401 names the scheme, a 503 says when to retry."""
    from starlette.responses import JSONResponse

    response = JSONResponse(data, status_code=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:
        response.headers["Retry-After"] = "5"
    return response


def openai_error(error: RequestError) -> Response:
    """The error body OpenAI's clients parse: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _ERROR_TYPES.get(error.status, "server_error")
    body = {"message": error.message, "type": kind, "param": error.param, "code": None}
    return json_response({"error": body}, error.status)


def plain_error(error: RequestError) -> Response:
    """The error body of the plain ``/describe`` route: ``{"error": message}``."""
    return json_response({"error": error.message}, error.status)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason(detail: Any) -> str:
    """``"stop"`` for an answer that reached EOS, ``"length"`` for one cut by its budget."""
    return "stop" if detail.stopped_at_eos else "length"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


async def events(
    pieces: AsyncIterator[str | None],
    chunk: Callable[[str | None, str | None], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """Server-sent events: ``chunk(text, finish_reason)`` per piece, then ``[DONE]``.

    A ``None`` piece means the time limit cut the answer (finish reason ``"length"``).
    """
    finish = "stop"
    try:
        async for piece in pieces:
            if piece is None:
                finish = "length"
                break
            if piece:
                yield _event(chunk(piece, None))
        yield _event(chunk(None, finish))
    except Exception as exc:  # the status line is sent: report it as OpenAI does, in band
        logger.exception("generation failed")
        yield _event({"error": {"message": f"generation failed: {exc}", "type": "server_error"}})
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]  # an async generator
    yield b"data: [DONE]\n\n"


def event_stream(body: AsyncIterator[bytes]) -> Response:
    """A ``text/event-stream`` response that proxies do not buffer."""
    from starlette.responses import StreamingResponse

    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def text_stream(body: AsyncIterator[str]) -> Response:
    """Chunked ``text/plain``, as ``/describe`` answers."""
    from starlette.responses import StreamingResponse

    return StreamingResponse(body, media_type="text/plain; charset=utf-8")


def text(body: str) -> Response:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(body)
