"""Configs as files: TOML and YAML read, values parsed, sections built with errors that name the
field and say what it takes."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import attrs

from productdesc.config.fields import _not_bool
from productdesc.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


__all__ = ["YAML_SUFFIXES", "read_config_file", "toml_value"]


def toml_value(text: str) -> Any:
    """``text`` read as a TOML value (``2e-4``, ``true``, ``"a"``, ``["a", "b"]``), else itself.

    What ``productdesc train --set KEY=VALUE`` does with VALUE: text that is not TOML stays
    text, so names need no quotes (``model.model_name=smollm2-135m``).
    """
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


YAML_SUFFIXES = (".yaml", ".yml")
"""File name endings that :meth:`FineTuneConfig.from_file` reads as YAML."""


def read_config_file(path: Path) -> str:
    """A config file's text; every way reading it fails is one line naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
            f"offset {exc.start}); save it as UTF-8"
        ) from None


def _yaml_loader() -> type:
    """PyYAML's safe loader with YAML 1.2's booleans (1.1 reads ``off`` and ``no`` as false)."""
    import yaml

    bool_tag = "tag:yaml.org,2002:bool"

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

    Loader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def _yaml_error(exc: Exception) -> str:
    """PyYAML's error (several lines, with a snippet) as one line with the position."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """``cls(**values)``; a rejected value is one line naming the field after ``prefix``.

    attrs' own errors carry the field's whole ``Attribute`` (hundreds of characters) and
    ``instance_of(int)`` passes booleans, so integer fields are checked for those here too.
    """
    try:
        for attribute in attrs.fields(cls):
            if attribute.name in values and attribute.type in ("int", "int | None"):
                _not_bool(None, attribute, values[attribute.name])
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"config: {prefix}{_field_error(exc)}") from None


def _field_error(exc: Exception) -> str:
    if len(exc.args) == 4 and isinstance(exc.args[1], attrs.Attribute):
        _, attribute, expected, value = exc.args
        if isinstance(exc, TypeError):  # instance_of: (message, attribute, type, value)
            types = expected if isinstance(expected, tuple) else (expected,)
            wanted = " or ".join(_KINDS.get(t, t.__name__) for t in types)
        else:  # in_: (message, attribute, options, value)
            wanted = "one of " + ", ".join(map(repr, expected))
        return f"'{attribute.name}' must be {wanted}, got {value!r}"
    return str(exc)  # the other validators' messages: one line naming the field


def _reject_unknown(cls: type, data: dict[str, Any], section: str) -> None:
    known = set(attrs.fields_dict(cls))
    unknown = sorted(map(str, set(data) - known))  # str: YAML keys can be numbers
    if unknown:
        where = f"[{section}]" if section else "top level"
        raise UserError(
            f"config: unknown key(s) {', '.join(unknown)} in {where}; known: {', '.join(sorted(known))}"
        )
