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

This module imports only the standard library until :func:`create_app` is called; Starlette
(and, through the describer, torch) are needed then: ``pip install "productdesc[serve]"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import hmac
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from productdesc.errors import UserError
from productdesc.serve.requests import (
    MAX_PROMPTS,
    MAX_QUESTION_CHARS,
    MAX_TITLE_CHARS,
    RequestError,
    _chat_title,
    _check_lengths,
    _completion_titles,
    _max_tokens,
    _overrides,
    _sse,
    split_user_text,
)

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

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

MAX_NEW_TOKENS_CAP = 512
"""The longest answer a request may ask for (``max_tokens``); shorter is always allowed."""
MAX_PROMPT_TOKENS = 1_024
"""Tokens in a rendered prompt: with :data:`MAX_NEW_TOKENS_CAP`, inside 2048 positions."""
MAX_BODY_BYTES = 256 * 1024
"""Bytes in a request body (a chat history included)."""
API_KEY_ENV = "PRODUCTDESC_API_KEY"
"""The environment variable ``productdesc serve`` reads the API key from."""
TIMED_OUT = "\n[stopped: the server's time limit for one answer was reached]"
"""What ends a ``/describe`` answer cut by the time limit."""

# Request fields that ask for something this server does not do: a 400 rather than silence.
_DONE = object()

logger = logging.getLogger(__name__)


