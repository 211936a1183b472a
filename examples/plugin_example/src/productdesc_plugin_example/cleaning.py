"""A cleaning step that strips the page boilerplate Amazon wraps around descriptions."""

from __future__ import annotations

import re
from typing import Any

from attrs import field, frozen
from attrs import validators as v

from productdesc.data.cleaning import TextStep

# Headings that open a description copied from a product page.
LEADING = ("Amazon.com Review", "Product Description")
# Tails that close one: a "Read more" link, and the edition note of book pages, which loses
# its spaces in the dump ("--This text refers to theHardcoveredition.").
TRAILING = (
    r"(?:\.\.\.|\u2026)?\s*Read more\W*",
    r"-*\s*This text refers to\b.{0,80}?edition\b[^.]{0,30}\.?",
)


def _tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else tuple(value)


def _compiles(instance: Any, attribute: Any, value: tuple[str, ...]) -> None:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"{attribute.name!r}: {pattern!r} is not a regular expression: {exc}"
            ) from None


@frozen
class StripBoilerplate(TextStep):
    """Remove boilerplate headings from the start of a text and link text from its end.

    Put it before ``drop_short`` in the pipeline, so a description that was nothing but
    boilerplate is dropped as empty::

        PrepareConfig(steps=("html_unescape", "normalize_unicode", "strip_boilerplate",
                             "keep_chars", "drop_short", "dedupe"))

    >>> step = StripBoilerplate()
    >>> step.transform("Amazon.com Review A fine book about mice. Read more")
    'A fine book about mice.'
    >>> step.transform("A history of the Alps.--This text refers to thePaperbackedition.")
    'A history of the Alps.'

    Attributes:
        leading: Phrases removed, case-insensitively, from the start (repeatedly, with a
            following ``:`` or ``-``).
        trailing: Regular expressions removed from the end (repeatedly).
        fields: Record fields to rewrite (the description only by default: titles carry no
            boilerplate).
    """

    leading: tuple[str, ...] = field(
        default=LEADING, converter=_tuple, validator=v.deep_iterable(v.min_len(1))
    )
    trailing: tuple[str, ...] = field(
        default=TRAILING, converter=_tuple, validator=[v.deep_iterable(v.min_len(1)), _compiles]
    )
    fields: tuple[str, ...] = field(default=("content",), converter=_tuple, validator=v.min_len(1))
    _head: re.Pattern[str] = field(init=False, repr=False, eq=False)
    _tail: re.Pattern[str] = field(init=False, repr=False, eq=False)

    @_head.default
    def _compile_head(self) -> re.Pattern[str]:
        phrases = "|".join(re.escape(p) for p in self.leading)
        return re.compile(rf"^(?:\s*(?:{phrases})\s*[:\-]?)+\s*", re.IGNORECASE)

    @_tail.default
    def _compile_tail(self) -> re.Pattern[str]:
        return re.compile(rf"(?:\s*(?:{'|'.join(self.trailing)}))+\s*$", re.IGNORECASE)

    def transform(self, text: str) -> str:
        return self._tail.sub("", self._head.sub("", text, count=1), count=1)
