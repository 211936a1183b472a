"""The buffers one shape of the fast path decodes in: a static KV cache and what a step reads and
writes, kept at fixed addresses so that a recorded CUDA graph can be replayed over them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Slot"]


class Slot:
    """Buffers for one (batch, total length, guard) shape, reused call after call.

    A CUDA graph records the addresses of the tensors it reads and writes, so everything a
    decode step touches lives here and is updated in place: the static KV cache, the attention
    mask, the token being fed, its position and cache position, the step count and ``done``.
    ``out`` collects the tokens of one run of ``check_every`` steps.

    With a guard against loops (``ngram`` > 0 or ``penalize``), ``seen`` holds each row's
    sequence as ``generate`` sees it (the given prompt, its left padding included, then each
    new token, written at ``seen_len``) and, in its other cells, the vocabulary size, an id
    no token has, which the guard's pass over the whole buffer (fixed shapes) skips.
    ``guard`` is what the step gets: ``(seen, seen_len, penalty, ngram)``, ``penalty``
    ``None`` when off. With ``decays``, ``decay`` is the length penalty's ``(step, start,
    factor)`` (:func:`~productdesc.generation.guard.decayed`).
    """

    def __init__(
        self,
        model: Any,
        batch: int,
        total: int,
        steps: int,
        ngram: int,
        penalize: bool,
        decays: bool = False,
    ) -> None:
        import torch
        from transformers import StaticCache

        device = model.device
        self.vocab = model.get_output_embeddings().out_features
        self.cache = StaticCache(config=model.config, max_cache_len=total)
        self.mask = torch.zeros(batch, total, dtype=torch.long, device=device)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.cache_position = torch.zeros(1, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.min_new = torch.zeros((), dtype=torch.long, device=device)
        self.out = torch.zeros(batch, steps, dtype=torch.long, device=device)
        # Added to the logits: -inf at the end tokens (set per call) holds them back before
        # min_new_tokens.
        self.allow_eos = torch.zeros(self.vocab, device=device)
        self.hold_eos = torch.zeros(self.vocab, device=device)
        # Set per call: which ids end an answer (a mask, so that a model with several end
        # tokens keeps one shape) and the pad id.
        self.stops = torch.zeros(self.vocab, dtype=torch.bool, device=device)
        self.pad = torch.zeros((), dtype=torch.long, device=device)
        self.graph: Any = None
        self.guard: tuple | None = None
        if ngram or penalize:
            # generate's n-grams over a row's left padding (pads only, or pads then the
            # prompt's first tokens) need `keep` pad columns, the penalty one: the prompt's
            # part of `seen` is `keep` columns wider than the cache's, whose length no row
            # exceeds. Then a column per new token, the last one's included.
            self.keep = max(ngram, 1)
            self.seen = torch.zeros(batch, total + self.keep + 1, dtype=torch.long, device=device)
            self.seen_len = torch.zeros(1, dtype=torch.long, device=device)
            penalty = torch.ones((), device=device) if penalize else None
            self.guard = (self.seen, self.seen_len, penalty, ngram)
        self.decay: tuple | None = None
        if decays:
            start = torch.zeros((), dtype=torch.long, device=device)
            self.decay = (self.step, start, torch.ones((), dtype=torch.float64, device=device))

    def start_call(
        self,
        stop_ids: list[int],
        pad_id: int,
        start: int,
        attention_mask: torch.Tensor,
        given: torch.Tensor,
        penalty: float,
        decay: tuple[int, float] | None = None,
    ) -> torch.Tensor:
        """Set the buffers for a call, in place (a graph reads these addresses): which ids end
        an answer, the pad, the mask over a shared start of ``start`` tokens and the rest of
        each prompt, the guard and the length penalty's ``decay`` (``(start, factor)``);
        return the prompt's positions (the shared start holds 0 .. ``start - 1``; pads get
        any position, masked)."""
        prompt_len = start + attention_mask.shape[1]
        self.stops.zero_()
        self.stops[stop_ids] = True
        self.pad.fill_(pad_id)
        self.hold_eos.zero_()
        self.hold_eos[stop_ids] = float("-inf")
        self.mask.zero_()
        self.mask[:, :start] = 1
        self.mask[:, start:prompt_len] = attention_mask
        self.done.zero_()
        self.start_guard(given, prompt_len, penalty)
        if self.decay is not None and decay is not None:
            self.decay[1].fill_(decay[0])
            self.decay[2].fill_(decay[1])
        return start + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def start_guard(self, given: torch.Tensor, prompt_len: int, penalty: float) -> None:
        """Set the guard's buffers for a call: ``seen`` starts with the ``given`` prompt (the
        caller's, before its start is split off or its padding lengthened), its last
        ``prompt_len + keep`` columns. Any before them are left padding in every row, beyond
        the ``keep`` pad columns kept: they add no token and no n-gram."""
        if self.guard is None:
            return
        head = prompt_len + self.keep
        given = given[:, -head:]
        self.seen.fill_(self.vocab)
        self.seen[:, head - given.shape[1] : head] = given
        self.seen_len.fill_(head)
        if self.guard[2] is not None:
            self.guard[2].fill_(penalty)

    def take(self, token: torch.Tensor, done: torch.Tensor) -> None:
        """Keep a step's ``token`` (B, 1) and ``done`` (B,) for the next step, the guard's
        sequence growing by the token."""
        self.token.copy_(token)
        self.done.copy_(done)
        if self.guard is not None:
            self.seen.index_copy_(1, self.seen_len, token)
            self.seen_len += 1
