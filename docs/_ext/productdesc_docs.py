"""Sphinx directives that generate reference pages from the code, so they cannot go stale.

``.. productdesc-cli::``
    The ``--help`` of ``productdesc`` and of every sub-command, from
    :func:`productdesc.cli.build_parser`: one section per command.

``.. productdesc-config:: module.Class``
    A table of an ``attrs`` class's fields: name, type, default, and the field's entry in the
    class docstring's ``Attributes:`` section(s). A field without an entry is a warning (an
    error under ``sphinx-build -W``), so every option stays documented.

``.. productdesc-registry:: cleaners``
    One ``productdesc-config`` table per built-in entry of a plugin registry.

``.. productdesc-results::``
    A toctree of the Markdown/reST pages under ``docs/results/`` (evaluation reports), or a
    note when there are none yet.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

HELP_WIDTH = "88"  # argparse wraps --help to $COLUMNS; fixed so the page is the same everywhere


@contextmanager
def _columns(width: str):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _literal(text: str) -> list[str]:
    return [
        ".. code-block:: text",
        "",
        *("    " + line if line else "" for line in text.rstrip().splitlines()),
        "",
    ]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``name -> sub-parser`` of ``parser``'s sub-commands, in ``--help`` order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class _Generated(SphinxDirective):
    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.Element()
        content = StringList(lines, source=self.get_source_info()[0])
        nested_parse_with_titles(self.state, content, container)
        return container.children


class CliDirective(_Generated):
    """Every sub-command's ``--help``, generated from the parser itself."""

    def run(self) -> list[nodes.Node]:
        from productdesc.cli import build_parser

        lines: list[str] = []
        with _columns(HELP_WIDTH):
            parser = build_parser()
            lines += _literal(parser.format_help())
            for name, sub in subcommands(parser).items():
                title = f"productdesc {name}"
                lines += [f".. _cli-{name}:", "", title, "-" * len(title), ""]
                lines += _literal(sub.format_help())
        return self._parse(lines)


# -- attrs classes ------------------------------------------------------------------------------
_ENTRY = re.compile(r"^(?P<indent>\s+)(?P<name>\w+)(?: \([^)]*\))?:\s*(?P<text>.*)$")


def attribute_docs(cls: type) -> dict[str, str]:
    """``field -> text`` from every Google-style ``Attributes:`` section of ``cls``'s docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    docs: dict[str, str] = {}
    in_section = False
    entry_indent = None
    current = None
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_section, entry_indent, current = True, None, None
            continue
        if not in_section:
            continue
        if not line.strip():
            current = None if entry_indent is None else current
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # the section ended
            in_section = False
            continue
        match = _ENTRY.match(line)
        if match and (entry_indent is None or indent == entry_indent):
            entry_indent = indent
            current = match["name"]
            docs[current] = match["text"].strip()
        elif current is not None and indent > (entry_indent or 0):
            docs[current] += " " + line.strip()
    return docs


def _default(field: attrs.Attribute) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "*required*"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        factory = default.factory
        name = getattr(factory, "__name__", repr(factory))
        return f"``{name}()``"
    return f"``{default!r}``"


def _type(field: attrs.Attribute) -> str:
    kind = field.type
    if kind is None:
        return ""
    text = kind if isinstance(kind, str) else getattr(kind, "__name__", repr(kind))
    return f"``{text}``"


def _cell(text: str) -> str:
    return text.replace("\n", " ").strip() or " "


def config_table(cls: type, warn: Any) -> list[str]:
    """reST lines: a ``list-table`` of ``cls``'s init fields, with a warning per undocumented one."""
    docs = attribute_docs(cls)
    rows: list[list[str]] = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        name = field.alias or field.name
        text = docs.get(name) or docs.get(field.name)
        if not text:
            warn(
                f"{cls.__module__}.{cls.__qualname__}: field {name!r} has no entry in the "
                f"class docstring's Attributes section"
            )
            text = ""
        rows.append([f"``{name}``", _type(field), _default(field), text])
    # The class names the table, so tests (and CSS) can find the table of a given class.
    css = f"productdesc-config-{cls.__qualname__.lower()}"
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 18 18 46",
        f"   :class: {css}",
        "",
        "   * - Field",
        "     - Type",
        "     - Default",
        "     - Meaning",
    ]
    for row in rows:
        lines.append(f"   * - {_cell(row[0])}")
        lines += [f"     - {_cell(cell)}" for cell in row[1:]]
    return [*lines, ""]


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class ConfigDirective(_Generated):
    """The fields of one ``attrs`` class, documented from its docstring."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        cls = _import(self.arguments[0])
        if not attrs.has(cls):
            raise self.error(f"{self.arguments[0]} is not an attrs class")
        summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n", 1)[0]
        lines = [f"{summary}", "", *config_table(cls, self._warn)]
        return self._parse(lines)

    def _warn(self, message: str) -> None:
        logger.warning(message, location=self.get_location())


class RegistryDirective(ConfigDirective):
    """One section per built-in entry of a registry (``cleaners``, ``templates``...)."""

    def run(self) -> list[nodes.Node]:
        from productdesc import plugins

        registry = getattr(plugins, self.arguments[0])
        lines: list[str] = []
        for info in registry.infos():
            if not info.source.endswith("(built-in)"):
                continue  # only what productdesc ships; installed plugins vary by machine
            cls = info.obj
            title = f"``{info.name}``"
            lines += [
                title,
                "~" * len(title),
                "",
                f":class:`{cls.__module__}.{cls.__qualname__}`",
                "",
            ]
            summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n", 1)[0]
            lines += [summary, ""]
            if attrs.has(cls):
                lines += config_table(cls, self._warn)
        return self._parse(lines)


class ResultsDirective(_Generated):
    """A toctree of the pages under ``results/``, or a note when there are none."""

    def run(self) -> list[nodes.Node]:
        srcdir = Path(self.env.srcdir)
        suffixes = tuple(self.config.source_suffix)
        pages = sorted(
            p.relative_to(srcdir).with_suffix("").as_posix()
            for p in (srcdir / "results").rglob("*")
            if p.suffix in suffixes and p.is_file()
        )
        if not pages:
            return self._parse(
                [
                    "No evaluation results are committed yet. ``productdesc evaluate`` writes a",
                    "report (``report.md``, ``report.html``, ``results.json``, ``loss.png``); put",
                    "its ``report.md`` under ``docs/results/<run>/`` to publish it here.",
                    "",
                ]
            )
        return self._parse(
            [".. toctree::", "   :maxdepth: 1", "", *(f"   /{p}" for p in pages), ""]
        )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("productdesc-cli", CliDirective)
    app.add_directive("productdesc-config", ConfigDirective)
    app.add_directive("productdesc-registry", RegistryDirective)
    app.add_directive("productdesc-results", ResultsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
