"""A small web service around one :class:`productdesc.Describer`, streaming its answers.

python examples/serve.py --model example-out/run --port 8000
curl -N "http://127.0.0.1:8000/describe?title=Nice%20for%20Mice"
curl -N "http://127.0.0.1:8000/describe?title=Nice%20for%20Mice&question=Is%20it%20for%20kids%3F"

Needs ``starlette`` and ``uvicorn`` (``pip install starlette uvicorn``). One Describer serves every
request: its calls are serialised by its own lock, so concurrent requests wait their turn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from productdesc.errors import UserError

MAX_NEW_TOKENS_CAP = 512  # a request may ask for shorter answers, never for longer ones


def create_app(describer: Any) -> Starlette:
    """A Starlette app answering ``GET /describe?title=...[&question=...][&max_new_tokens=N]``.

    The answer streams as ``text/plain`` while it is generated. A missing title or a bad
    ``max_new_tokens`` is a 400 with a JSON ``{"error": ...}``.
    """

    async def describe(request: Request) -> Response:
        title = request.query_params.get("title", "").strip()
        if not title:
            return JSONResponse(
                {"error": "the 'title' query parameter is required"}, status_code=400
            )
        question = request.query_params.get("question") or None
        overrides: dict[str, Any] = {}
        if "max_new_tokens" in request.query_params:
            raw = request.query_params["max_new_tokens"]
            if not raw.isdigit() or not 0 < int(raw) <= MAX_NEW_TOKENS_CAP:
                return JSONResponse(
                    {"error": f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_CAP}"},
                    status_code=400,
                )
            overrides["max_new_tokens"] = int(raw)
        try:
            # stream() checks its options at once; generation starts on the first piece, in
            # Starlette's thread pool (the iterator is synchronous).
            pieces = describer.stream(title, question, **overrides)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(pieces, media_type="text/plain; charset=utf-8")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/describe", describe), Route("/health", health)])


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
    args = parser.parse_args(argv)

    import uvicorn

    from productdesc import Describer, GenerationConfig

    try:
        describer = Describer.from_pretrained(
            args.model, generation=GenerationConfig(max_new_tokens=args.max_new_tokens)
        )
    except UserError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(describer), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
