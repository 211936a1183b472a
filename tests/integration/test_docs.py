"""The docs: examples in docstrings run, and the Sphinx build passes with warnings as errors and
documents every command and every configuration field.
"""

from __future__ import annotations

import argparse
import doctest
import html
import importlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DOCS = ROOT / "docs"
EXAMPLE_SRC = ROOT / "examples" / "plugin_example" / "src"

sys.path.insert(0, str(DOCS / "_ext"))
from productdesc_docs import attribute_docs, subcommands  # noqa: E402


# -- doctests --------------------------------------------------------------------------------
def _modules_with_examples(root: Path) -> list[str]:
    """Modules under ``root`` whose source holds a ``>>>`` example (found without importing)."""
    return [
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted(root.rglob("*.py"))
        if ">>>" in path.read_text(encoding="utf-8")
    ]


DOCTEST_MODULES = _modules_with_examples(SRC)
if importlib.util.find_spec("productdesc_plugin_example") is not None:
    DOCTEST_MODULES += _modules_with_examples(EXAMPLE_SRC)


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name: str) -> None:
    """Each module's examples run (imported only here, so collection stays fast)."""
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module)
    assert tests, f"{name} has '>>>' in its source but no docstring examples were found"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


# -- the Sphinx build ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinx", reason="the docs need the docs extra")
    pytest.importorskip("myst_parser", reason="the docs need myst-parser (Markdown pages)")
    out = tmp_path_factory.mktemp("docs-html")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-6000:]}"
    return out


def _text(fragment: str) -> str:
    """HTML to plain text: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


@pytest.mark.slow
def test_docs_build_has_every_page(built_docs: Path) -> None:
    for page in ("index", "quickstart", "cli", "config", "plugins", "api", "benchmarks",
                 "evaluation", "guide/dataset", "guide/prompts", "guide/finetune",
                 "guide/describe", "guide/evaluate"):  # fmt: skip
        assert (built_docs / f"{page}.html").is_file(), page
    quickstart = _text((built_docs / "quickstart.html").read_text(encoding="utf-8"))
    assert "python3 -m pip install nox && python3 -m nox -s demo" in quickstart
    assert "python3 -m pip install nox && python3 -m nox -s tests" in quickstart


@pytest.mark.slow
def test_cli_reference_has_every_command_and_option(built_docs: Path) -> None:
    from productdesc.cli import build_parser

    page = _text((built_docs / "cli.html").read_text(encoding="utf-8"))
    commands = subcommands(build_parser())
    assert {"prepare", "train", "describe", "demo", "evaluate", "plugins"} <= set(commands)
    for name, parser in commands.items():
        assert f"productdesc {name}" in page
        assert f"usage: productdesc {name}" in page
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, f"{name} {option}"
            if action.help and action.help != argparse.SUPPRESS:
                # argparse wraps the help text; its first words stay together
                words = action.help.split("%(")[0].split()[:3]
                assert " ".join(words) in page, f"{name} {action.dest}"


def _config_classes() -> list[type]:
    from productdesc import config
    from productdesc.data import cleaners
    from productdesc.data.config import PrepareConfig
    from productdesc.prompts import templates

    classes = [getattr(config, name) for name in config.__all__]
    classes = [c for c in classes if isinstance(c, type) and attrs.has(c)]
    builtins = [
        info.obj
        for registry in (cleaners, templates)
        for info in registry.infos()
        if info.source.endswith("(built-in)") and attrs.has(info.obj)
    ]
    return [*classes, PrepareConfig, *builtins]


@pytest.mark.slow
def test_config_reference_has_every_field(built_docs: Path) -> None:
    page = (built_docs / "config.html").read_text(encoding="utf-8")
    classes = _config_classes()
    assert len(classes) >= 10
    for cls in classes:
        match = re.search(
            rf'<table class="productdesc-config-{cls.__qualname__.lower()}[ "].*?</table>',
            page,
            re.S,
        )
        assert match, f"no table for {cls.__qualname__}"
        rows = {
            _text(cells[0]): [_text(c) for c in cells[1:]]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", match.group(0), re.S)[1:]
            if (cells := re.findall(r"<td>(.*?)</td>", row, re.S))
        }
        docs = attribute_docs(cls)
        for field in attrs.fields(cls):
            if not field.init:
                continue
            name = field.alias
            assert name in rows, f"{cls.__qualname__}.{name} missing"
            _type, default, meaning = rows[name]
            if field.default is not attrs.NOTHING and not isinstance(field.default, attrs.Factory):
                assert default == repr(field.default), f"{cls.__qualname__}.{name} default"
            # the docstring's words, with reST roles as they render (their last dotted part)
            source = re.sub(r":\w+:`~?([^`]*)`", lambda m: m[1].split(".")[-1], docs[name])
            words = re.findall(r"[A-Za-z]{4,}", source)[:4]
            assert words and all(w in meaning for w in words), f"{cls.__qualname__}.{name}"
