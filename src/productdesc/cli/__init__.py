"""The ``productdesc`` command line. Library code never imports this package.

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` (which sets
``func`` on its parser); heavy imports happen inside ``func`` so ``--help`` stays instant.
Errors a user can fix (:class:`productdesc.errors.UserError`) become one line on stderr and
exit status 2; anything else is a bug and keeps its traceback. Other libraries log at WARNING
and draw no progress bars unless ``-v`` is given (before or after the sub-command).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from productdesc._version import __version__
from productdesc.errors import UserError
from productdesc.plugins import PluginWarning

# Order here is the order in `productdesc --help`.
_COMMANDS = [
    "prepare",
    "index",
    "train",
    "describe",
    "export",
    "serve",
    "demo",
    "evaluate",
    "plugins",
]

# `-v` after the sub-command: its own dest, added to the main parser's count (a sub-parser's
# value for a shared dest would replace what was counted before the sub-command).
_VERBOSE_AFTER = "verbose_after_command"
_VERBOSE_HELP = "more logging (-vv: debug)"

# Libraries the commands run; their INFO and DEBUG lines are for their developers. bm25s even
# sets its own logger to DEBUG (productdesc.retrieval undoes that).
_LIBRARIES = (
    "accelerate",
    "bm25s",
    "datasets",
    "filelock",
    "fsspec",
    "httpcore",
    "httpx",
    "huggingface_hub",
    "matplotlib",
    "peft",
    "PIL",
    "transformers",
    "trl",
    "unsloth",
    "unsloth_zoo",
    "urllib3",
)
# Warnings, at import, about optional kernels of libraries productdesc does not call (torchao's
# compiled extensions, torch on torchao's enums, bitsandbytes' CPU kernels): nothing to act on.
_IMPORT_NOISE = ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="productdesc",
        description="Clean AmazonTitles-1.3MM, fine-tune a small LLM with LoRA, describe products.",
    )
    parser.add_argument("--version", action="version", version=f"productdesc {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"productdesc.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"productdesc.cli.{name}":
                raise
            continue  # command not built yet in this checkout
        module.add_parser(sub)
    for command_parser in set(sub.choices.values()):  # a set: an alias names the same parser
        command_parser.add_argument(
            "-v", "--verbose", action="count", default=0, dest=_VERBOSE_AFTER, help=_VERBOSE_HELP
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose += vars(args).pop(_VERBOSE_AFTER, 0)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries(args.verbose)
    # A skipped plugin is already logged once; the warning would repeat it with a file and line.
    warnings.simplefilter("ignore", PluginWarning)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return status
    except UserError as exc:
        print(f"productdesc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"productdesc {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`productdesc describe ... | head -1`): stop quietly, as the
        # Python docs recommend, with devnull under stdout so that the flush at exit cannot
        # fail again, and the status of a process ended by SIGPIPE (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _quiet_libraries(verbose: int) -> None:
    """Other libraries' loggers at WARNING and their progress bars off, unless ``verbose``."""
    for names, quiet in ((_LIBRARIES, logging.WARNING), (_IMPORT_NOISE, logging.ERROR)):
        for name in names:
            logging.getLogger(name).setLevel(logging.NOTSET if verbose else quiet)
    # transformers warns, at a BPE tokenizer's first decode, that it ignores the
    # clean_up_tokenization_spaces its config asks for (SmolLM2's does); ignoring it is right.
    logging.getLogger("transformers.tokenization_utils_tokenizers").addFilter(_not_cleanup_note)
    if verbose:
        return
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    # transformers reads the Hub's switch when first imported (its weight-loading and
    # shard-writing bars); the Hub's own bars, downloads, are a wait a user should see.
    disable_progress_bars()
    enable_progress_bars("huggingface_hub")
    # datasets reads its own switch from the environment when first imported (the maps that
    # TRL runs to tokenize); a value the user set stays.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _not_cleanup_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Ignoring clean_up_tokenization_spaces")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
