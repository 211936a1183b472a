""":class:`PrepareConfig`: what ``prepare`` does to ``trn.json`` (frozen, validated)."""

from __future__ import annotations

from typing import Any, Literal

import attrs
from attrs import field, frozen
from attrs import validators as v

from productdesc.data.cleaning import DEDUPE_MODES, cleaners, default_steps
from productdesc.data.pipeline import Pipeline, is_keyed, step_name, step_options
from productdesc.data.split import SPLIT_NAMES, parse_split

__all__ = ["RECORD_FIELDS", "PrepareConfig", "parse_columns"]

#: The fields of a record, in the order an input's columns are mapped to them.
RECORD_FIELDS = ("uid", "title", "content")


def parse_columns(value: Any) -> Any:
    """``"title=name,content=description"``, a mapping or ``(field, column)`` pairs as sorted
    ``(field, column)`` pairs of the fields whose column has another name."""
    if isinstance(value, str):
        pairs = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            record_field, sep, column = item.partition("=")
            if not sep or not column.strip():
                raise ValueError(
                    f"'columns' item {item!r} is not FIELD=COLUMN (e.g. title=name,content=text)"
                )
            pairs.append((record_field.strip(), column.strip()))
        value = pairs
    elif isinstance(value, dict):
        value = list(value.items())
    if not isinstance(value, (list, tuple)):
        return value  # the validator names the type
    fields = [
        pair[0] if isinstance(pair, (list, tuple)) and len(pair) == 2 else None for pair in value
    ]
    if None in fields:
        raise ValueError("'columns' must be FIELD=COLUMN pairs, e.g. title=name,content=text")
    if len(set(fields)) != len(fields):
        raise ValueError(f"'columns' maps a field twice: {', '.join(map(str, fields))}")
    # Identity pairs are dropped so that a spelled-out default is the same config.
    return tuple(sorted((f, c) for f, c in value if f != c))


def _check_columns(instance: PrepareConfig, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"'columns' must be FIELD=COLUMN pairs, got {type(value).__name__}")
    for record_field, column in value:
        if record_field not in RECORD_FIELDS:
            raise ValueError(
                f"'columns' maps {record_field!r}, not a record field ({', '.join(RECORD_FIELDS)})"
            )
        if not isinstance(column, str) or not column:
            raise ValueError(f"'columns' maps {record_field!r} to {column!r}, not a column name")


def _to_steps(value: Any) -> Any:
    # Names resolve through the plugin registry, so `steps=("html_unescape", MyStep())` works.
    if value is None or not isinstance(value, (list, tuple)):
        return value
    return tuple(cleaners.get(s)() if isinstance(s, str) else s for s in value)


def _check_steps(instance: PrepareConfig, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, tuple):
        raise TypeError(f"'steps' must be a sequence of cleaning steps, got {type(value).__name__}")
    for step in value:
        if not (callable(step) or is_keyed(step)):
            raise TypeError(f"'steps' item {step!r} is neither callable nor a keyed step")
    shorthand = {
        name: getattr(instance, name)
        for name in ("keep_chars", "min_length", "dedupe")
        if getattr(instance, name) != attrs.fields_dict(PrepareConfig)[name].default
    }
    if shorthand:
        raise ValueError(
            f"'steps' replaces the default pipeline, so {', '.join(sorted(shorthand))} would be "
            f"ignored: set those options on the steps instead (e.g. KeepChars(extra=...))"
        )


