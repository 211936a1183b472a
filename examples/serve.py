"""A small web service around one :class:`productdesc.Describer`, streaming its answers.

python examples/serve.py --model example-out/run --port 8000 --api-key "$(openssl rand -hex 16)"
curl -N -H "Authorization: Bearer KEY" "http://127.0.0.1:8000/describe?title=Nice%20for%20Mice"
curl -N -H "Authorization: Bearer KEY" \
    "http://127.0.0.1:8000/describe?title=Nice%20for%20Mice&question=Is%20it%20for%20kids%3F"

Needs ``starlette`` and ``uvicorn`` (``pip install starlette uvicorn``). One Describer serves every
request: its calls are serialised by its own lock, so concurrent requests wait their turn, at
most ``--max-queue`` of them (more get 503); an answer stops after ``--timeout`` seconds.

What it guards: titles, questions and prompts have length caps, options are parsed strictly
(400 on a bad value), and with ``--api-key`` (or ``PRODUCTDESC_API_KEY``) ``/describe`` wants
``Authorization: Bearer KEY``. What it does not: there is no TLS (the key and the answers cross
the network in clear: put it behind an HTTPS proxy), no per-client rate limit or accounts (one
client with the key can fill the queue), and without a key anyone who reaches the port may use
it. It listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hmac
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from productdesc.errors import UserError

MAX_NEW_TOKENS_CAP = 512  # a request may ask for shorter answers, never for longer ones
MAX_TITLE_CHARS = 1_000  # the real titles are under 200 characters
MAX_QUESTION_CHARS = 500
MAX_PROMPT_TOKENS = 1_024  # with MAX_NEW_TOKENS_CAP, inside a 2048-position model
API_KEY_ENV = "PRODUCTDESC_API_KEY"
TIMED_OUT = "\n[stopped: the server's time limit for one answer was reached]"

logger = logging.getLogger("productdesc.serve")


def create_app(
    describer: Any,
    *,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_queue: int = 8,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
) -> Starlette:
    """A Starlette app answering ``GET /describe?title=...[&question=...][&max_new_tokens=N]``.

    The answer streams as ``text/plain`` while it is generated. A missing or too long title or
    question, a prompt over ``max_prompt_tokens`` or a bad ``max_new_tokens`` is a 400 with a
    JSON ``{"error": ...}``; a missing or wrong key (when ``api_key`` is set) a 401; more than
    ``max_queue`` requests generating or waiting a 503. An answer still running after
    ``timeout_s`` seconds ends with :data:`TIMED_OUT`.
    """
    slots = threading.BoundedSemaphore(max_queue)

    @functools.cache
    def tokenizer() -> Any:
        # A copy for the event loop: the describer's own runs in its generating thread, and a
        # fast tokenizer is not safe to share across threads.
        return copy.deepcopy(describer.tokenizer)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def describe(request: Request) -> Response:
        if api_key is not None and not hmac.compare_digest(
            request.headers.get("authorization", "").encode(), f"Bearer {api_key}".encode()
        ):
            response = error(401, "an 'Authorization: Bearer KEY' header with the key is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        params = request.query_params
        title = params.get("title", "").strip()
        if not title:
            return error(400, "the 'title' query parameter is required")
        question = params.get("question") or None
        for name, text, cap in (
            ("title", title, MAX_TITLE_CHARS),
            ("question", question, MAX_QUESTION_CHARS),
        ):
            if text is not None and len(text) > cap:
                return error(400, f"'{name}' is {len(text)} characters; at most {cap}")
        overrides: dict[str, Any] = {}
        if "max_new_tokens" in params:
            raw = params["max_new_tokens"]
            # ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
            if not re.fullmatch(r"[0-9]{1,4}", raw) or not 0 < int(raw) <= MAX_NEW_TOKENS_CAP:
                return error(
                    400, f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_CAP}"
                )
            overrides["max_new_tokens"] = int(raw)
        try:
            prompt = describer.template.render(title, question=question)
            tokens = len(tokenizer()(prompt)["input_ids"])
            if tokens > max_prompt_tokens:
                return error(400, f"the prompt is {tokens} tokens; at most {max_prompt_tokens}")
            # stream() checks its options at once; generation starts on the first piece, in
            # Starlette's thread pool (the iterator is synchronous).
            pieces = describer.stream(title, question, **overrides)
        except UserError as exc:
            return error(400, str(exc))
        if not slots.acquire(blocking=False):
            pieces.close()
            return JSONResponse(
                {"error": f"busy: {max_queue} requests are being answered or waiting; retry"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return StreamingResponse(
            _within(pieces, time.monotonic() + timeout_s, slots.release),
            media_type="text/plain; charset=utf-8",
        )

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/describe", describe), Route("/health", health)])


def _within(pieces: Iterator[str], deadline: float, release: Any) -> Iterator[str]:
    """``pieces`` until ``deadline``; frees the request's queue slot however the answer ends."""
    try:
        for piece in pieces:
            yield piece
            if time.monotonic() > deadline:
                logger.warning("an answer reached the time limit and was cut")
                yield TIMED_OUT
                return
    finally:
        pieces.close()  # stops the generation thread at its next token
        release()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("example-out/run"),
        help="training output or model directory (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=128,
        help="default answer length cap (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on /describe (default: ${API_KEY_ENV}; unset: none)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds one answer may take (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="requests answered or waiting at once; more get 503 (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.max_queue < 1:
        parser.error("--timeout must be above 0 and --max-queue at least 1")

    import uvicorn

    from productdesc import Describer, GenerationConfig

    try:
        describer = Describer.from_pretrained(
            args.model, generation=GenerationConfig(max_new_tokens=args.max_new_tokens)
        )
    except UserError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    if not args.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"serve: warning: {args.host} without --api-key: anyone who reaches it may use it",
            file=sys.stderr,
        )
    app = create_app(
        describer, api_key=args.api_key or None, timeout_s=args.timeout, max_queue=args.max_queue
    )
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
