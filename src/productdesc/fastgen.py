"""Greedy decoding with a static KV cache and a compiled one-token step (the CUDA fast path).

``transformers.generate`` spends most of a decode step in Python and kernel launches: for a
1.1B model at batch 1 the GPU work of a step is well under a millisecond, the step takes tens.
Here every buffer has a fixed shape (a :class:`~transformers.StaticCache` sized for prompt +
``max_new_tokens``, a full-length attention mask updated in place), so the one-token step, the
argmax and the EOS bookkeeping included, is compiled once and replayed as a CUDA graph
(``torch.compile(mode="reduce-overhead")``). Nothing in the loop waits for the GPU except a
check every few steps that all sequences are done, so the host queues step *n + 1* while the
GPU runs step *n*.

Decode-step attention reads the grouped KV cache as it is (:func:`grouped_decode_attention`):
transformers' SDPA path expands every KV head to all its query heads whenever a mask is given,
which copies the whole static cache on every step, 8 times over for TinyLlama.

Only greedy decoding is handled; :class:`~productdesc.describe.Describer` uses the plain
``generate`` for sampling. The output equals ``generate(do_sample=False)`` token for token in
float32; in bf16 a compiled kernel may round differently and flip a near-tie (the benchmark
reports how often).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ATTENTION", "StaticGreedyDecoder", "grouped_decode_attention"]

#: Name under which :func:`grouped_decode_attention` is registered with transformers.
ATTENTION = "productdesc_grouped_decode"


def grouped_decode_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for a one-token query against a grouped (GQA) KV cache, without expanding it.

    A transformers attention function (``AttentionInterface``): query ``(B, H, 1, D)``, key and
    value ``(B, H_kv, L, D)``, a boolean or additive mask ``(B, 1, 1, L)``; returns
    ``(B, 1, H, D)``. Query heads are grouped by their KV head as ``repeat_kv`` orders them, so
    each group is one small matmul against its own cache. Anything else (prefill, dropout) goes
    to transformers' SDPA function.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or (dropout and module.training):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # (B, H_kv, G, L)
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, H_kv, G, D)
    return out.reshape(batch, 1, heads, dim), None


def _use_grouped_attention(model: Any) -> None:
    """Register :func:`grouped_decode_attention` and switch ``model`` to it (from SDPA only)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if model.config._attn_implementation not in ("sdpa", ATTENTION):
        return  # eager, flash or flex: leave the user's choice alone
    AttentionInterface.register(ATTENTION, grouped_decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)


class StaticGreedyDecoder:
    """Greedy decoding for one model, compiling the step once per (batch, length) shape.

    Args:
        model: A causal LM (LoRA merged in, for speed). Its SDPA attention is switched to
            :func:`grouped_decode_attention`, which computes the same values.
        compile_mode: ``torch.compile`` mode for the one-token step; ``None`` runs it eagerly
            (CPU tests), ``"reduce-overhead"`` captures CUDA graphs.
        check_every: Steps between checks that all sequences are done (each check waits for
            the GPU to catch up).
        length_bucket: Prompt lengths round up to a multiple of this so a batch job reuses a
            few compiled shapes instead of compiling one per prompt length.
    """

    def __init__(
        self,
        model: Any,
        *,
        compile_mode: str | None = "reduce-overhead",
        check_every: int = 16,
        length_bucket: int = 128,
    ) -> None:
        import torch

        _use_grouped_attention(model)
        self.model = model
        self.check_every = check_every
        self.length_bucket = length_bucket
        self._step = self._decode_step
        # One cache per shape, reused: CUDA graphs are recorded against fixed buffer addresses.
        self._caches: dict[tuple[int, int], Any] = {}
        if compile_mode is not None:
            self._step = torch.compile(self._decode_step, mode=compile_mode, fullgraph=True)

    def _decode_step(self, token, position, cache_position, mask, cache, done, eos_bias, ids):
        """Feed ``token`` (B, 1); return the next tokens (B, 1) and the updated ``done`` (B,).

        ``eos_bias`` (added to the logits: -inf at EOS, or all zeros) holds EOS back before
        ``min_new_tokens``; ``ids`` is ``[eos, pad]`` as a tensor. Tensors, not Python
        numbers, so that changing them never recompiles.
        """
        logits = self.model(
            input_ids=token,
            attention_mask=mask,
            position_ids=position,
            cache_position=cache_position,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1, :]
        return _pick(logits, done, eos_bias, ids)

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
        # Made once on the device: creating a tensor from a Python number in the loop would copy
        # from the host and wait for the GPU on every step.
        cache_positions = torch.arange(total, device=device)
        ids = torch.tensor([eos_token_id, pad_token_id], device=device)
        result = torch.full((batch, max_new_tokens), pad_token_id, device=device)

        with torch.inference_mode():
            cache = self._caches.get((batch, total))
            if cache is None:
                cache = self._caches[(batch, total)] = StaticCache(
                    config=model.config, max_cache_len=total
                )
            else:
                cache.reset()
            # Prefill runs eagerly: its shape changes with every prompt length.
            logits = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache_position=cache_positions[:prompt_len],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1, :]
            allow_eos = torch.zeros(logits.shape[-1], device=device)
            hold_eos = allow_eos.clone()
            hold_eos[eos_token_id] = float("-inf")
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            token, done = _pick(logits, done, hold_eos if min_new_tokens else allow_eos, ids)
            position = positions[:, -1:] + 1  # (B, 1)
            steps = 1
            result[:, 0] = token[:, 0]
            for t in range(1, max_new_tokens):
                # EOS cannot come before min_new_tokens: no need to look for it until then.
                if t >= min_new_tokens and t % self.check_every == 0 and bool(done.all()):
                    break
                mask[:, prompt_len + t - 1] = 1
                # The compiled step's outputs live in CUDA-graph memory that its next replay
                # overwrites: copy them out before calling it again.
                token, done = (
                    x.clone()
                    for x in self._step(
                        token,
                        position,
                        cache_positions[prompt_len + t - 1 : prompt_len + t],
                        mask,
                        cache,
                        done,
                        hold_eos if t < min_new_tokens else allow_eos,
                        ids,
                    )
                )
                result[:, t] = token[:, 0]
                position = position + 1
                steps += 1
        result = result[:, :steps]
        # Trim columns after the last EOS so callers see the same shape as generate's.
        if bool(done.all()):
            finished_at = (result == eos_token_id).int().argmax(-1)
            result = result[:, : int(finished_at.max()) + 1]
        return result


def _pick(logits, done, eos_bias, ids):
    """Greedy next token (B, 1) from last-position ``logits``; rows already ``done`` get pad."""
    import torch

    eos, pad = ids[0], ids[1]
    token = (logits.float() + eos_bias).argmax(-1)
    token = torch.where(done, pad, token)
    return token[:, None], done | (token == eos)
