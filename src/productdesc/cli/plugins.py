"""``productdesc plugins``: what each extension point holds, and which package provides it.

productdesc plugins
productdesc plugins --group templates
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

REGISTRIES = ("cleaners", "templates", "backends")
_HEADER = ("NAME", "SOURCE", "TARGET")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list installed cleaning steps, prompt templates and backends",
        description=(
            "List every registered cleaning step, prompt template and fine-tuning backend, "
            "grouped by registry, with the package that provides it and its 'module:attribute' "
            "target. A plugin that fails to load is reported on stderr, left out, and makes the "
            "exit status 1. Set PRODUCTDESC_DISABLE_PLUGIN_AUTOLOAD=1 to list the built-ins only."
        ),
    )
    parser.add_argument(
        "--group",
        choices=REGISTRIES,
        action="append",
        help="only this registry (repeatable; default: all three)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from productdesc import plugins
    from productdesc.backends import backends
    from productdesc.data import cleaners
    from productdesc.prompts import templates

    named = {"cleaners": cleaners, "templates": templates, "backends": backends}
    registries = [named[name] for name in args.group or REGISTRIES]
    # The registry logs each skipped plugin (shown on stderr by the CLI's logging); the
    # warning copy is only counted here, not printed a second time.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plugins.PluginWarning)
        groups = [(registry, list(registry.infos())) for registry in registries]
    skipped = [w for w in caught if issubclass(w.category, plugins.PluginWarning)]

    cells = [_HEADER] + [(i.name, i.source, i.target) for _, infos in groups for i in infos]
    # One width for all groups, so the columns line up down the whole listing.
    widths = [max(len(row[col]) for row in cells) for col in (0, 1)]
    lines: list[str] = []
    for registry, infos in groups:
        if lines:
            lines.append("")
        lines.append(f"{registry.group}: {len(infos)} {registry.kind}(s)")
        lines.append(_row(_HEADER, widths))
        lines.extend(_row((i.name, i.source, i.target), widths) for i in infos)
    print("\n".join(lines))
    if skipped:
        print(
            f"{len(skipped)} plugin(s) could not be loaded; see the warnings above", file=sys.stderr
        )
        return 1
    return 0


def _row(cells: tuple[str, str, str], widths: list[int]) -> str:
    return f"  {cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]}".rstrip()
