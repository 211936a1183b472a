"""Scores of generated descriptions against the real ones, with bootstrap confidence intervals.

Every metric is defined by two functions: one that turns each record into a row of *sufficient
statistics*, and one that turns the statistics summed over any set of records into the score. A
mean (ROUGE, repetition) sums ``[value, 1]``; a corpus metric (BLEU, chrF) sums sacrebleu's own
n-gram counts, exactly as ``corpus_score`` does. Resampling records for a bootstrap interval is
then a weighted sum of rows, so a corpus metric's interval is the corpus score of resampled
corpora, and 1000 resamples cost milliseconds. This is the scheme sacrebleu's own paired bootstrap
uses (``sacrebleu.significance``).

Nothing here needs the network: ROUGE comes from ``rouge-score`` (stemming on), BLEU and chrF
from ``sacrebleu``, the rest is counting words.

Example::

    scores = score_system(["the cat sat"], ["the cat ran"], stopped_at_eos=[True])
    scores.value("rougeL")  # 0.667
    bootstrap(scores, n_resamples=1000, seed=0)["rougeL"]  # Interval(low=..., high=...)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from attrs import frozen

from productdesc.errors import UserError

__all__ = [
    "METRICS",
    "Interval",
    "Metric",
    "SystemScores",
    "bootstrap",
    "bootstrap_difference",
    "repetition_rate",
    "resample_weights",
    "score_system",
    "word_count",
]


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise UserError(
            f"evaluation needs {exc.name!r}; install it with: pip install 'productdesc[eval]'"
        ) from None


class Interval(NamedTuple):
    """A point estimate and its bootstrap percentile interval."""

    value: float
    low: float
    high: float


@frozen
class Metric:
    """One metric: per-record statistics and the score of their sum.

    Attributes:
        name: Key in results (``"rougeL"``).
        label: Column header in reports.
        stats: ``(predictions, references, stopped_at_eos) -> array (n, d)``, or ``None`` when
            the metric does not apply (EOS share of a system that does not generate).
        score: ``summed stats (..., d) -> score (...)``; vectorised over leading axes.
        per_record: Whether one record's own score is meaningful (ROUGE yes, BLEU no).
    """

    name: str
    label: str
    stats: Callable[[Sequence[str], Sequence[str], Sequence[bool] | None], np.ndarray | None]
    score: Callable[[np.ndarray], np.ndarray]
    per_record: bool = True


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text``."""
    return len(text.split())


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of the word ``n``-grams of ``text`` that repeat an earlier one (0 with none).

    ``"a b c d a b c d"`` has five 4-grams of which one (the second ``a b c d``) is a repeat:
    0.2. Words are compared lower-cased.
    """
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def _mean_rows(values: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.stack([values, np.ones_like(values)], axis=1)


def _ratio(summed: np.ndarray) -> np.ndarray:
    summed = np.asarray(summed, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(summed[..., 1] > 0, summed[..., 0] / summed[..., 1], np.nan)


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    rouge_scorer = _require("rouge_score.rouge_scorer")
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-record ROUGE-1, ROUGE-2 and ROUGE-L F1 (``rouge-score``, Porter stemming on)."""
    scorer = _rouge_scorer()
    out = {key: np.zeros(len(predictions)) for key in ("rouge1", "rouge2", "rougeL")}
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        for key, score in scorer.score(ref, pred).items():  # score(target, prediction)
            out[key][i] = score.fmeasure
    return out


def _rouge_metric(key: str, label: str) -> Metric:
    def stats(preds: Sequence[str], refs: Sequence[str], _eos: Any) -> np.ndarray:
        return _mean_rows(rouge_f1(preds, refs)[key])

    return Metric(key, label, stats, _ratio)


def _sacrebleu_metric(name: str, label: str, factory: str) -> Metric:
    @functools.lru_cache(maxsize=1)
    def scorer() -> Any:
        return getattr(_require("sacrebleu.metrics"), factory)()

    def stats(preds: Sequence[str], refs: Sequence[str], _eos: Any) -> np.ndarray:
        # One reference stream: sacrebleu wants [[ref_1, ..., ref_n]].
        rows = scorer()._extract_corpus_statistics(list(preds), [list(refs)])
        return np.asarray(rows, dtype=np.float64).reshape(len(preds), -1)

    def score(summed: np.ndarray) -> np.ndarray:
        summed = np.asarray(summed)
        flat = summed.reshape(-1, summed.shape[-1])
        # sacrebleu counts are integers; round away the float sums' representation error.
        values = [
            scorer()._compute_score_from_stats(np.rint(row).astype(int)).score for row in flat
        ]
        return np.asarray(values).reshape(summed.shape[:-1])

    return Metric(name, label, stats, score, per_record=name == "chrf")


def _words_stats(preds: Sequence[str], _refs: Sequence[str], _eos: Any) -> np.ndarray:
    return _mean_rows([word_count(p) for p in preds])


def _length_ratio_stats(preds: Sequence[str], refs: Sequence[str], _eos: Any) -> np.ndarray:
    return np.asarray(
        [[word_count(p), word_count(r)] for p, r in zip(preds, refs, strict=True)],
        dtype=np.float64,
    ).reshape(len(preds), 2)


def _eos_stats(
    _preds: Sequence[str], _refs: Sequence[str], eos: Sequence[bool] | None
) -> np.ndarray | None:
    return None if eos is None else _mean_rows([float(bool(e)) for e in eos])


def _repetition_stats(preds: Sequence[str], _refs: Sequence[str], _eos: Any) -> np.ndarray:
    return _mean_rows([repetition_rate(p) for p in preds])


