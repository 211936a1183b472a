"""Cleaning steps one by one, the pipeline's semantics, PrepareConfig validation."""

from __future__ import annotations

import html
import random
import re

import attrs
import pytest

from productdesc.data import (
    Dedupe,
    Drop,
    DropShort,
    HtmlUnescape,
    KeepChars,
    NormalizeUnicode,
    Pipeline,
    PrepareConfig,
    TextStep,
    default_steps,
)
from productdesc.data.cleaning import (
    CleaningStepError,
    cleaners,
    collapse_whitespace,
    normalise_text,
)


def rec(title: str, content: str = "some content", uid: str | None = "u1") -> dict:
    return {"uid": uid, "title": title, "content": content}


# -- 1. HtmlUnescape --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("&amp;quot;Hi&amp;quot;", '"Hi"'),  # double-escaped: two passes
        ("&amp;amp;lt;b&amp;amp;gt;", "<b>"),  # triple-escaped
        ("Gibran&#x2019;s &#8220;Prophet&#8221; &mdash; &copy;1923", "Gibran’s “Prophet” — ©1923"),
        ("AT&T and 5 & 6", "AT&T and 5 & 6"),  # a bare & stays
        ("no entities", "no entities"),
    ],
)
def test_html_unescape_repeats_until_stable(raw: str, clean: str) -> None:
    assert HtmlUnescape().transform(raw) == clean


def test_html_unescape_fast_path_equals_repeated_html_unescape() -> None:
    """Common entities skip html.unescape; the result must not change, however they mix."""

    def reference(text: str) -> str:
        while html.unescape(text) != text:
            text = html.unescape(text)
        return text

    fragments = (
        " ",
        *(
            "& &amp; amp; &#x2019; &#X2019; &#x2019 &rsquo; &rsquo &not &notin; &no t ; # #x 2019 "
            "&#151; &#8217; &#82 17; &quot; &amp;quot; &nbsp; x é ’ &copy &copy; &#38; &#x26; &lt; "
            "&# &#x a 1 &eacute; &hellip; &trade; &frac12; &amp;#x2019; &amp;amp;"
        ).split(),
    )
    rng = random.Random(11)
    unescape = HtmlUnescape()
    for _ in range(20_000):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 10)))
        assert unescape.transform(text) == reference(text), repr(text)


def test_text_step_returns_same_record_when_unchanged_and_copy_otherwise() -> None:
    record = rec("plain", "text")
    assert HtmlUnescape()(record) is record
    changed = HtmlUnescape()(rec("a &amp; b"))
    assert changed == rec("a & b")
    only_title = HtmlUnescape(fields="title")(rec("&amp;", "&amp;"))
    assert only_title == rec("&", "&amp;")


# -- 2. NormalizeUnicode ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  many   spaces\there\n", "many spaces here"),
        ("ﬁne ｆｕｌｌｗｉｄｔｈ", "fine fullwidth"),  # NFKC: ligature, full-width letters
        ("non\xa0breaking", "non breaking"),
        ("caf\u0065\u0301", "café"),  # e + combining acute -> é (composed)
        ("it\u2019s \u201cquoted\u201d \u2014 dash", 'it\'s "quoted" - dash'),
        ("wait\u2026", "wait..."),
    ],
)
def test_normalize_unicode(raw: str, clean: str) -> None:
    assert NormalizeUnicode().transform(raw) == clean


def test_normalize_unicode_options() -> None:
    assert NormalizeUnicode(fold_punctuation=False).transform("it\u2019s") == "it\u2019s"
    assert NormalizeUnicode(collapse_whitespace=False).transform(" a  b ") == " a  b "
    assert NormalizeUnicode(form="NFD").transform("é") == "e\u0301"
    with pytest.raises(ValueError):
        NormalizeUnicode(form="NFX")  # type: ignore[arg-type]


def test_collapse_whitespace_matches_split_join() -> None:
    rng = random.Random(7)
    alphabet = "ab  \t\n\r\x0b\x1f\xa0\u2028\u3000é’"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        assert collapse_whitespace(text) == " ".join(text.split()), repr(text)


# -- 3. KeepChars -----------------------------------------------------------------------------
def test_keep_chars_default_keeps_letters_digits_spaces_commas_periods() -> None:
    keep = KeepChars()
    assert keep.transform("Crème brûlée, 2 pcs. (50% off!) - naïve_test") == (
        "Crème brûlée, 2 pcs. 50 off naivetest".replace("naive", "naïve")
    )
    assert keep.transform("Straße Ærøskøbing Ñandú Ελληνικά 日本語") == (
        "Straße Ærøskøbing Ñandú Ελληνικά 日本語"
    )
    assert keep.transform("★☆♥ 😀") == ""
    assert keep.transform("a - b") == "a b"  # the removal's double space is collapsed


