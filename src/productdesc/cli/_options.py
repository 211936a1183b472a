"""Options several sub-commands share: decoding settings and the backend to load with."""

from __future__ import annotations

import argparse
from typing import Any

# GenerationConfig field -> (flag, argparse keywords); a command picks the ones it offers.
_GENERATION: dict[str, tuple[str, dict[str, Any]]] = {
    "batch_size": ("--batch-size", {"type": int, "help": "titles per generate call (default 8)"}),
    "max_new_tokens": (
        "--max-new-tokens",
        {"type": int, "help": "longest answer in tokens (default 128)"},
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
        {"type": int, "metavar": "N", "help": "never repeat an N-token n-gram (default 0: off)"},
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
    from productdesc.describe import evolve_generation

    given = {name: getattr(args, name, None) for name in _GENERATION}
    return evolve_generation(
        GenerationConfig(), **{k: v for k, v in given.items() if v is not None}
    )


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend`` for commands that load a trained model."""
    parser.add_argument(
        "--backend",
        default="auto",
        help="backend to load with (default: the one the run used, else unsloth if installed)",
    )
