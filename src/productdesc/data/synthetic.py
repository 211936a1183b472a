"""A deterministic synthetic ``trn.json``: the real file's shape, without its text.

For benchmarks (prepare speed, training speed) where the 2,248,619-line dump is not at hand::

    from productdesc.data.synthetic import write_trn
    write_trn("trn.json")                      # full size, about 1.4 GB, 30-60 s

Matched to the real sample (``../shared/data``) and to what is known of the full file:

* content: 45% empty; otherwise log-normal length, median 455 characters, 90th percentile
  about 1,381, a tail to 30,000;
* title: log-normal length, median 36, 90th percentile about 83, at most 183;
* 22% of records carry HTML entities (numeric, named, and double-escaped ``&amp;quot;``),
  spread like the sample's (``&#x2019;`` most often; 7% of descriptions change under NFKC);
* 12% of descriptions have double spaces;
* 2% are duplicates of an earlier record with a description (a quarter of them differ only
  in case or spacing);
* every line has ``uid``, ``title``, ``content``, ``target_ind`` (label ids) and
  ``target_rel``.

Same seed, same bytes, on every machine (only :class:`random.Random` is used).
"""

from __future__ import annotations

import gzip
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from productdesc._io import atomic_write

__all__ = ["FULL_SIZE", "synthetic_records", "write_trn"]

FULL_SIZE = 2_248_619  # lines in the real trn.json

_EMPTY_CONTENT = 0.45
_WITH_ENTITIES = 0.22
_DUPLICATES = 0.02
_CONTENT_MEDIAN, _CONTENT_SIGMA, _CONTENT_MAX = 455, 0.8665, 30_000  # p90 = 455 * e^(1.2816 s)
_TITLE_MEDIAN, _TITLE_SIGMA, _TITLE_MAX = 39, 0.6, 183  # words are whole: aim above 36
_LABELS = 1_305_265  # label space of AmazonTitles-1.3MM

_BRANDS = (
    "Acme Northwind Contoso Fabrikam Lumen Orchard Harbor Summit Willow Granite Maple Vista "
    "Beacon Cedar Aurora Pioneer Meridian Sterling Juniper Cobalt Evergreen Atlas Nimbus"
).split()
_ADJECTIVES = (
    "classic deluxe portable compact heavy-duty lightweight vintage modern organic wireless "
    "stainless waterproof adjustable handmade durable soft premium rechargeable foldable "
    "illustrated unabridged collectible ergonomic non-stick insulated reversible"
).split()
_NOUNS = (
    "kettle blanket backpack lamp notebook guitar strings tea set puzzle headphones skillet "
    "sneakers jacket watch cookbook novel atlas candle mug planter drone keyboard tent "
    "charger stroller vase scarf wallet telescope blender"
).split()
_DETAILS = (
    "Black|Navy Blue|Size 10|2-Pack|12 inch|Large|Set of 4|Paperback|Hardcover|Audio CD|"
    "VHS|DVD|Kindle Edition|Second Edition|with Case|for Kids|for Men|for Women|1 Gallon|"
    "Red and White|Queen Size|Volume 2|Deluxe Edition|Stainless Steel|100% Cotton"
).split("|")
_WORDS = (
    "the a this our your it its with for and of in on to from by is are was made designed "
    "perfect ideal everyday use home office travel kitchen garden outdoor gift family "
    "children friends quality material cotton steel wood leather glass ceramic plastic "
    "battery hours warranty easy clean care wash hand dry store keep comfortable fit "
    "size colour finish design style pages story author edition chapter readers history "
    "music album songs recorded live performance classic award winning bestselling "
    "includes features offers provides delivers holds supports protects measures weighs "
    "inches pounds ounces each pack set piece pair two three four five ten twelve "
    "new improved original authentic genuine natural simple elegant bright dark warm cool"
).split()
_PROPER = "Paris Chicago Tokyo Lisbon Kyoto Oslo Berlin Cairo Lima Dublin".split()
_ACCENTED = "café crème naïve résumé piñata façade jalapeño Zoë Björk déjà".split()

# Entities as they occur in the real sample, most frequent first, with relative weights.
_APOSTROPHES = (("&#x2019;", 197), ("&rsquo;", 16), ("&#8217;", 13), ("&#x92;", 6))
_OPEN_QUOTES = (("&#x201C;", 22), ("&#8220;", 28), ("&ldquo;", 4), ("&quot;", 14), ("&#147;", 6))
_CLOSE_QUOTES = (("&#x201D;", 21), ("&#8221;", 32), ("&rdquo;", 4), ("&quot;", 14))
_DASHES = (("&mdash;", 23), ("&#x2014;", 14), ("&#151;", 15), ("&#x2013;", 17), ("&ndash;", 2))
_OTHER = (
    ("&#x2026;", 39),
    ("&#160;", 21),
    ("&copy;", 17),
    ("&#x2022;", 7),
    ("&nbsp;", 6),
    ("&#xFC;", 3),
    ("&amp;quot;", 8),  # double-escaped, as in the dump
    ("&amp;amp;", 4),
)


def _pick(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([t for t, _ in table], [w for _, w in table])[0]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 22))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(_NOUNS) + "'s")
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), '"' + rng.choice(_ADJECTIVES) + '"')
    if rng.random() < 0.15:
        words.insert(rng.randrange(len(words)), "-")
    if rng.random() < 0.1:
        words.insert(rng.randrange(len(words)), rng.choice(_PROPER))
    if rng.random() < 0.1:
        words.insert(rng.randrange(len(words)), f"{rng.randint(1, 99)}%")
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".....!?")


