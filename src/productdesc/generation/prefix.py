"""The start every prompt of a batch shares (the template's instruction), computed once:
its keys and values kept per start and copied into each row's cache, so that the prompt's
forward runs over the rest of each row only (the fast path's ``share_prefix``)."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["SharedStarts"]


class SharedStarts:
    """The kept starts of one decoder: at most ``max_kept``, the least recently used dropped;
    a start is a whole number of ``length_bucket`` tokens.

    :meth:`clear` them when the model's weights change: kept keys and values would be stale.
    """

    def __init__(self, length_bucket: int, max_kept: int) -> None:
        self.length_bucket = length_bucket
        self.max_kept = max_kept
        self._kept: collections.OrderedDict[tuple[int, ...], list] = collections.OrderedDict()

    def __iter__(self):
        return iter(self._kept)

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        self._kept.clear()

    def split(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor]:
        """The start every row of a left-padded batch shares, and the rest of each row,
        left-padded again.

        The start is the longest kept one that every row begins with or, failing that, the
        tokens all rows begin with, cut to whole length buckets (none if fewer than one: a
        split costs more than it saves); none for a batch of one.
        Every row keeps at least its last token: its logits give the first new one.
        """
        import torch

        if len(input_ids) < 2:
            return (), input_ids, attention_mask
        bucket = self.length_bucket
        ids, real = input_ids.cpu(), attention_mask.bool().cpu()
        lengths = real.sum(1)
        room = int(lengths.min()) - 1
        if room < bucket:
            return (), input_ids, attention_mask
        # The first `room` tokens of every row, side by side (the rows are left-padded).
        width = ids.shape[1]
        aligned = ids.gather(1, (width - lengths)[:, None] + torch.arange(room))
        kept = (
            p
            for p in sorted(self._kept, key=len, reverse=True)
            if len(p) <= room and bool((aligned[:, : len(p)] == torch.tensor(p)).all())
        )
        prefix = next(kept, ())
        if not prefix:
            differs = [*(aligned != aligned[0]).any(0).tolist(), True]
            # Whole length buckets only: sizes keep the multiples the compiled code was made
            # for (inductor's GPU kernels may assume them), and one start serves prompts that
            # share a little more or less.
            prefix = tuple(aligned[0, : differs.index(True) // bucket * bucket].tolist())
        if not prefix:
            return (), input_ids, attention_mask
        # Each row's rest is its last `lengths - len(prefix)` tokens: keep the last `rest`
        # columns and mask what in them is still another row's padding or the start.
        rest = int(lengths.max()) - len(prefix)
        mask = torch.arange(rest) >= (rest - (lengths - len(prefix)))[:, None]
        tail = torch.where(mask, ids[:, width - rest :], 0)
        return (
            prefix,
            tail.to(input_ids.device),
            mask.to(device=attention_mask.device, dtype=attention_mask.dtype),
        )

    def write(self, model: Any, cache: Any, prefix: tuple[int, ...], batch: int) -> None:
        """Write ``prefix``'s keys and values (kept, or computed now for one row) into every
        row of ``cache`` (empty), at cache positions ``0 .. len(prefix) - 1``."""
        import torch
        from transformers import DynamicCache

        layers = self._kept.pop(prefix, None)
        if layers is None:
            one = DynamicCache(config=model.config)
            ids = torch.tensor([prefix], device=model.device)
            model(input_ids=ids, past_key_values=one, use_cache=True, logits_to_keep=1)
            layers = [(layer.keys, layer.values) for layer in one.layers]
            if len(self._kept) >= self.max_kept:
                self._kept.popitem(last=False)
        self._kept[prefix] = layers  # now the most recently used
        for i, (keys, values) in enumerate(layers):
            shape = (batch, *keys.shape[1:])
            cache.update(keys.expand(shape), values.expand(shape), i)