class _Slot:
    """One taken place in the queue; released once, at the latest when it is garbage."""

    def __init__(self, semaphore: threading.BoundedSemaphore) -> None:
        self._semaphore: threading.BoundedSemaphore | None = semaphore

    def release(self) -> None:
        semaphore, self._semaphore = self._semaphore, None
        if semaphore is not None:
            semaphore.release()

    # A streamed response whose body never started (the client left first) frees its place.
    __del__ = release


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
    import anyio
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    if timeout_s < 0 or max_queue < 1:
        raise ValueError("timeout_s must be at least 0 and max_queue at least 1")
    slots = threading.BoundedSemaphore(max_queue)
    worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="productdesc-serve")
    created = int(time.time())
    # A copy for the event loop: the describer's own tokenizer runs in its generating thread,
    # and a fast tokenizer is not safe to share across threads.
    shared_tokenizer = getattr(describer, "tokenizer", None)
    local_tokenizer: list[Any] = [copy.deepcopy(shared_tokenizer)] if shared_tokenizer else []

    def count_tokens(text: str) -> int:
        if not local_tokenizer:
            local_tokenizer.append(copy.deepcopy(describer.tokenizer))
        return len(local_tokenizer[0](text)["input_ids"])

    def openai_error(error: RequestError) -> JSONResponse:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            503: "server_overloaded",
            504: "timeout",
        }.get(error.status, "server_error")
        response = JSONResponse(
            {"error": {"message": error.message, "type": kind, "param": error.param, "code": None}},
            status_code=error.status,
        )
        add_headers(response, error.status)
        return response

    def plain_error(error: RequestError) -> JSONResponse:
        response = JSONResponse({"error": error.message}, status_code=error.status)
        add_headers(response, error.status)
        return response

    def add_headers(response: Response, status: int) -> None:
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        elif status == 503:
            response.headers["Retry-After"] = "5"

    def check_key(request: Request) -> None:
        if api_key is not None and not hmac.compare_digest(
            request.headers.get("authorization", "").encode(), f"Bearer {api_key}".encode()
        ):
            raise RequestError(
                401, "an 'Authorization: Bearer KEY' header with the key is required"
            )

    def take_slot() -> _Slot:
        if not slots.acquire(blocking=False):
            raise RequestError(
                503, f"busy: {max_queue} requests are being answered or waiting; retry"
            )
        return _Slot(slots)

    def prompt_tokens(pairs: list[tuple[str, str | None]]) -> int:
        """Renders each prompt as the describer will, and checks its length in tokens."""
        total = 0
        for title, question in pairs:
            try:
                tokens = count_tokens(describer.template.render(title, question=question))
            except UserError as exc:
                raise RequestError(400, str(exc)) from None
            if tokens > max_prompt_tokens:
                raise RequestError(
                    400, f"the prompt is {tokens} tokens; at most {max_prompt_tokens}"
                )
            total += tokens
        return total

    async def read_json(request: Request) -> dict[str, Any]:
        import json

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

    async def generate(pairs: list[tuple[str, str | None]], overrides: dict[str, Any]) -> list[Any]:
        """Answers with details, on the worker thread, within the time limit (503 if busy)."""
        slot = take_slot()
        try:
            future = worker.submit(
                describer.describe_batch,
                [title for title, _ in pairs],
                [question for _, question in pairs],
                return_details=True,
                **overrides,
            )
        except BaseException:
            slot.release()
            raise
        # Released when the answer is done, or when a queued request is cancelled below; an
        # answer already generating when time runs out keeps its slot until it ends.
        future.add_done_callback(lambda _: slot.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            logger.warning("an answer was not ready within the time limit (%s s)", timeout_s)
            raise RequestError(
                504, f"no answer within the server's time limit of {timeout_s} s"
            ) from None
        except UserError as exc:
            raise RequestError(400, str(exc)) from None

    async def pieces_until(
        pieces: Iterator[str], deadline: float, slot: _Slot
    ) -> AsyncIterator[str | None]:
        """``pieces``, pulled in worker threads, until ``deadline`` (then one ``None``).

        However the answer ends (done, cut, client gone), the stream is closed, which stops
        its generation at the next token, and the request's slot is freed.
        """
        try:
            while True:
                piece = await anyio.to_thread.run_sync(next, pieces, _DONE)
                if piece is _DONE:
                    return
                yield piece
                if time.monotonic() > deadline:
                    logger.warning("an answer reached the time limit and was cut")
                    yield None
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pieces.close)
            slot.release()

    def open_stream(title: str, question: str | None, overrides: dict[str, Any]) -> Any:
        """``describer.stream``'s pieces as an async iterator; takes a slot (503 if none)."""
        try:
            # stream() checks its options at once; generation starts on the first piece.
            pieces = describer.stream(title, question, **overrides)
        except UserError as exc:
            raise RequestError(400, str(exc)) from None
        try:
            slot = take_slot()
        except RequestError:
            pieces.close()
            raise
        return pieces_until(pieces, time.monotonic() + timeout_s, slot)

    def usage(prompt: int, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def sse(
        pieces: AsyncIterator[str | None],
        chunk: Callable[[str | None, str | None], dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        """Server-sent events: ``chunk(text, finish_reason)`` per piece, then ``[DONE]``."""
        finish = "stop"
        try:
            async for piece in pieces:
                if piece is None:
                    finish = "length"
                    break
                if piece:
                    yield _sse(chunk(piece, None))
            yield _sse(chunk(None, finish))
        except Exception as exc:  # the status line is sent: report it as OpenAI does, in band
            logger.exception("generation failed")
            yield _sse({"error": {"message": f"generation failed: {exc}", "type": "server_error"}})
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]  # an async generator
        yield b"data: [DONE]\n\n"

    def openai_route(
        handler: Callable[[dict[str, Any]], Any],
    ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                check_key(request)
                return await handler(await read_json(request))
            except RequestError as error:
                return openai_error(error)

        return endpoint

    def stream_response(body: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def completions(body: dict[str, Any]) -> Response:
        overrides = _overrides(body, max_new_tokens_cap)
        pairs = _completion_titles(body)
        n_prompt = prompt_tokens(pairs)
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": now, "model": model_name}
        if body.get("stream"):
            if len(pairs) > 1:
                raise RequestError(400, "stream needs a single prompt", param="prompt")

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
                return {**head, "choices": [choice]}

            return stream_response(sse(open_stream(*pairs[0], overrides), chunk))
        details = await generate(pairs, overrides)
        choices = [
            {
                "index": i,
                "text": d.text,
                "logprobs": None,
                "finish_reason": "stop" if d.stopped_at_eos else "length",
            }
            for i, d in enumerate(details)
        ]
        n_new = sum(d.new_tokens for d in details)
        return JSONResponse({**head, "choices": choices, "usage": usage(n_prompt, n_new)})

    async def chat_completions(body: dict[str, Any]) -> Response:
        overrides = _overrides(body, max_new_tokens_cap)
        title, question = _chat_title(body)
        n_prompt = prompt_tokens([(title, question)])
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.get("stream"):
            head = {"id": ident, "object": "chat.completion.chunk", "created": now}
            head["model"] = model_name
            first = [True]

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                if first[0]:
                    delta["role"] = "assistant"
                    first[0] = False
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {**head, "choices": [choice]}

            return stream_response(sse(open_stream(title, question, overrides), chunk))
        (d,) = await generate([(title, question)], overrides)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": d.text},
            "logprobs": None,
            "finish_reason": "stop" if d.stopped_at_eos else "length",
        }
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": now,
                "model": model_name,
                "choices": [choice],
                "usage": usage(n_prompt, d.new_tokens),
            }
        )

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "productdesc"}

    async def models(request: Request) -> Response:
        try:
            check_key(request)
        except RequestError as error:
            return openai_error(error)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        try:
            check_key(request)
            if request.path_params["model"] != model_name:
                raise RequestError(
                    404,
                    f"no model {request.path_params['model']!r}; this server has {model_name!r}",
                )
        except RequestError as error:
            return openai_error(error)
        return JSONResponse(model_card())

    async def describe(request: Request) -> Response:
        try:
            check_key(request)
            params = request.query_params
            title = params.get("title", "").strip()
            if not title:
                raise RequestError(400, "the 'title' query parameter is required")
            question = params.get("question") or None
            _check_lengths(title, question, "title")
            overrides: dict[str, Any] = {}
            if "max_new_tokens" in params:
                overrides["max_new_tokens"] = _max_tokens(
                    params["max_new_tokens"], max_new_tokens_cap, "max_new_tokens"
                )
            prompt_tokens([(title, question)])
            pieces = open_stream(title, question, overrides)
        except RequestError as error:
            return plain_error(error)

        async def text() -> AsyncIterator[str]:
            try:
                async for piece in pieces:
                    yield TIMED_OUT if piece is None else piece
            finally:
                await pieces.aclose()

        return StreamingResponse(text(), media_type="text/plain; charset=utf-8")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if api_key is None:
            logger.warning(
                "no authentication: no API key is set (--api-key or $%s), so anyone who can "
                "reach this server may use it",
                API_KEY_ENV,
            )
        else:
            logger.info("every route but /health wants 'Authorization: Bearer' with the API key")
        try:
            yield
        finally:
            worker.shutdown(wait=False, cancel_futures=True)

    return Starlette(
        routes=[
            Route("/v1/completions", openai_route(completions), methods=["POST"]),
            Route("/v1/chat/completions", openai_route(chat_completions), methods=["POST"]),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model),
            Route("/describe", describe),
            Route("/health", health),
        ],
        lifespan=lifespan,
    )
