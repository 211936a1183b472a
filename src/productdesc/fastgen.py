"""Greedy decoding with a static KV cache and a compiled one-token step (the CUDA fast path).

``transformers.generate`` spends most of a decode step in Python and kernel launches: for a
1.1B model at batch 1 the GPU work of a step is well under a millisecond, the step takes tens.
Here every buffer has a fixed shape (a :class:`~transformers.StaticCache` sized for prompt +
``max_new_tokens``, a full-length attention mask updated in place), so the one-token forward
can be compiled once and replayed as a CUDA graph (``torch.compile(mode="reduce-overhead")``),
and the loop stops as soon as every sequence has emitted EOS (checked every few steps, since
each check waits for the GPU).

Only greedy decoding is handled; :class:`~productdesc.describe.Describer` uses the plain
``generate`` for sampling. The output equals ``generate(do_sample=False)`` token for token in
float32; in bf16 a compiled kernel may round differently and flip a near-tie (the benchmark
reports how often).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["StaticGreedyDecoder"]


class StaticGreedyDecoder:
    """Greedy decoding for one model, compiling the step once per (batch, length) shape.

    Args:
        model: A causal LM (LoRA merged in, for speed).
        compile_mode: ``torch.compile`` mode for the one-token step; ``None`` runs it eagerly
            (CPU tests), ``"reduce-overhead"`` captures CUDA graphs.
        check_every: Steps between checks that all sequences are done.
        length_bucket: Prompt lengths round up to a multiple of this so a batch job reuses a
            few compiled shapes instead of compiling one per prompt length.
    """

    def __init__(
        self,
        model: Any,
        *,
        compile_mode: str | None = "reduce-overhead",
        check_every: int = 8,
        length_bucket: int = 64,
    ) -> None:
        import torch

        self.model = model
        self.check_every = check_every
        self.length_bucket = length_bucket
        self._step = self._forward_last
        # One cache per shape, reused: CUDA graphs are recorded against fixed buffer addresses.
        self._caches: dict[tuple[int, int], Any] = {}
        if compile_mode is not None:
            self._step = torch.compile(self._forward_last, mode=compile_mode, fullgraph=True)

    def _forward_last(self, tokens, position_ids, cache_position, attention_mask, cache):
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache_position=cache_position,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1, :].float()

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
        min_new_tokens: int = 0,
    ) -> torch.Tensor:
        """New tokens for a left-padded batch: ``(B, <= max_new_tokens)``, pad after EOS."""
        import torch
        from transformers import StaticCache

        model = self.model
        device = input_ids.device
        # Left-pad further to a bucketed length: shapes repeat, compiled graphs get reused.
        extra = -input_ids.shape[1] % self.length_bucket
        if extra:
            input_ids = torch.nn.functional.pad(input_ids, (extra, 0), value=pad_token_id)
            attention_mask = torch.nn.functional.pad(attention_mask, (extra, 0), value=0)
        batch, prompt_len = input_ids.shape
        total = prompt_len + max_new_tokens
        # (B, total): 1 where a key is real; future columns are filled in as tokens arrive.
        mask = torch.zeros(batch, total, dtype=attention_mask.dtype, device=device)
        mask[:, :prompt_len] = attention_mask
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # pads: any position

        with torch.inference_mode():
            cache = self._caches.get((batch, total))
            if cache is None:
                cache = self._caches[(batch, total)] = StaticCache(
                    config=model.config, max_cache_len=total
                )
            else:
                cache.reset()
            # Prefill runs eagerly: its shape changes with every prompt length.
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache_position=torch.arange(prompt_len, device=device),
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float()
            next_pos = positions[:, -1:] + 1  # (B, 1)
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            new_tokens = []
            for t in range(max_new_tokens):
                if t < min_new_tokens:
                    logits[:, eos_token_id] = -float("inf")
                token = logits.argmax(-1)
                token = torch.where(done, torch.full_like(token, pad_token_id), token)
                new_tokens.append(token)
                done = done | (token == eos_token_id)
                if t + 1 == max_new_tokens:
                    break
                if (t + 1) % self.check_every == 0 and bool(done.all()):
                    break
                cache_pos = torch.tensor([prompt_len + t], device=device)
                mask[:, prompt_len + t] = 1
                logits = self._step(token[:, None], next_pos, cache_pos, mask, cache)
                next_pos = next_pos + 1
        result = torch.stack(new_tokens, dim=1)
        # Trim columns after the last EOS so callers see the same shape as generate's.
        finished_at = (result == eos_token_id).int().argmax(-1)
        if bool(done.all()):
            result = result[:, : int(finished_at.max()) + 1]
        return result