def test_keep_chars_extra_set() -> None:
    keep = KeepChars(extra="-'&%/")
    assert keep.transform("Rock'n'roll 50% AT&T 1/2 - x_y #1") == "Rock'n'roll 50% AT&T 1/2 - xy 1"
    assert KeepChars(extra="_").transform("a_b!") == "a_b"
    with pytest.raises(ValueError, match="whitespace"):
        KeepChars(extra=" ")


@pytest.mark.parametrize("extra", ["", "-'&%/", "_", "!?"])
def test_keep_chars_equals_the_regex_rule(extra: str) -> None:
    """The fast path (bytes.translate + per-character check) is the seed's re.sub rule."""
    rule = re.compile(rf"[^\w\s,.{re.escape(extra)}]" + ("" if "_" in extra else "|_"))
    rng = random.Random(extra)
    alphabet = [chr(c) for c in range(0x250)] + list("’“”—…€™©®°½²😀\u0301\u200b\xa0\u3000日本")
    keep = KeepChars(extra=extra)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        expected = rule.sub("", text)
        if len(expected) != len(text):
            expected = collapse_whitespace(expected)
        assert keep.transform(text) == expected, repr(text)


# -- 4. DropShort -----------------------------------------------------------------------------
def test_drop_short_reasons() -> None:
    drop = DropShort()
    assert drop(rec("t", "c")) == rec("t", "c")
    assert drop(rec("", "c")) == Drop("empty_title")
    assert drop(rec("t", "")) == Drop("empty_content")
    assert drop(rec("", "")) == Drop("empty_title")  # fields checked in order
    longer = DropShort(min_length=3)
    assert longer(rec("abc", "ab")).reason == "too_short"
    assert "content has 2 < 3" in longer(rec("abc", "ab")).detail
    assert longer(rec("ab", "")).reason == "too_short"
    with pytest.raises(ValueError):
        DropShort(min_length=0)


# -- 5. Dedupe --------------------------------------------------------------------------------
def test_dedupe_by_text_is_case_and_space_insensitive() -> None:
    dedupe = Dedupe()
    assert dedupe(rec("Blue Mug", "Holds tea.")) == rec("Blue Mug", "Holds tea.")
    assert dedupe(rec("BLUE  mug", "holds TEA.", uid="u2")) == Drop(
        "duplicate", "same normalised title and content as an earlier record"
    )
    assert not isinstance(dedupe(rec("Blue Mug", "Holds coffee.")), Drop)
    # the separator keeps ("a b", "c") apart from ("a", "b c")
    assert Dedupe().key(rec("a b", "c")) != Dedupe().key(rec("a", "b c"))


def test_dedupe_modes() -> None:
    by_title = Dedupe(by="title")
    assert by_title.key(rec("Mug", "x")) == by_title.key(rec(" mug ", "y"))
    by_uid = Dedupe(by="uid")
    assert by_uid.key(rec("a", uid="B1")) == by_uid.key(rec("b", uid="B1"))
    assert by_uid.key(rec("a", uid=None)) is None  # no uid: never a duplicate
    assert not isinstance(by_uid(rec("a", uid=None)), Drop)
    assert not isinstance(by_uid(rec("a", uid=None)), Drop)
    with pytest.raises(ValueError):
        Dedupe(by="content")  # type: ignore[arg-type]


def test_normalise_text() -> None:
    assert normalise_text("  Straße\tMUG ") == "strasse mug"


# -- pipeline ---------------------------------------------------------------------------------
def test_default_pipeline_order_and_registry_names() -> None:
    steps = default_steps(min_length=3)
    assert [type(s) for s in steps] == [
        DropShort,  # records empty in the input: no need to clean them
        HtmlUnescape,
        NormalizeUnicode,
        KeepChars,
        DropShort,
        Dedupe,
    ]
    assert (steps[0].min_length, steps[4].min_length) == (1, 3)
    assert default_steps(dedupe="off")[-1].__class__ is DropShort
    for name, cls in [
        ("html_unescape", HtmlUnescape),
        ("normalize_unicode", NormalizeUnicode),
        ("keep_chars", KeepChars),
        ("drop_short", DropShort),
        ("dedupe", Dedupe),
    ]:
        assert cleaners.get(name) is cls


