"""``productdesc describe``: answer about one title (streamed) or a file of titles (batched).

productdesc describe --model runs/smollm2-lora "Nice for Mice"
productdesc describe --model runs/smollm2-lora "Nice for Mice" --question "Is it good for toddlers?"
productdesc describe --model runs/smollm2-lora --file titles.txt --out answers.jsonl
productdesc describe --model runs/context-lora --context data/prepared "Nice for Mice"
productdesc describe --model runs/smollm2-lora --hybrid 2.75 --index data/prepared --file titles.txt
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from productdesc.cli._options import (
    add_backend_option,
    add_fast_option,
    add_generation_options,
    add_hybrid_options,
    check_hybrid_args,
    generation_from_args,
    hybrid_from_args,
)
from productdesc.errors import UserError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "describe",
        help="describe a product title with a fine-tuned model",
        description=(
            "Answer about a product title with a trained model: one title is streamed to "
            "stdout; --file batches one title a line into JSON Lines."
        ),
    )
    parser.add_argument("title", nargs="?", help="the product title (or use --file)")
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="training output or merged model directory"
    )
    parser.add_argument("--question", help="a question about the product instead of 'describe'")
    parser.add_argument("--file", type=Path, metavar="TXT", help="titles, one a line")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="JSONL",
        help="with --file: write answers here (default: stdout); fields title, question, "
        "answer, stopped_at_eos, new_tokens, source ('model', or 'retrieval' where --hybrid "
        "copied)",
    )
    add_generation_options(
        parser,
        "batch_size",
        "max_new_tokens",
        "temperature",
        "top_p",
        "do_sample",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "exponential_decay_length_penalty",
    )
    parser.add_argument(
        "--base-only",
        action="store_true",
        help="the base model without the adapter, same prompt (zero-shot baseline)",
    )
    parser.add_argument(
        "--context",
        type=Path,
        metavar="INDEX",
        help="answer from the nearest known products: a retrieval index directory "
        "(`productdesc index`) or a prepared data directory; for models trained with the "
        "'context' template",
    )
    add_hybrid_options(parser)
    add_fast_option(parser)
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="compile the fast path with torch.compile: about twice its decoding speed, for "
        "minutes of compiling first (worth it for many thousands of titles)",
    )
    add_backend_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from productdesc.generation.describer import Describer

    if (args.title is None) == (args.file is None):
        raise UserError("give either a TITLE or --file, not both or neither")
    if args.out is not None and args.file is None:
        raise UserError("--out needs --file")
    if args.out is not None:
        _check_writable(args.out)
    check_hybrid_args(args)
    titles = _read_titles(args.file) if args.file is not None else []
    generation = generation_from_args(args)
    # Loaders (Unsloth) print banners; stdout carries only answers, so they can be piped.
    with contextlib.redirect_stdout(sys.stderr):
        describer = Describer.from_pretrained(
            args.model,
            backend=args.backend,
            base_only=args.base_only,
            generation=generation,
            retriever=args.context,
            fast=args.fast,
            torch_compile=args.torch_compile,
        )
    describer = hybrid_from_args(describer, args)
    if args.file is None:
        for piece in describer.stream(args.title, args.question):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    return _describe_file(describer, titles, args)


def _check_writable(path: Path) -> None:
    """Fail before any answer is generated where ``--out`` could not be written at the end.

    Raises:
        UserError: ``path`` is a directory, or its folder cannot be created or written.
    """
    if path.is_dir():
        raise UserError(
            f"--out {path} is a directory; give a file in it, such as {path / 'answers.jsonl'}"
        )
    folder = path.parent
    while not folder.exists():  # the write creates missing folders: the nearest must allow it
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--out {path}: {folder} is a file, not a directory; choose another --out")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(
            f"--out {path}: cannot write in {folder} ({exc.strerror}); choose another --out"
        ) from None


def _read_titles(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"titles file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"titles file {path} is not UTF-8 text: {exc}") from None
    titles = [line.strip() for line in lines if line.strip()]
    blank = len(lines) - len(titles)
    if blank:
        print(f"skipped {blank} blank line(s) in {path}", file=sys.stderr)
    if not titles:
        raise UserError(f"no titles in {path}")
    return titles


def _describe_file(describer: Any, titles: list[str], args: argparse.Namespace) -> int:
    import orjson

    from productdesc._io import atomic_write

    questions = [args.question] * len(titles)
    started = time.perf_counter()
    details = describer.describe_batch(titles, questions, progress=True, return_details=True)
    seconds = time.perf_counter() - started
    lines = [
        orjson.dumps(
            {
                "title": title,
                "question": args.question,
                "answer": d.text,
                "stopped_at_eos": d.stopped_at_eos,
                "new_tokens": d.new_tokens,
                "source": d.source,
            }
        ).decode()
        + "\n"
        for title, d in zip(titles, details, strict=True)
    ]
    if args.out is None:
        sys.stdout.writelines(lines)
    else:
        with atomic_write(args.out) as fh:
            fh.writelines(lines)
    tokens = sum(d.new_tokens for d in details)
    stopped = sum(d.stopped_at_eos for d in details)
    print(
        f"described {len(titles)} titles in {seconds:.1f} s: {len(titles) / seconds:.2f} titles/s, "
        f"{tokens / seconds:.1f} new tokens/s; {stopped} of {len(titles)} stopped at EOS"
        + (f"; wrote {args.out}" if args.out is not None else ""),
        file=sys.stderr,
    )
    return 0