@frozen(kw_only=True)
class PrepareConfig:
    """Options of :meth:`AmazonTitlesDataset.prepare <productdesc.AmazonTitlesDataset.prepare>`.

    Cleaning (used to build the default pipeline when ``steps`` is ``None``):

    Attributes:
        keep_chars: Characters kept besides letters, digits, spaces, ``,`` and ``.``
            (e.g. ``"-'&%/"``); the seed keeps none.
        min_length: Records whose cleaned title or content is shorter are dropped
            (``too_short``); empty ones are always dropped (``empty_title``/``empty_content``).
        dedupe: ``"text"`` (same normalised title and content), ``"title"``, ``"uid"`` or
            ``"off"``.
        steps: A full pipeline of step instances (or registered step names) replacing the
            default one; ``None`` for :func:`~productdesc.data.cleaning.default_steps`.

    Input:

    Attributes:
        columns: The input's column (or JSON key) of each record field whose column has
            another name, e.g. ``{"title": "name", "content": "description"}`` or
            ``"title=name,content=description"``; kept as sorted pairs. Fields not named
            are read from the column of their own name (``uid`` may be absent).

    Output:

    Attributes:
        shard_size: Records per shard file (``train-00000.jsonl`` ...).
        split: Train/validation/test shares, as ``"98/1/1"`` or three numbers.
        rejects_per_reason: How many dropped lines of each reason go to ``rejects.jsonl``.

    Run (not part of the output's identity; any value writes the same bytes):

    Attributes:
        workers: Processes that parse and clean (2 uses both cores of a 2-core machine;
            1 runs in this process).
        chunk_bytes: Bytes of input per task handed to a worker.
        max_unreadable: The largest share of input lines that may be no record at all
            (:data:`~productdesc.data.reader.UNREADABLE_REASONS`: not UTF-8, not JSON, not
            an object, a field missing or of the wrong type) before ``prepare`` fails
            instead of writing; dropped records (empty, duplicates) do not count. An input
            that gives no record fails too.
    """

    keep_chars: str = field(default="", validator=v.instance_of(str))
    min_length: int = field(default=1, validator=[v.instance_of(int), v.ge(1)])
    dedupe: Literal["text", "title", "uid", "off"] = field(
        default="text", validator=v.in_(DEDUPE_MODES)
    )
    steps: tuple[Any, ...] | None = field(default=None, converter=_to_steps, validator=_check_steps)
    columns: tuple[tuple[str, str], ...] = field(
        default=(), converter=parse_columns, validator=_check_columns
    )
    shard_size: int = field(default=100_000, validator=[v.instance_of(int), v.gt(0)])
    split: tuple[float, float, float] = field(default=(98, 1, 1), converter=parse_split)
    rejects_per_reason: int = field(default=100, validator=[v.instance_of(int), v.ge(0)])
    # Run options are left out of to_dict(): any value writes the same bytes, so re-running
    # with another one refreshes the same output directory.
    workers: int = field(default=2, validator=[v.instance_of(int), v.ge(1)])
    chunk_bytes: int = field(default=8 << 20, validator=[v.instance_of(int), v.ge(1)])
    max_unreadable: float = field(
        default=0.9, validator=[v.instance_of((int, float)), v.ge(0), v.le(1)]
    )

    @keep_chars.validator
    def _no_whitespace(self, attribute: attrs.Attribute, value: str) -> None:
        if any(ch.isspace() for ch in value):
            raise ValueError("'keep_chars' must not contain whitespace (spaces are always kept)")

    def column_names(self) -> tuple[str, str, str]:
        """The input column read for each of :data:`RECORD_FIELDS`, in that order."""
        mapped = dict(self.columns)
        uid, title, content = (mapped.get(name, name) for name in RECORD_FIELDS)
        return uid, title, content

    def pipeline_steps(self) -> tuple[Any, ...]:
        """The steps a run uses: ``steps``, or the default pipeline from the shorthand fields."""
        if self.steps is not None:
            return self.steps
        return default_steps(self.keep_chars, self.min_length, self.dedupe)

    def pipeline(self) -> Pipeline:
        """A fresh :class:`~productdesc.data.pipeline.Pipeline` of :meth:`pipeline_steps`."""
        return Pipeline(self.pipeline_steps())

    def to_dict(self) -> dict[str, Any]:
        """What the output depends on, as JSON-ready data (the manifest's ``config``)."""
        data: dict[str, Any] = {
            "steps": [{"step": step_name(s), **step_options(s)} for s in self.pipeline_steps()],
            "split": dict(zip(SPLIT_NAMES, self.split, strict=True)),
            "shard_size": self.shard_size,
            "rejects_per_reason": self.rejects_per_reason,
        }
        # Only when set: the manifests of inputs read by their own field names stay as before.
        if self.columns:
            data["columns"] = dict(self.columns)
        return data
