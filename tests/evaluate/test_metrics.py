"""Metric functions against hand-computed values, and the bootstrap's behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from productdesc.evaluate.metrics import (
    METRICS,
    bootstrap,
    bootstrap_difference,
    repetition_rate,
    resample_weights,
    score_system,
)


def test_rouge_on_tiny_strings():
    scores = score_system(["the cat sat"], ["the cat ran"])
    # unigrams: 2 of 3 shared both ways; bigrams: "the cat" of 2; LCS "the cat" = 2 of 3
    assert scores.value("rouge1") == pytest.approx(2 / 3)
    assert scores.value("rouge2") == pytest.approx(1 / 2)
    assert scores.value("rougeL") == pytest.approx(2 / 3)


def test_rouge_stems_and_averages_records():
    scores = score_system(["running dogs", "red"], ["run dog", "blue"])
    assert scores.per_record()["rouge1"] == pytest.approx([1.0, 0.0])  # stemming matches
    assert scores.value("rouge1") == pytest.approx(0.5)


def test_rouge_l_order_matters():
    # same words, reversed: every unigram matches, the longest common subsequence is one word
    scores = score_system(["c b a"], ["a b c"])
    assert scores.value("rouge1") == pytest.approx(1.0)
    assert scores.value("rougeL") == pytest.approx(1 / 3)


def test_bleu_hand_computed():
    # precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    scores = score_system(["the cat sat on the mat"], ["the cat sat on a mat"])
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert scores.value("bleu") == pytest.approx(expected, abs=1e-6)


def test_bleu_is_a_corpus_score_not_a_mean():
    import sacrebleu

    preds = ["the cat sat on the mat", "a dog", "completely different words here"]
    refs = ["the cat sat on a mat", "a dog barks loudly", "nothing in common at all"]
    scores = score_system(preds, refs)
    assert scores.value("bleu") == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert scores.value("chrf") == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert "bleu" not in scores.per_record()  # one sentence's BLEU means little


def test_identical_outputs_score_perfectly():
    text = ["soft cotton baby blanket, machine washable"]
    values = score_system(text, text, [True]).values()
    assert values["rougeL"] == pytest.approx(1.0)
    assert values["bleu"] == pytest.approx(100.0)
    assert values["chrf"] == pytest.approx(100.0)
    assert values["length_ratio"] == pytest.approx(1.0)


def test_repetition_rate():
    assert repetition_rate("a b c d a b c d") == pytest.approx(1 / 5)  # 5 four-grams, 1 repeat
    assert repetition_rate("one two three four five") == 0.0
    assert repetition_rate("too short") == 0.0
    assert repetition_rate("Go go go go go go") == pytest.approx(2 / 3)  # 3 four-grams, 1 distinct
    scores = score_system(["a b c d a b c d", "one two three four"], ["x", "y"])
    assert scores.value("repetition") == pytest.approx(0.1)


def test_lengths_and_eos_share():
    scores = score_system(
        ["one two three", "one", "a b c d e f", "x y"],
        ["one two", "one two", "one two", "one two"],
        [True, False, True, True],
    )
    assert scores.value("eos") == pytest.approx(0.75)
    assert scores.value("words") == pytest.approx(3.0)  # (3 + 1 + 6 + 2) / 4
    assert scores.value("length_ratio") == pytest.approx(12 / 8)


def test_no_eos_share_for_systems_that_do_not_generate():
    scores = score_system(["a"], ["a"], None)
    assert "eos" not in scores.values()


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="as many"):
        score_system(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="as many"):
        score_system(["a"], ["a"], [True, False])
    with pytest.raises(ValueError, match="at least one"):
        score_system([], [])


def _spread_system(n: int = 40) -> tuple:
    rng = np.random.default_rng(1)
    vocab = "soft warm blanket cotton baby kids gift red blue large small".split()
    refs = [" ".join(rng.choice(vocab, 8)) for _ in range(n)]
    preds = [" ".join(rng.choice(vocab, rng.integers(3, 12))) for _ in range(n)]
    preds[::3] = [p + " so soft so warm so soft so warm" for p in preds[::3]]  # some repetition
    return preds, refs, [bool(x) for x in rng.integers(0, 2, n)]


def test_bootstrap_contains_estimate_and_is_deterministic():
    preds, refs, eos = _spread_system()
    scores = score_system(preds, refs, eos)
    first = bootstrap(scores, n_resamples=500, seed=7)
    assert first == bootstrap(scores, n_resamples=500, seed=7)
    assert first != bootstrap(scores, n_resamples=500, seed=8)
    assert set(first) == set(scores.values())
    for name, interval in first.items():
        assert interval.value == pytest.approx(scores.value(name))
        assert interval.low <= interval.value <= interval.high, name
        assert interval.low < interval.high, name  # the records differ, so the interval has width


def test_bootstrap_of_a_corpus_metric_resamples_the_corpus():
    import sacrebleu

    preds, refs, _ = _spread_system(12)
    scores = score_system(preds, refs)
    weights = np.concatenate(list(resample_weights(12, 3, seed=0)))
    samples = [scores.stats["bleu"].T @ w for w in weights]
    for w, summed in zip(weights, samples, strict=True):
        idx = np.repeat(np.arange(12), w)
        direct = sacrebleu.corpus_bleu([preds[i] for i in idx], [[refs[i] for i in idx]]).score
        bleu = next(m for m in METRICS if m.name == "bleu")
        assert float(bleu.score(summed)) == pytest.approx(direct)


def test_resample_weights_draw_n_records_each():
    chunks = list(resample_weights(5, 250, seed=3))
    assert [c.shape for c in chunks] == [(100, 5), (100, 5), (50, 5)]
    weights = np.concatenate(chunks)
    assert (weights.sum(axis=1) == 5).all()
    assert (weights >= 0).all()


def test_constant_scores_give_a_zero_width_interval():
    scores = score_system(["same words"] * 10, ["same words"] * 10)
    interval = bootstrap(scores, n_resamples=200, seed=0)["rougeL"]
    assert interval == (1.0, 1.0, 1.0)


def test_paired_difference():
    preds, refs, _ = _spread_system()
    a = score_system(preds, refs)
    diff = bootstrap_difference(a, a, n_resamples=200, seed=0)
    assert all(d == (0.0, 0.0, 0.0) for d in diff.values())
    better = score_system(refs, refs)
    d = bootstrap_difference(better, a, n_resamples=200, seed=0)["rougeL"]
    assert d.value == pytest.approx(1.0 - a.value("rougeL"))
    assert 0 < d.low <= d.value <= d.high
    assert not math.isnan(d.low)