METRICS: tuple[Metric, ...] = (
    _rouge_metric("rouge1", "ROUGE-1"),
    _rouge_metric("rouge2", "ROUGE-2"),
    _rouge_metric("rougeL", "ROUGE-L"),
    _sacrebleu_metric("bleu", "BLEU", "BLEU"),
    _sacrebleu_metric("chrf", "chrF", "CHRF"),
    Metric("words", "words", _words_stats, _ratio),
    # Corpus ratio (sum of generated words / sum of reference words), not a mean of ratios,
    # which a few one-word references would dominate.
    Metric("length_ratio", "length ratio", _length_ratio_stats, _ratio, per_record=False),
    Metric("eos", "EOS share", _eos_stats, _ratio),
    Metric("repetition", "4-gram repetition", _repetition_stats, _ratio),
)
"""Every metric, in report order. Scales: ROUGE, EOS share and repetition 0-1; BLEU, chrF 0-100."""

_BY_NAME = {m.name: m for m in METRICS}


@frozen
class SystemScores:
    """One system's per-record statistics for every applicable metric.

    Attributes:
        stats: ``metric name -> array (n_records, d)``; metrics that do not apply are absent.
    """

    stats: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        """Number of records scored."""
        return next(iter(self.stats.values())).shape[0]

    def value(self, name: str) -> float:
        """The metric over all records (a corpus score for BLEU and chrF)."""
        return float(_BY_NAME[name].score(self.stats[name].sum(axis=0)))

    def values(self) -> dict[str, float]:
        """Every applicable metric's value."""
        return {name: self.value(name) for name in self.stats}

    def per_record(self) -> dict[str, list[float]]:
        """Each record's own score, for metrics where one record's score means something."""
        out: dict[str, list[float]] = {}
        for name, rows in self.stats.items():
            metric = _BY_NAME[name]
            if metric.per_record:
                out[name] = [float(x) for x in metric.score(rows)]
        return out


def score_system(
    predictions: Sequence[str],
    references: Sequence[str],
    stopped_at_eos: Sequence[bool] | None = None,
) -> SystemScores:
    """Score one system's outputs against the references, record by record.

    Args:
        predictions: One output per record.
        references: The true descriptions, aligned with ``predictions``.
        stopped_at_eos: Whether each output ended at EOS; ``None`` for systems that do not
            generate (retrieval), which then have no EOS share.

    Raises:
        ValueError: The sequences differ in length, or are empty.
    """
    n = len(predictions)
    if n == 0 or n != len(references) or (stopped_at_eos is not None and len(stopped_at_eos) != n):
        raise ValueError(
            f"need as many predictions ({n}), references ({len(references)}) and EOS flags "
            f"({'-' if stopped_at_eos is None else len(stopped_at_eos)}) as records, and at least one"
        )
    stats = {}
    for metric in METRICS:
        rows = metric.stats(predictions, references, stopped_at_eos)
        if rows is not None:
            stats[metric.name] = rows
    return SystemScores(stats)


def resample_weights(
    n: int, n_resamples: int, seed: int, *, chunk: int = 100
) -> Iterator[np.ndarray]:
    """How often each of ``n`` records is drawn in each resample, ``chunk`` resamples at a time.

    Yields int arrays ``(resamples in this chunk, n)``. Counting draws (rather than indexing)
    makes a resample's sum of statistics one matrix product; chunks bound the memory to
    ``chunk * n`` counts however many resamples. The same seed gives the same resamples, so
    systems scored on the same records are resampled identically (a paired bootstrap).
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        offsets = (np.arange(size) * n)[:, None]
        yield np.bincount((idx + offsets).ravel(), minlength=size * n).reshape(size, n)


def _resampled_scores(
    stats: dict[str, np.ndarray], n_resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """``metric -> scores of n_resamples resampled corpora``; one pass for all metrics."""
    names = list(stats)
    widths = [stats[name].shape[1] for name in names]
    table = np.hstack([stats[name] for name in names])
    n = table.shape[0]
    sums = np.concatenate([w @ table for w in resample_weights(n, n_resamples, seed)])
    out, column = {}, 0
    for name, width in zip(names, widths, strict=True):
        summed = sums[:, column : column + width]
        out[name] = np.asarray(_BY_NAME[name].score(summed), dtype=np.float64)
        column += width
    return out


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return (float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap(
    scores: SystemScores,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Interval]:
    """Percentile bootstrap interval over records for every metric of one system.

    Args:
        scores: From :func:`score_system`.
        n_resamples: Resamples of the records (with replacement).
        seed: Seed of the resampling; same seed, same intervals (and, for systems scored on
            the same records, the same resamples).
        confidence: Coverage of the interval (0.95: the 2.5th to 97.5th percentile).
    """
    samples = _resampled_scores(scores.stats, n_resamples, seed)
    return {
        name: Interval(scores.value(name), *_percentile_interval(samples[name], confidence))
        for name in scores.stats
    }


def bootstrap_difference(
    a: SystemScores,
    b: SystemScores,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Interval]:
    """Paired bootstrap of ``a - b`` for every metric both systems have (same records)."""
    if a.n != b.n:
        raise ValueError(f"systems scored on different record counts ({a.n} vs {b.n})")
    shared = [m.name for m in METRICS if m.name in a.stats and m.name in b.stats]
    # Same seed and record count: both systems see exactly the same resamples.
    samples_a = _resampled_scores({k: a.stats[k] for k in shared}, n_resamples, seed)
    samples_b = _resampled_scores({k: b.stats[k] for k in shared}, n_resamples, seed)
    return {
        name: Interval(
            a.value(name) - b.value(name),
            *_percentile_interval(samples_a[name] - samples_b[name], confidence),
        )
        for name in shared
    }
