"""What several sub-commands share: decoding settings, the backend option, the extras check."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from productdesc.errors import UserError

# What `pip install "productdesc[eval]"` adds that index, evaluate and retrieval import.
EVAL_MODULES = ("bm25s", "snowballstemmer", "rouge_score", "sacrebleu")


def _length_penalty(text: str) -> tuple[int, float]:
    try:
        start, factor = text.split(",")
        return int(start), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START,FACTOR such as 300,1.05, got {text!r}"
        ) from None


# GenerationConfig field -> (flag, argparse keywords); a command picks the ones it offers.
_GENERATION: dict[str, tuple[str, dict[str, Any]]] = {
    "batch_size": ("--batch-size", {"type": int, "help": "titles per generate call (default 8)"}),
    "max_new_tokens": (
        "--max-new-tokens",
        {"type": int, "help": "longest answer in tokens (default 384)"},
    ),
    "temperature": (
        "--temperature",
        {"type": float, "help": "sampling temperature (with --do-sample)"},
    ),
    "top_p": ("--top-p", {"type": float, "help": "nucleus sampling mass (with --do-sample)"}),
    "repetition_penalty": (
        "--repetition-penalty",
        {"type": float, "help": "penalty on repeated tokens (default 1.0: none)"},
    ),
    "no_repeat_ngram_size": (
        "--no-repeat-ngram-size",
        {
            "type": int,
            "metavar": "N",
            "help": "never repeat an N-token n-gram (default 4; 0: plain greedy, no guard)",
        },
    ),
    "exponential_decay_length_penalty": (
        "--length-penalty",
        {
            "type": _length_penalty,
            "metavar": "START,FACTOR",
            "help": "after START new tokens, raise EOS's score by FACTOR a token (default off)",
        },
    ),
    "do_sample": (
        "--do-sample",
        {"action": "store_true", "default": None, "help": "sample instead of greedy decoding"},
    ),
}


def add_generation_options(parser: argparse.ArgumentParser, *fields: str) -> None:
    """Add the flags of these :class:`~productdesc.config.GenerationConfig` fields."""
    for name in fields:
        flag, kwargs = _GENERATION[name]
        parser.add_argument(flag, **kwargs)


def generation_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~productdesc.config.GenerationConfig` the flags ask for.

    Called before any model loads, so a bad value costs nothing; the error names the field.
    """
    from productdesc.config import GenerationConfig
    from productdesc.generation.describer import evolve_generation

    given = {name: getattr(args, name, None) for name in _GENERATION}
    return evolve_generation(
        GenerationConfig(), **{k: v for k, v in given.items() if v is not None}
    )


def require_extra(extra: str, modules: tuple[str, ...]) -> None:
    """Fail before any work starts where the optional ``extra``'s ``modules`` are missing.

    Raises:
        UserError: Naming the missing modules and the ``pip install`` line that adds them.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"this needs {', '.join(missing)}, which the [{extra}] extra installs: "
            f'pip install "productdesc[{extra}]"'
        )


def add_fast_option(parser: argparse.ArgumentParser) -> None:
    """``--fast/--no-fast`` for commands that generate (``Describer(fast=...)``)."""
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the CUDA fast path (static KV cache, CUDA graphs): --fast for every call, "
        "--no-fast never; default: on a CUDA GPU",
    )


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend`` for commands that load a trained model."""
    parser.add_argument(
        "--backend",
        default="auto",
        help="backend to load with (default: the one the run used, else unsloth if installed)",
    )


def add_hybrid_options(parser: argparse.ArgumentParser) -> None:
    """``--hybrid SCORE`` and ``--index INDEX``: copy known products' descriptions where
    retrieval is sure (:class:`~productdesc.generation.hybrid.HybridDescriber`)."""
    parser.add_argument(
        "--hybrid",
        type=float,
        metavar="SCORE",
        help="answer with the nearest known product's description where its BM25 score is at "
        "least SCORE, and generate otherwise (scores depend on the index: `evaluate --hybrid "
        "auto` fits SCORE on it); the known products come from --index, else --context",
    )
    parser.add_argument(
        "--index",
        type=Path,
        metavar="INDEX",
        help="with --hybrid: the known products, a retrieval index directory or a prepared "
        "data directory",
    )


def check_hybrid_args(args: argparse.Namespace) -> None:
    """Fail before anything loads where ``--hybrid``, ``--index`` and ``--context`` do not fit
    together, or the retrieval index's libraries are missing."""
    if args.index is not None and args.hybrid is None:
        raise UserError("--index is the known products of --hybrid; give --hybrid SCORE too")
    if args.hybrid is not None and args.index is None and args.context is None:
        raise UserError("--hybrid needs the known products: --index INDEX (or --context INDEX)")
    if args.hybrid is not None or args.context is not None:
        require_extra("eval", EVAL_MODULES)  # the retrieval index


def hybrid_from_args(describer: Any, args: argparse.Namespace) -> Any:
    """``describer``, or with ``--hybrid`` a hybrid that copies from ``--index`` (else
    ``--context``) and asks ``describer`` for the rest."""
    if args.hybrid is None:
        return describer
    from productdesc.generation.hybrid import HybridDescriber
    from productdesc.retrieval.store import open_index

    known = args.index if args.index is not None else args.context
    return HybridDescriber(describer, open_index(known), args.hybrid)