def test_pipeline_apply_end_to_end() -> None:
    records = [
        rec("Caf&eacute; &amp;quot;Mug&amp;quot;", "A  mug&nbsp;for coffee&#x2019;s fans"),
        rec("CAFÉ  mug", "a mug for coffees fans"),  # same once normalised
        rec("★", "content"),
        rec("Tea", "&nbsp;"),
    ]
    out = list(Pipeline(default_steps()).apply(records))
    assert out[0] == rec("Café Mug", "A mug for coffees fans")
    assert out[1].reason == "duplicate"
    assert out[2] == Drop("empty_title")
    assert out[3] == Drop("empty_content")
    # memory is per call: applying again gives the same results
    assert list(Pipeline(default_steps()).apply(records)) == out


def test_keyed_step_before_a_per_record_step_keeps_sequential_semantics() -> None:
    """A record dropped after a keyed step still claims its key, as in a plain loop."""
    steps = [Dedupe(by="title"), DropShort(min_length=5, fields="content")]
    out = list(Pipeline(steps).apply([rec("Mug", "abc"), rec("Mug", "long enough")]))
    assert out == [Drop("too_short", "content has 3 < 5 characters"), out[1]]
    assert out[1].reason == "duplicate"


def test_fused_text_steps_equal_sequential_calls() -> None:
    steps = [HtmlUnescape(), NormalizeUnicode(), KeepChars(extra="'")]
    record = rec("Tom &amp;amp; Jerry&#x2019;s  ﬁsh!", "“Quoted” — text…")
    sequential = record
    for step in steps:
        sequential = step(sequential)
    keys, fused = Pipeline(steps).process(record)
    assert (keys, fused) == ((), sequential)


def test_plugin_style_step_and_errors_name_the_step() -> None:
    @attrs.frozen
    class Shout(TextStep):
        fields: tuple[str, ...] = ("title",)

        def transform(self, text: str) -> str:
            if text == "boom":
                raise ValueError("cannot shout boom")
            return text.upper()

    @attrs.frozen
    class NoBooks:
        def __call__(self, record: dict) -> dict | Drop:
            return Drop("book") if "book" in record["title"].lower() else record

    pipeline = Pipeline([HtmlUnescape(), Shout(), NoBooks()])
    assert pipeline.process(rec("a &amp; b"))[1]["title"] == "A & B"
    assert pipeline.process(rec("My Book"))[1] == Drop("book")
    with pytest.raises(CleaningStepError, match=r"Shout raised ValueError: cannot shout boom"):
        pipeline.process(rec("boom"))
    with pytest.raises(CleaningStepError, match="returned NoneType"):
        Pipeline([lambda r: None]).process(rec("x"))


# -- PrepareConfig ----------------------------------------------------------------------------
def test_prepare_config_defaults_and_validation() -> None:
    config = PrepareConfig()
    assert (config.shard_size, config.split, config.workers) == (100_000, (0.98, 0.01, 0.01), 2)
    assert PrepareConfig(split="90/5/5").split == (0.9, 0.05, 0.05)
    assert PrepareConfig(split="0.98/0.01/0.01").to_dict() == config.to_dict()
    assert PrepareConfig(split=[1, 0, 0]).split == (1.0, 0.0, 0.0)
    for bad in ["98/1", "a/b/c", "0/50/50", "-1/1/1"]:
        with pytest.raises(ValueError):
            PrepareConfig(split=bad)
    with pytest.raises(ValueError):
        PrepareConfig(shard_size=0)
    with pytest.raises(ValueError):
        PrepareConfig(dedupe="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whitespace"):
        PrepareConfig(keep_chars="- ")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.shard_size = 5  # type: ignore[misc]


def test_prepare_config_steps_replace_the_default_pipeline() -> None:
    config = PrepareConfig(steps=("html_unescape", KeepChars(extra="-")))
    assert config.pipeline_steps() == (HtmlUnescape(), KeepChars(extra="-"))
    assert [s["step"] for s in config.to_dict()["steps"]] == ["html_unescape", "keep_chars"]
    assert config.to_dict()["steps"][1]["extra"] == "-"
    with pytest.raises(ValueError, match="keep_chars"):
        PrepareConfig(steps=(HtmlUnescape(),), keep_chars="-")
    with pytest.raises(LookupError, match="unknown cleaning step 'nope'"):
        PrepareConfig(steps=("nope",))
    # the shorthand fields build the default pipeline
    shorthand = PrepareConfig(keep_chars="-", min_length=3, dedupe="off").pipeline_steps()
    assert shorthand == default_steps("-", 3, "off")


def test_data_package_imports_no_ml_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, productdesc, productdesc.data;"
        "from productdesc import AmazonTitlesDataset, PrepareConfig;"
        "heavy = {'torch', 'transformers', 'datasets', 'unsloth', 'pandas'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
