"""The no-loop guard on the device: ``generate``'s repetition penalty and no-repeat n-grams,
computed from a fixed-size buffer of each row's tokens, and its exponential length penalty,
so that a decode step with them stays one recordable CUDA graph (fixed shapes, no value read
back to the host)."""

from __future__ import annotations

__all__ = ["decayed", "guarded", "pick"]


def pick(logits, done, eos_bias, stops, pad, guard, decay=None):
    """Greedy next token (B, 1) from last-position ``logits``, under the ``guard``
    (:func:`guarded`) and the length penalty (:func:`decayed`) if any; rows already ``done``
    get pad."""
    import torch

    scores = logits.float() + eos_bias
    if guard is not None:
        scores = guarded(scores, *guard)
    if decay is not None:
        scores = decayed(scores, stops, *decay)
    token = scores.argmax(-1)
    token = torch.where(done, pad, token)
    return token[:, None], done | stops[token]


def guarded(scores, seen, seen_len, penalty, ngram):
    """``scores`` (B, V) after transformers' ``RepetitionPenaltyLogitsProcessor`` (with a
    ``penalty``) and ``NoRepeatNGramLogitsProcessor`` (with an ``ngram`` size), for rows
    whose sequence so far is ``seen[:, :seen_len]`` (:class:`~productdesc.generation.slot.Slot`).

    Tensor operations of fixed shapes only, no value read back to the host: a step stays
    one recordable graph. Cells of ``seen`` holding ``V`` (before the prompt, after the last
    token) land in a spare column ``V`` of the masks, which is dropped: the penalty counts
    no such cell, and no window ending in one bans a token. The only window whose first
    ``ngram - 1`` cells can equal the row's last ``ngram - 1`` while those hold a ``V``
    (a prompt shorter than that) is the one ending at the next token, a ``V``: as in
    transformers, nothing is banned before the sequence holds ``ngram`` tokens.
    """
    import torch

    rows, vocab = scores.shape
    if penalty is not None:
        # Every token the row holds, once, as transformers' gather and scatter count them.
        held = scores.new_zeros((rows, vocab + 1), dtype=torch.bool).scatter_(1, seen, True)
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(held[:, :vocab], penalised, scores)
    if ngram:
        # A window whose first ngram - 1 tokens are the row's last ngram - 1 bans its last.
        last = seen_len - (ngram - 1) + torch.arange(ngram - 1, device=seen.device)
        prefix = seen.index_select(1, last)
        windows = seen.unfold(1, ngram, 1)
        matches = (windows[..., :-1] == prefix[:, None]).all(-1)
        banned = scores.new_zeros((rows, vocab + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1], vocab), True)
        scores = scores.masked_fill(banned[:, :vocab], float("-inf"))
    return scores


def decayed(scores, stops, step, start, factor):
    """``scores`` (B, V) after transformers' ``ExponentialDecayLengthPenalty((start,
    factor))`` for the token after ``step`` new ones: past ``start`` new tokens, each end id
    (``stops``, a (V,) mask) gains ``|score| * (factor ** (step - start) - 1)``.

    The power is taken in float64 and rounded once, as transformers computes it in Python;
    ``step``, ``start`` and ``factor`` are tensors, so that a new setting records no new graph.
    """
    import torch

    past = (step - start).double()
    growth = (factor**past - 1).float()
    bonus = torch.where(stops, scores.abs() * growth, 0.0)
    return torch.where(past > 0, scores + bonus, scores)
