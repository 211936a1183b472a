"""``productdesc serve``: an OpenAI-compatible HTTP server for one trained model (uvicorn).

productdesc serve --model runs/smollm2-lora
productdesc serve --model runs/smollm2-lora --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
curl http://127.0.0.1:8000/v1/chat/completions -H "Content-Type: application/json" \
    -d '{"model": "smollm2-lora", "messages": [{"role": "user", "content": "Nice for Mice"}]}'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from productdesc.cli._options import (
    add_backend_option,
    add_generation_options,
    add_hybrid_options,
    check_hybrid_args,
    generation_from_args,
    hybrid_from_args,
    require_extra,
)
from productdesc.errors import UserError

SERVE_MODULES = ("starlette", "uvicorn")
_LOCAL = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: Any) -> None:
    from productdesc.serve import API_KEY_ENV, MAX_PROMPT_TOKENS

    parser = subparsers.add_parser(
        "serve",
        help="serve a trained model over OpenAI's HTTP API (completions, chat, streaming)",
        description=(
            "Serve a trained model with uvicorn: POST /v1/completions and /v1/chat/completions "
            '(streamed as server-sent events with "stream": true), GET /v1/models, '
            "GET /describe?title=... (chunked text) and GET /health. The prompt (completions) "
            "or the last user message (chat) is the product title; lines after the first are "
            "a question about it. Decoding is the library's defaults unless the options below "
            "change them; requests may shorten answers (max_tokens) or sample (temperature)."
        ),
    )
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="training output or merged model directory"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
        f"${API_KEY_ENV}; neither set: no authentication, which is logged at startup)",
    )
    parser.add_argument(
        "--model-name",
        metavar="NAME",
        help="the model id /v1/models lists (default: the model directory's name)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="seconds one answer may take, queueing included (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=8,
        metavar="N",
        help="requests answered or waiting at once; more get 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=MAX_PROMPT_TOKENS,
        metavar="N",
        help="longest rendered prompt a request may make, in tokens (default: %(default)s)",
    )
    add_generation_options(
        parser,
        "max_new_tokens",
        "temperature",
        "top_p",
        "do_sample",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "exponential_decay_length_penalty",
    )
    parser.add_argument(
        "--context",
        type=Path,
        metavar="INDEX",
        help="retrieval index (or prepared data) for models trained with the 'context' template",
    )
    add_hybrid_options(parser)
    add_backend_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from productdesc.generation.describer import Describer
    from productdesc.serve import API_KEY_ENV, MAX_NEW_TOKENS_CAP, create_app

    if args.timeout <= 0:
        raise UserError(f"--timeout must be above 0, got {args.timeout}")
    if args.max_queue < 1 or args.max_prompt_tokens < 1:
        raise UserError("--max-queue and --max-prompt-tokens must be at least 1")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be from 1 to 65535, got {args.port}")
    require_extra("serve", SERVE_MODULES)
    check_hybrid_args(args)
    generation = generation_from_args(args)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    with contextlib.redirect_stdout(sys.stderr):  # loaders' banners
        describer = Describer.from_pretrained(
            args.model, backend=args.backend, generation=generation, retriever=args.context
        )
    describer.warm_up()  # compiles the CUDA fast path before traffic; nothing on CPU
    describer = hybrid_from_args(describer, args)
    if api_key is None and args.host not in _LOCAL:
        print(
            f"productdesc serve: warning: listening on {args.host} without --api-key: anyone "
            "who reaches it may use it",
            file=sys.stderr,
        )
    import uvicorn

    app = create_app(
        describer,
        api_key=api_key,
        timeout_s=args.timeout,
        max_queue=args.max_queue,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens_cap=max(MAX_NEW_TOKENS_CAP, describer.generation.max_new_tokens),
        model_name=args.model_name or Path(args.model).resolve().name,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
