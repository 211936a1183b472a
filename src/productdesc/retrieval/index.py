"""Lexical search over known products' titles: the retrieval baseline and, later, context.

A :class:`RetrievalIndex` holds ``(uid, title, content)`` records and finds the titles most like a
query with BM25 (``bm25s``). Its answer to "describe this product" is the description of the
nearest known title, a strong baseline here because the catalogue holds families of
near-identical products.

Example::

    index = RetrievalIndex.from_prepared("data/prepared")  # the train split
    index.save("data/prepared/retrieval")
    index = RetrievalIndex.load("data/prepared/retrieval")  # mmap: fast
    index.search("Girls Ballet Tutu Pink", k=3, exclude_title="Girls Ballet Tutu Neon Pink")

Titles are tokenized by an :class:`Analyzer`: stemmed words (the default) or character n-grams.
On the 600 real records the two retrieve equally well (ROUGE-L of the nearest title's
description against the true one): leave-one-out over all 600, 0.203 with stemmed words and
0.200 with character 3-5-grams; on the library's 80/0/20 split (119 test records), 0.177 and
0.186, a paired difference of -0.009 (95% interval -0.030 to +0.007). Words win on cost: over
300,000 titles, character n-grams took 6.7 times the build time (134 s against 20 s), 6 times
the memory (4.4 GB against 0.73 GB peak) and 6 times the query time (16 ms against 2.7 ms).

On disk an index is a directory: ``index.json`` (format, analyzer, count), bm25s's arrays,
and the records as ``records.jsonl`` with a byte-offset table, memory-mapped on load so that only
the records a search returns are ever read. Measured on a 2-core CPU with 1.2 million synthetic
records (titles drawn from the real sample's words, real descriptions): building took 99 s at
2.7 GB peak memory, the index is 1.0 GB on disk (mostly the descriptions), loads in 0.04 s,
and answers a title in about 20 ms.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import orjson
from attrs import field, frozen
from attrs import validators as v
from tqdm.auto import tqdm

from productdesc._io import atomic_write, write_text_atomic
from productdesc.data.dataset import AmazonTitlesDataset
from productdesc.errors import UserError

# numpy (about 0.2 s to import) is imported where an index is built, read or searched: the
# context templates import this module, and `productdesc --help` should not wait for it.
if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Analyzer", "Hit", "RetrievalIndex", "normalize_title"]

logger = logging.getLogger(__name__)

FORMAT = "productdesc-retrieval/1"
_META = "index.json"
_RECORDS = "records.jsonl"
_OFFSETS = "offsets.npy"
_BM25_DIR = "bm25"

_WORD = re.compile(r"\w+")


def normalize_title(title: str) -> str:
    """A title's identity for leave-one-out: NFKC, case-folded, punctuation and spacing removed.

    ``"Girls' Ballet  Tutu (Pink)"`` and ``"girls ballet tutu pink"`` normalise alike.
    """
    text = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(_WORD.findall(text.replace("_", " ")))


@functools.lru_cache(maxsize=1)
def _stem_word() -> Callable[[str], str]:
    try:
        import snowballstemmer
    except ModuleNotFoundError:
        raise UserError(
            "word retrieval needs 'snowballstemmer'; install it with: pip install 'productdesc[eval]'"
        ) from None
    # snowballstemmer hands back PyStemmer's C stemmer when that is installed; titles repeat
    # words so much that a cache makes either fast.
    return functools.lru_cache(maxsize=1 << 20)(snowballstemmer.stemmer("english").stemWord)


@functools.cache
def _bm25s() -> Any:
    """The ``bm25s`` module, its logger made to follow the application's logging level.

    bm25s sets its own logger to DEBUG on import, so its debug lines reached the handlers
    whatever level the application chose; NOTSET defers to the application, as a library should.
    """
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def _stopwords() -> frozenset[str]:
    _bm25s()
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


@frozen(kw_only=True)
class Analyzer:
    """How titles and queries become BM25 terms.

    Attributes:
        kind: ``"word"``: lower-cased words, Snowball-stemmed; ``"char"``: character n-grams of
            each lower-cased word padded with spaces (as scikit-learn's ``char_wb``), more
            forgiving of spelling variants but several times slower and larger (see above).
        ngram_range: Smallest and largest n-gram (``"char"`` only).
        stopwords: Drop English stopwords (``"word"`` only; it made no measurable difference on
            the real sample, and titles are short enough that "for" or "with" rarely dominate).
    """

    kind: Literal["word", "char"] = field(default="word", validator=v.in_(("word", "char")))
    ngram_range: tuple[int, int] = field(
        default=(3, 5),
        converter=tuple,
        validator=v.deep_iterable(v.and_(v.instance_of(int), v.gt(0))),
    )
    stopwords: bool = field(default=False, validator=v.instance_of(bool))

    @ngram_range.validator
    def _ordered(self, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"'ngram_range' must be (low, high) with low <= high, got {value}")

    def __call__(self, text: str) -> list[str]:
        """The terms of ``text``."""
        words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold().replace("_", " "))
        if self.kind == "word":
            stop = _stopwords() if self.stopwords else frozenset()
            stem = _stem_word()
            return [stem(w) for w in words if w not in stop]
        low, high = self.ngram_range
        terms = []
        for word in words:
            padded = f" {word} "
            for n in range(low, high + 1):
                # A word shorter than n still yields itself once, so "tv" is searchable.
                terms.extend(padded[i : i + n] for i in range(max(len(padded) - n + 1, 1)))
        return terms


@frozen
class Hit:
    """One search result.

    Attributes:
        uid: The record's uid (``None`` where the source had none).
        title: The known product's title.
        content: Its description.
        score: BM25 score (higher is nearer; 0 shares no term with the query).
    """

    uid: str | None
    title: str
    content: str
    score: float


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the ``m`` highest scores, best first; ties and zero scores in index order.

    bm25s's own top-k runs ``np.argpartition`` over every score, which takes ~90 ms on 300,000
    titles because nearly all are equal (0): numpy's selection degrades on ties. Selecting among
    the records that share a term with the query takes ~1 ms.
    """
    import numpy as np

    matching = np.flatnonzero(scores > 0)
    if len(matching) > m:
        cut = len(matching) - m
        mth_best = scores[matching[np.argpartition(scores[matching], cut)[cut]]]
        # Keep every record tied with the m-th best: argpartition splits ties arbitrarily,
        # and the index order below must decide which of them make the cut.
        matching = matching[scores[matching] >= mth_best]
    ranked = matching[np.lexsort((matching, -scores[matching]))][:m]
    if len(ranked) < m:  # too few records share a term: fill with others, in index order
        ranked = np.concatenate([ranked, np.flatnonzero(scores <= 0)[: m - len(ranked)]])
    return ranked


class _Records:
    """Records as JSON lines in one buffer plus a start-offset table; rows decode on demand."""

    def __init__(self, buffer: bytes | np.ndarray, offsets: np.ndarray) -> None:
        self._buffer = buffer
        self._offsets = offsets  # len(records) + 1 entries; the last is the buffer's size

    @classmethod
    def from_records(cls, rows: Iterable[tuple[str | None, str, str]]) -> _Records:
        import numpy as np

        chunks, offsets, pos = [], [0], 0
        for uid, title, content in rows:
            line = orjson.dumps([uid, title, content]) + b"\n"
            chunks.append(line)
            pos += len(line)
            offsets.append(pos)
        return cls(b"".join(chunks), np.asarray(offsets, dtype=np.int64))

    @classmethod
    def load(cls, directory: Path) -> _Records:
        import numpy as np

        offsets = np.load(directory / _OFFSETS, mmap_mode="r")
        path = directory / _RECORDS
        # np.memmap refuses empty files; an empty index has nothing to map.
        buffer = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else b""
        return cls(buffer, offsets)

    def save(self, directory: Path) -> None:
        import numpy as np

        with atomic_write(directory / _RECORDS, "wb") as fh:
            fh.write(memoryview(self._buffer))
        with atomic_write(directory / _OFFSETS, "wb") as fh:
            np.save(fh, np.asarray(self._offsets), allow_pickle=False)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> tuple[str | None, str, str]:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        uid, title, content = orjson.loads(bytes(self._buffer[start:end]))
        return uid, title, content


class RetrievalIndex:
    """BM25 over the titles of known products, answering with their descriptions.

    Build one with :meth:`build` (from records) or :meth:`from_prepared` (from a prepared data
    directory's train split); keep it with :meth:`save` and :meth:`load`.
    """

    def __init__(self, bm25: Any, records: _Records, analyzer: Analyzer) -> None:
        self._bm25 = bm25
        self._records = records
        self.analyzer = analyzer

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        analyzer: Analyzer | None = None,
        k1: float = 1.5,
        b: float = 0.75,
        show_progress: bool = True,
    ) -> RetrievalIndex:
        """Index ``records`` (mappings with ``uid``, ``title``, ``content``) by title.

        Args:
            records: The known products; a record without a title or content is skipped and
                counted in the log.
            analyzer: Tokenization (default: stemmed words).
            k1: BM25 term-frequency saturation.
            b: BM25 length normalisation (0: none; titles differ little in length).
            show_progress: Show a tqdm bar while tokenizing, and bm25s's own bars while
                indexing where the ``bm25s`` logger is enabled for INFO (``productdesc -v``).

        Raises:
            UserError: ``records`` holds no usable record.
        """
        bm25s = _bm25s()
        analyzer = analyzer or Analyzer()
        kept: list[tuple[str | None, str, str]] = []
        tokens: list[list[str]] = []
        skipped = 0
        for record in tqdm(records, desc="index titles", unit=" rec", disable=not show_progress):
            title, content = record.get("title"), record.get("content")
            if not isinstance(title, str) or not isinstance(content, str) or not title.strip():
                skipped += 1
                continue
            uid = record.get("uid")
            kept.append((None if uid is None else str(uid), title, content))
            tokens.append(analyzer(title))
        if skipped:
            logger.warning(
                "retrieval index: skipped %d record(s) without title or content", skipped
            )
        if not kept:
            raise UserError("retrieval index: no record with a title and a description to index")
        bm25 = bm25s.BM25(k1=k1, b=b)
        # bm25s's four bars blink at 0% on a sample and are steps of one wait on the full data.
        bm25s_bars = show_progress and logging.getLogger("bm25s").isEnabledFor(logging.INFO)
        bm25.index(tokens, show_progress=bm25s_bars)
        logger.info("retrieval index: %d titles, %d terms", len(kept), len(bm25.vocab_dict))
        return cls(bm25, _Records.from_records(kept), analyzer)

    @classmethod
    def from_prepared(
        cls, data_dir: str | os.PathLike[str], split: str = "train", **kwargs: Any
    ) -> RetrievalIndex:
        """Index one split of a prepared data directory (see ``AmazonTitlesDataset``).

        Keyword arguments go to :meth:`build`.
        """
        dataset = AmazonTitlesDataset.from_prepared(data_dir)
        return cls.build(dataset.iter_split(split), **kwargs)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory``, replacing any index there; returns the path.

        The files are written to a temporary sibling directory which is then renamed into
        place, so a reader sees the old index or the new one, never a mixture.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self._bm25.save(str(tmp / _BM25_DIR), show_progress=False)
            self._records.save(tmp)
            meta = {
                "format": FORMAT,
                "records": len(self),
                "analyzer": attrs.asdict(self.analyzer),
            }
            write_text_atomic(tmp / _META, orjson.dumps(meta, option=orjson.OPT_INDENT_2).decode())
            if directory.exists():
                if not (directory / _META).is_file():
                    raise UserError(
                        f"{directory} exists and is not a retrieval index; refusing to replace it"
                    )
                old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
                os.replace(directory, old / directory.name)
                os.replace(tmp, directory)
                shutil.rmtree(old)
            else:
                os.replace(tmp, directory)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RetrievalIndex:
        """Open an index written by :meth:`save` (arrays memory-mapped, records read lazily).

        Raises:
            UserError: ``directory`` holds no index, or one of another format.
        """
        bm25s = _bm25s()
        directory = Path(directory)
        try:
            meta = orjson.loads((directory / _META).read_bytes())
        except FileNotFoundError:
            raise UserError(f"no retrieval index in {directory} (missing {_META})") from None
        except orjson.JSONDecodeError as exc:
            raise UserError(f"retrieval index {directory / _META} is corrupt: {exc}") from None
        if meta.get("format") != FORMAT:
            raise UserError(
                f"retrieval index {directory} has format {meta.get('format')!r}; "
                f"this productdesc reads {FORMAT!r}: rebuild it"
            )
        bm25 = bm25s.BM25.load(str(directory / _BM25_DIR), mmap=True, show_progress=False)
        analyzer = Analyzer(**meta["analyzer"])
        return cls(bm25, _Records.load(directory), analyzer)

    # -- search --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def search(
        self,
        query: str,
        k: int = 1,
        *,
        exclude_uid: str | None = None,
        exclude_title: str | None = None,
    ) -> list[Hit]:
        """The ``k`` records whose titles best match ``query``, best first.

        Args:
            query: A title or a question about one.
            k: How many hits (fewer when the index is smaller).
            exclude_uid: Leave out records with this uid (leave-one-out).
            exclude_title: Leave out records whose title normalises (:func:`normalize_title`)
                to the same text as this one: the same product under another uid.
        """
        return self.search_batch(
            [query], k, exclude_uids=[exclude_uid], exclude_titles=[exclude_title]
        )[0]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int = 1,
        *,
        exclude_uids: Sequence[str | None] | None = None,
        exclude_titles: Sequence[str | None] | None = None,
        show_progress: bool = False,
    ) -> list[list[Hit]]:
        """:meth:`search` for many queries; ``exclude_*`` align with ``queries``."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        n = len(queries)
        for name, seq in (("exclude_uids", exclude_uids), ("exclude_titles", exclude_titles)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} queries")
        uids = exclude_uids or [None] * n
        titles = [None if t is None else normalize_title(t) for t in (exclude_titles or [None] * n)]
        # A few more than k, so that excluded records rarely force a second, larger selection.
        first = min(k + (4 if exclude_uids or exclude_titles else 0), len(self))
        results = []
        for i, query in enumerate(tqdm(queries, desc="search", disable=not show_progress)):
            scores = self._scores(query)
            fetch = first
            while True:
                hits = []
                for doc in _top(scores, fetch):
                    uid, title, content = self._records[int(doc)]
                    if (uids[i] is not None and uid == uids[i]) or (
                        titles[i] is not None and normalize_title(title) == titles[i]
                    ):
                        continue
                    hits.append(Hit(uid, title, content, float(scores[doc])))
                    if len(hits) == k:
                        break
                if len(hits) == k or fetch == len(self):
                    break
                fetch = min(fetch * 2, len(self))
            results.append(hits)
        return results

    def _scores(self, query: str) -> np.ndarray:
        """BM25 score of every record's title for ``query`` (0: no shared term)."""
        import numpy as np

        tokens = self.analyzer(query)
        if not tokens:  # bm25s indexes tokens[0] to tell strings from ids
            return np.zeros(len(self), dtype=np.float32)
        return self._bm25.get_scores(tokens)

    def answer(self, titles: Sequence[str], **exclude: Any) -> list[str]:
        """The retrieval baseline: each title's nearest known product's description.

        Keyword arguments (``exclude_uids``, ``exclude_titles``) go to :meth:`search_batch`.
        """
        return [hits[0].content if hits else "" for hits in self.search_batch(titles, 1, **exclude)]
