"""Serve a trained model over OpenAI's HTTP API: a thin script over ``productdesc serve``.

python examples/serve.py --model example-out/run --port 8000 --api-key "$(openssl rand -hex 16)"
curl -N -H "Authorization: Bearer KEY" "http://127.0.0.1:8000/describe?title=Nice%20for%20Mice"
curl -H "Authorization: Bearer KEY" -H "Content-Type: application/json" \
    http://127.0.0.1:8000/v1/chat/completions \
    -d '{"model": "run", "messages": [{"role": "user", "content": "Nice for Mice"}]}'

The same as ``productdesc serve`` (every option is its own; ``--model`` defaults to the
example's run here). The app is :func:`productdesc.serve.create_app`, also callable from this
script as ``create_app``; see ``docs/serving.md`` for the routes, limits and clients. Needs ``pip install "productdesc[serve]"``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from productdesc.serve import TIMED_OUT

__all__ = ["TIMED_OUT", "create_app", "main"]

DEFAULT_MODEL = "example-out/run"


def create_app(describer: Any, **options: Any) -> Any:
    """The Starlette app of ``productdesc serve`` around ``describer`` (one for all requests).

    ``options`` are :func:`productdesc.serve.create_app`'s (``api_key``, ``timeout_s``,
    ``max_queue``, ...). Run it with any ASGI server, or mount it in your own app::

        import uvicorn
        from productdesc import Describer

        uvicorn.run(create_app(Describer.from_pretrained("example-out/run")), port=8000)
    """
    from productdesc.serve import create_app as serve_app

    return serve_app(describer, **options)


def main(argv: Sequence[str] | None = None) -> int:
    from productdesc.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", DEFAULT_MODEL, *args]
    return cli_main(["serve", *args])


if __name__ == "__main__":
    sys.exit(main())
