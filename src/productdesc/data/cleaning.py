"""Cleaning steps: small frozen objects applied to one record at a time.

A *record* is a dict with ``uid`` (``str`` or ``None``), ``title`` and ``content`` (``str``).
A step is any object with ``__call__(record) -> record | Drop``: it returns the record
(the same dict, or a new one when it changes something) or a :class:`Drop` naming why the
record goes. That is the whole protocol for a third-party step::

    @attrs.frozen
    class DropBoilerplate:
        phrase: str = "This text refers to"

        def __call__(self, record):
            if self.phrase in record["content"]:
                return Drop("boilerplate")
            return record

and it is registered in :data:`cleaners` (entry-point group ``productdesc.cleaners``; see
:mod:`productdesc.plugins`).
Text rewrites subclass :class:`TextStep` and implement ``transform(text) -> text``.

A step that compares a record with the *earlier* ones (:class:`Dedupe`) cannot run on its own
in several worker processes. Such a step is a :class:`KeyedStep`: it only computes a compact,
picklable ``key(record)`` (pure, so it runs in the workers), and the runner drops a record whose
key was already seen in the same run, in input order, in the parent process. The result is the
same for any number of workers.

The default pipeline (:func:`default_steps`) is the seed notebook's cleaning, made explicit:
:class:`HtmlUnescape`, :class:`NormalizeUnicode`, :class:`KeepChars`, :class:`DropShort`,
:class:`Dedupe` (after a :class:`DropShort` that skips records empty in the input). A pipeline
is a plain tuple of step instances; add, remove or reorder freely.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Hashable
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import attrs
from attrs import field, frozen
from attrs import validators as v

from productdesc._moved import forward
from productdesc.data.text import collapse_whitespace, normalise_text, rare_chars, stable_hash64
from productdesc.errors import UserError
from productdesc.plugins import Registry, class_with

__all__ = [
    "DEDUPE_MODES",
    "CleaningStepError",
    "Dedupe",
    "Drop",
    "DropShort",
    "HtmlUnescape",
    "KeepChars",
    "KeyedStep",
    "NormalizeUnicode",
    "Record",
    "Step",
    "TextStep",
    "cleaners",
    "collapse_whitespace",
    "default_steps",
    "normalise_text",
    "stable_hash64",
]

# Pipeline, step_name and step_options moved to productdesc.data.pipeline (until 0.2).
__getattr__ = forward(__name__, "productdesc.data.pipeline")

Record = dict[str, Any]

cleaners: Registry[type] = Registry("productdesc.cleaners", "cleaning step", class_with("__call__"))
"""Cleaning steps: ``name -> step class`` (entry-point group ``productdesc.cleaners``)."""
TEXT_FIELDS = ("title", "content")
DEDUPE_MODES = ("text", "title", "uid", "off")


@frozen
class Drop:
    """The verdict of a step that removes a record.

    Attributes:
        reason: Short snake_case name counted in the manifest (``"too_short"``).
        detail: Optional human explanation for the rejects file.
    """

    reason: str = field(validator=v.min_len(1))
    detail: str = ""


@runtime_checkable
class Step(Protocol):
    """A per-record step: pure, so it can run in any worker process."""

    def __call__(self, record: Record) -> Record | Drop: ...


@runtime_checkable
class KeyedStep(Protocol):
    """A step that drops a record whose ``key`` an earlier record of the run already had.

    ``key`` must be pure and return something small and picklable (an ``int`` hash is ideal),
    or ``None`` for "never a duplicate". ``reason`` names the drop; an optional ``detail``
    attribute explains it in the rejects file.
    """

    reason: str

    def key(self, record: Record) -> Hashable | None: ...


class CleaningStepError(UserError):
    """A cleaning step raised on a record (a bug in the step, reported with the line)."""


def _fields(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


_FIELDS = field(
    default=TEXT_FIELDS,
    converter=_fields,
    validator=[v.min_len(1), v.deep_iterable(v.instance_of(str))],
)


class TextStep:
    """Base for steps that rewrite text fields: implement ``transform(text) -> text``.

    Subclasses are frozen attrs classes with a ``fields`` attribute (default title and
    content). ``__call__`` returns the record itself when nothing changed, else a copy.
    An empty text stays empty: ``transform`` is not called for it.
    """

    fields: tuple[str, ...]

    def transform(self, text: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, record: Record) -> Record | Drop:
        changed = None
        for name in self.fields:
            old = record[name]
            if not old:
                continue
            new = self.transform(old)
            if new != old:
                if changed is None:
                    changed = dict(record)
                changed[name] = new
        return record if changed is None else changed


# -- 1. HTML entities ---------------------------------------------------------------------------
# The dump's most frequent entities, decoded by a dict lookup instead of html.unescape's regex
# and per-match callback. Each decodes to non-ASCII text, which can be neither part of an
# entity name nor an "&", so decoding them first leaves every other match of the same pass
# exactly as html.unescape finds it: the result is html.unescape's (a test checks this).
_COMMON_ENTITIES = {
    name: html.unescape(f"&{name}")
    for name in (
        "#x2019; #x2018; #x201C; #x201D; #x201c; #x201d; #x2013; #x2014; #x2026; #x2022; "
        "#8217; #8216; #8220; #8221; #8211; #8212; #8230; #8226; #160; #169; #174; #151; "
        "#150; #147; #148; #146; #145; #x92; #x97; #xFC; #xE9; #233; #252; "
        "rsquo; lsquo; ldquo; rdquo; mdash; ndash; hellip; bull; nbsp; copy; reg; trade; "
        "eacute; deg; middot; frac12; times"
    ).split()
}


def _decode_common_entities(text: str) -> str:
    parts = text.split("&")
    out = [parts[0]]
    for part in parts[1:]:
        end = part.find(";", 0, 9) + 1
        decoded = _COMMON_ENTITIES.get(part[:end]) if end else None
        out.append("&" + part if decoded is None else decoded + part[end:])
    return "".join(out)


@cleaners.builtin("html_unescape")
@frozen
class HtmlUnescape(TextStep):
    """HTML entities to characters, repeated until the text stops changing.

    The dump has double-escaped text (``&amp;quot;``): one pass would leave ``&quot;``.
    Each changing pass makes the text shorter, so the loop ends.

    Attributes:
        fields: Record fields to rewrite.
    """

    fields: tuple[str, ...] = _FIELDS

    def transform(self, text: str) -> str:
        while "&" in text:
            decoded = _decode_common_entities(text)
            if "&" in decoded:
                decoded = html.unescape(decoded)
            if decoded == text:
                break
            text = decoded
        return text


# -- 2. Unicode normalisation -------------------------------------------------------------------
# Typographic punctuation with no NFKC mapping, folded to ASCII so that `keep_chars="'-"` keeps
# an apostrophe or dash whichever way the source typed it. (str.replace per character present
# is ~10x faster than str.translate on non-ASCII text.)
_PUNCTUATION = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
}


@cleaners.builtin("normalize_unicode")
@frozen
class NormalizeUnicode(TextStep):
    """Unicode normalisation (NFKC by default) and whitespace collapse.

    Attributes:
        form: ``"NFKC"`` (default: also folds compatibility forms such as full-width letters,
            ligatures and non-breaking spaces), ``"NFC"``, ``"NFKD"`` or ``"NFD"``.
        fold_punctuation: Map typographic quotes and dashes to ASCII ``'`` ``"`` ``-``.
        collapse_whitespace: Replace runs of whitespace by one space and strip the ends.
        fields: Record fields to rewrite.
    """

    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = field(
        default="NFKC", validator=v.in_(("NFC", "NFKC", "NFD", "NFKD"))
    )
    fold_punctuation: bool = field(default=True, validator=v.instance_of(bool))
    collapse_whitespace: bool = field(default=True, validator=v.instance_of(bool))
    fields: tuple[str, ...] = _FIELDS

    def transform(self, text: str) -> str:
        if not text.isascii():  # ASCII is already in every normal form: skip the work
            text = unicodedata.normalize(self.form, text)
            if self.fold_punctuation:
                for typographic in _PUNCTUATION.keys() & rare_chars(text):
                    text = text.replace(typographic, _PUNCTUATION[typographic])
        if self.collapse_whitespace:
            text = collapse_whitespace(text)
        return text


# -- 3. unwanted characters ---------------------------------------------------------------------
def _check_extra(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{attribute.name!r} must not contain whitespace (spaces are kept)")


@cleaners.builtin("keep_chars")
@frozen
class KeepChars(TextStep):
    """Remove every character but letters (accented too), digits, spaces, ``,`` and ``.``.

    The seed's ``re.sub`` rule with Unicode letters: a character stays if it is alphanumeric
    or whitespace (``str.isalnum``/``str.isspace``, as ``re``'s ``\\w`` and ``\\s`` minus
    ``_``), ``,``, ``.`` or in ``extra``. Removing a character can leave two spaces
    (``"a - b"`` -> ``"a  b"``); they are collapsed again.

    Attributes:
        extra: More characters to keep, e.g. ``"-'&%/"``.
        fields: Record fields to rewrite.
    """

    extra: str = field(default="", validator=[v.instance_of(str), _check_extra])
    fields: tuple[str, ...] = _FIELDS
    # ASCII characters to delete, for bytes.translate: ~20x faster than re.sub on the text.
    _ascii_delete: bytes = field(init=False, repr=False, eq=False)

    @_ascii_delete.default
    def _ascii_table(self) -> bytes:
        return bytes(c for c in range(128) if not self.keeps(chr(c)))

    def keeps(self, char: str) -> bool:
        """Whether ``char`` survives this step."""
        return char.isalnum() or char.isspace() or char in ",." or char in self.extra

    def transform(self, text: str) -> str:
        if text.isascii():
            kept = text.encode("ascii").translate(None, self._ascii_delete).decode("ascii")
        else:
            data = text.encode("utf-8", "surrogatepass")
            kept = data.translate(None, self._ascii_delete).decode("utf-8", "surrogatepass")
            for char in rare_chars(text):  # the few distinct ones, each judged once
                if not self.keeps(char):
                    kept = kept.replace(char, "")
        if len(kept) == len(text):
            return text  # the same object, which collapse_whitespace may know already
        return collapse_whitespace(kept)


# -- 4. empty and short records -----------------------------------------------------------------
@cleaners.builtin("drop_short")
@frozen
class DropShort:
    """Drop a record whose title or content is empty, or shorter than ``min_length``.

    Reasons: ``empty_<field>`` (``empty_title``, ``empty_content``) for an empty field,
    ``too_short`` for a non-empty one under the minimum. Fields are checked in order.

    Attributes:
        min_length: Minimum length in characters of each field, after cleaning.
        fields: Record fields to check.
    """

    min_length: int = field(default=1, validator=[v.instance_of(int), v.ge(1)])
    fields: tuple[str, ...] = _FIELDS
    # One Drop per field, shared: nearly half the dump's records have no description.
    _empty: dict[str, Drop] = field(init=False, repr=False, eq=False, hash=False)

    @_empty.default
    def _empty_drops(self) -> dict[str, Drop]:
        return {name: Drop(f"empty_{name}") for name in self.fields}

    def __call__(self, record: Record) -> Record | Drop:
        for name in self.fields:
            n = len(record[name])
            if n == 0:
                return self._empty[name]
            if n < self.min_length:
                return Drop("too_short", f"{name} has {n} < {self.min_length} characters")
        return record


# -- 5. duplicates ------------------------------------------------------------------------------
@cleaners.builtin("dedupe")
@frozen
class Dedupe:
    """Drop records equal to an earlier one (reason ``duplicate``); the first is kept.

    Records are compared by a 64-bit hash of their normalised text (case-folded, whitespace
    collapsed), whatever the text length. With a million distinct records, the chance that
    two different ones share a hash is about 3e-8. The run remembers one hash per distinct
    record, about 90 bytes of Python memory each (110 MB for the dump's 1.2 million): the
    only memory of a prepare that grows with the input (``dedupe="off"`` keeps it flat).

    Attributes:
        by: ``"text"``: same normalised (title, content); ``"title"``: same normalised title;
            ``"uid"``: same ``uid`` (records without a uid are never duplicates).
    """

    reason: ClassVar[str] = "duplicate"
    _DETAILS: ClassVar[dict[str, str]] = {
        "text": "same normalised title and content as an earlier record",
        "title": "same normalised title as an earlier record",
        "uid": "same uid as an earlier record",
    }

    by: Literal["text", "title", "uid"] = field(
        default="text", validator=v.in_(("text", "title", "uid"))
    )
    # Memory for standalone calls (`step(record)`); the pipeline runner keeps its own per run.
    _seen: set[Hashable] = field(factory=set, init=False, repr=False, eq=False, hash=False)

    @property
    def detail(self) -> str:
        """Explanation written to the rejects file."""
        return self._DETAILS[self.by]

    def key(self, record: Record) -> int | None:
        if self.by == "uid":
            uid = record.get("uid")
            return None if uid is None else stable_hash64(uid)
        if self.by == "title":
            return stable_hash64(normalise_text(record["title"]))
        # \x1f (unit separator) cannot survive cleaning, so ("a b", "c") != ("a", "b c").
        return stable_hash64(
            normalise_text(record["title"]) + "\x1f" + normalise_text(record["content"])
        )

    def __call__(self, record: Record) -> Record | Drop:
        key = self.key(record)
        if key is not None:
            if key in self._seen:
                return Drop(self.reason, self.detail)
            self._seen.add(key)
        return record


# -- pipelines ----------------------------------------------------------------------------------
def default_steps(
    keep_chars: str = "", min_length: int = 1, dedupe: str = "text"
) -> tuple[Any, ...]:
    """The default pipeline: unescape, normalise, keep characters, drop short, dedupe.

    It opens with a :class:`DropShort` that drops records whose title or content is empty
    in the input: they would be dropped after cleaning anyway (cleaning never fills a text),
    and nearly half the dump's records have no description, so skipping their cleaning
    saves a tenth of the run. (A record with an empty description and a title that cleaning
    empties is counted ``empty_content``, not ``empty_title``.)

    Args:
        keep_chars: Extra characters :class:`KeepChars` keeps.
        min_length: The minimum length of the :class:`DropShort` after cleaning.
        dedupe: :class:`Dedupe`'s ``by``, or ``"off"`` for no dedupe step.
    """
    steps: list[Any] = [
        DropShort(),
        HtmlUnescape(),
        NormalizeUnicode(),
        KeepChars(extra=keep_chars),
        DropShort(min_length=min_length),
    ]
    if dedupe != "off":
        steps.append(Dedupe(by=dedupe))  # type: ignore[arg-type]
    return tuple(steps)