def _corpus(rng: random.Random, size: int) -> str:
    parts: list[str] = []
    n = 0
    while n < size:
        sentence = _sentence(rng)
        parts.append(sentence)
        n += len(sentence) + 1
    return " ".join(parts)


def _lognormal_length(rng: random.Random, median: float, sigma: float, top: int) -> int:
    return max(1, min(top, round(median * math.exp(rng.gauss(0.0, sigma)))))


def _title(rng: random.Random) -> str:
    target = _lognormal_length(rng, _TITLE_MEDIAN, _TITLE_SIGMA, _TITLE_MAX)
    kind = rng.random()
    if kind < 0.35:  # a book or a record
        words = ["The", rng.choice(_ADJECTIVES).title(), rng.choice(_NOUNS).title()]
    else:
        words = [rng.choice(_BRANDS), rng.choice(_ADJECTIVES).title(), rng.choice(_NOUNS).title()]
    if rng.random() < 0.01:
        words.insert(1, rng.choice(_ACCENTED).title())
    title = " ".join(words)
    while True:
        extra = rng.choice(_DETAILS) if rng.random() < 0.5 else rng.choice(_WORDS).title()
        longer = f"{title} {extra}" if rng.random() < 0.7 else f"{title} ({extra})"
        if len(longer) > target:
            return title
        title = longer


def _content(rng: random.Random, corpus: str) -> str:
    length = _lognormal_length(rng, _CONTENT_MEDIAN, _CONTENT_SIGMA, _CONTENT_MAX)
    start = rng.randrange(len(corpus) - length - 1)
    start = corpus.find(" ", start) + 1  # begin and end on word boundaries
    end = corpus.rfind(" ", start, start + length)
    text = corpus[start : end if end > start else start + length]
    if rng.random() < 0.01:
        text = text.replace(" the ", f" {rng.choice(_ACCENTED)} ", 1)
    if rng.random() < 0.12:  # as in the sample: two spaces after a full stop
        text = text.replace(". ", ".  ", 3)
    return text


def _with_entities(rng: random.Random, text: str) -> str:
    # What the dump does to typographic text: ' " - and friends become entities.
    text = text.replace("&", "&amp;")
    apostrophe, dash = _pick(rng, _APOSTROPHES), _pick(rng, _DASHES)
    text = text.replace("'", apostrophe).replace(" - ", f" {dash} ")
    if '"' in text:
        opening, closing = _pick(rng, _OPEN_QUOTES), _pick(rng, _CLOSE_QUOTES)
        quoted = text.split('"')
        text = "".join(
            part + (opening if i % 2 == 0 else closing) for i, part in enumerate(quoted[:-1])
        )
        text += quoted[-1]
    # Half get one of the others (as in the sample, where 7% of descriptions change under
    # NFKC: ellipsis, nbsp); every one gets at least one entity.
    if rng.random() < 0.5:
        text = _insert_word(rng, text, _pick(rng, _OTHER))
    if "&" not in text:
        text = _insert_word(rng, text, _pick(rng, _APOSTROPHES) + "s")
    return text


def _insert_word(rng: random.Random, text: str, word: str) -> str:
    position = text.find(" ", rng.randrange(max(1, len(text))))
    if position < 0:
        return f"{text} {word}"
    return f"{text[:position]} {word}{text[position:]}"


def _variant(rng: random.Random, text: str) -> str:
    """Same text once normalised: other case or spacing."""
    if rng.random() < 0.5:
        return text.upper()
    return text.replace(" ", "  ", 3)


def synthetic_records(n: int = FULL_SIZE, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``n`` synthetic ``trn.json`` records (dicts with the five fields), deterministic."""
    rng = random.Random(seed)
    corpus = _corpus(random.Random(seed + 1), 1 << 21)  # 2 MB of sentences to slice from
    recent: list[tuple[str, str]] = []  # earlier records with a description, to duplicate
    for index in range(n):
        if recent and rng.random() < _DUPLICATES:
            title, content = rng.choice(recent)
            if rng.random() < 0.25:
                title = _variant(rng, title)
        else:
            title = _title(rng)
            content = "" if rng.random() < _EMPTY_CONTENT else _content(rng, corpus)
            if rng.random() < _WITH_ENTITIES:
                if content:
                    content = _with_entities(rng, content)
                if rng.random() < 0.2 or not content:
                    title = _with_entities(rng, title)
            if content:
                if len(recent) < 10_000:
                    recent.append((title, content))
                else:
                    recent[rng.randrange(10_000)] = (title, content)
        labels = _lognormal_length(rng, 8, 0.8, 100)
        yield {
            "uid": f"B{index:09d}",
            "title": title,
            "content": content,
            "target_ind": sorted(rng.sample(range(_LABELS), labels)),
            "target_rel": [1.0] * labels,
        }


def write_trn(
    path: str | os.PathLike[str], n: int = FULL_SIZE, seed: int = 0, progress: bool = False
) -> Path:
    """Write :func:`synthetic_records` as JSON Lines (gzip when ``path`` ends in ``.gz``).

    Returns:
        The path written.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with atomic_write(path, "wb") as raw:
        out: IO[bytes] = (
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else raw
        )
        batch: list[bytes] = []
        for record in tqdm(synthetic_records(n, seed), total=n, disable=not progress, unit="rec"):
            batch.append(dumps(record, option=newline))
            if len(batch) == 10_000:
                out.write(b"".join(batch))
                batch.clear()
        out.write(b"".join(batch))
        if out is not raw:
            out.close()
    return path
