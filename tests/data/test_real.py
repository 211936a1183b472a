"""The 600 real trn.json records (../shared/data) through the default cleaning."""

from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path

import orjson

from productdesc import AmazonTitlesDataset, PrepareConfig

ENTITY = re.compile(r"&(#\d+|#x[0-9a-f]+|[a-z]+\d*);", re.IGNORECASE)


def reference_clean(text: str) -> str:
    """The documented rules, written the slow, obvious way (regexes, split/join)."""
    while html.unescape(text) != text:
        text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text)
    text = re.sub("[\u2018\u2019\u201a\u201b\u2032]", "'", text)
    text = re.sub("[\u201c\u201d\u201e\u201f\u2033]", '"', text)
    text = re.sub("[\u2010-\u2015\u2212]", "-", text)
    text = " ".join(text.split())
    return " ".join(re.sub(r"[^\w\s,.]|_", "", text).split())


def test_real_records_all_counted_entities_decoded_nothing_lost(
    real_sample: Path, tmp_path: Path
) -> None:
    raw = [orjson.loads(line) for line in real_sample.read_bytes().splitlines()]
    manifest = AmazonTitlesDataset(real_sample, PrepareConfig(workers=2)).prepare(
        tmp_path / "out", progress=False
    )
    assert manifest.lines == len(raw) == 600
    assert manifest.kept + sum(manifest.dropped.values()) == 600
    # every real record has a title and a description, and none repeats: all stay
    assert manifest.kept == 600, manifest.dropped

    prepared = AmazonTitlesDataset.from_prepared(tmp_path / "out")
    cleaned = [r for split in ("train", "validation", "test") for r in prepared.iter_split(split)]
    by_key = {(r["title"], r["content"]) for r in cleaned}
    expected = {(reference_clean(r["title"]), reference_clean(r["content"])) for r in raw}
    assert by_key == expected

    with_entities = sum(bool(ENTITY.search(r["title"] + r["content"])) for r in raw)
    assert with_entities > 100  # the sample is entity-rich: the check below means something
    assert not any(ENTITY.search(r["title"] + r["content"]) for r in cleaned)
    assert not any("&" in r["title"] + r["content"] for r in cleaned)


def test_real_accented_letters_are_kept(real_sample: Path) -> None:
    cleaned = list(AmazonTitlesDataset(real_sample, PrepareConfig(workers=1)))
    letters = [c for r in cleaned for c in r["title"] + r["content"] if not c.isascii()]
    assert letters, "the sample's entities include accented letters (&#xFC; ...)"
    assert all(c.isalpha() for c in letters)
    raw_letters = [
        c
        for line in real_sample.read_bytes().splitlines()
        for field in ("title", "content")
        for c in unicodedata.normalize(
            "NFKC", html.unescape(html.unescape(orjson.loads(line)[field]))
        )
        if not c.isascii() and c.isalpha()
    ]
    assert sorted(letters) == sorted(raw_letters)
