"""The ``productdesc`` command line. Library code never imports this package.

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` (which sets
``func`` on its parser); heavy imports happen inside ``func`` so ``--help`` stays instant.
Errors a user can fix (:class:`productdesc.errors.UserError`) become one line on stderr and
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="productdesc",
        description="Clean AmazonTitles-1.3MM, fine-tune a small LLM with LoRA, describe products.",
    )
    parser.add_argument("--version", action="version", version=f"productdesc {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"productdesc.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"productdesc.cli.{name}":
                raise
            continue  # command not built yet in this checkout
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # A skipped plugin is already logged once; the warning would repeat it with a file and line.
    warnings.simplefilter("ignore", PluginWarning)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"productdesc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"productdesc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
