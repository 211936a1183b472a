"""Greedy decoding with a static KV cache and its one-token steps recorded as CUDA graphs.

``transformers.generate`` spends most of a decode step in Python and kernel launches: for a
1.1B model at batch 1 the GPU work of a step is well under a millisecond, the step takes tens.
Here every buffer has a fixed shape (a :class:`~transformers.StaticCache` sized for prompt +
``max_new_tokens``, a full-length attention mask updated in place), so a run of
``check_every`` one-token steps, the argmax and the EOS bookkeeping included, is recorded as
one CUDA graph and replayed. The host launches one graph per 16 tokens instead of hundreds of
kernels per token, and waits for the GPU only between two graphs, to see whether every
sequence is done. With a ``compile_mode`` the step is compiled (``torch.compile``) before it
is recorded, its element-wise kernels fused, and so is the prompt's forward (not recorded:
its shape varies from call to call): faster decoding, for minutes of compiling first. The
start that every prompt of a batch shares (a template's instruction) is computed once, for
one row, kept, and copied into every row's cache: the prompt's forward runs over the rest only.

What the decoder changes in the model for this (an attention function that reads the grouped
KV cache as it is, fused q/k/v and gate/up products, a Triton kernel for a decode step's
attention in 16-bit on CUDA) is :mod:`productdesc.generation.fusion`'s.

Only greedy decoding is handled, with or without ``generate``'s guards against loops
(``repetition_penalty``, ``no_repeat_ngram_size``: computed inside the step, on the device,
from a fixed-size buffer of each row's tokens); :class:`~productdesc.generation.describer.Describer`
uses the plain ``generate`` for sampling. The output equals ``generate(do_sample=False)``
with the same settings token for token in float32; in bf16 a compiled kernel may round
differently and flip a near-tie (the benchmark reports how often).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from productdesc.generation.compile_cache import model_kind, own_code, use_compile_cache
from productdesc.generation.fusion import (
    _fuse_projections,
    _fused_products,
    _load_kernel,
    _patch_norms,
    _use_grouped_attention,
)
from productdesc.generation.guard import pick
from productdesc.generation.prefix import SharedStarts
from productdesc.generation.slot import Slot

if TYPE_CHECKING:
    import torch

__all__ = ["StaticGreedyDecoder"]

logger = logging.getLogger(__name__)

# One CUDA graph recording at a time in the process (see StaticGreedyDecoder._advance).
_CAPTURE_LOCK = threading.Lock()


class StaticGreedyDecoder:
    """Greedy decoding for one model: static KV cache, compiled step, CUDA graphs of many steps.

    Args:
        model: A causal LM (LoRA merged in, for speed). Its SDPA attention is switched to
            :func:`grouped_decode_attention`, which computes the same values.
        compile_mode: ``torch.compile`` mode for the one-token step and, with
            ``compile_prefill``, the prompt's forward; ``None`` runs both eagerly (CPU tests).
            CUDA graphs of the step are recorded by this class, so a mode that records its
            own (``"reduce-overhead"``) only adds host work.
        check_every: Steps per CUDA graph; between two graphs the loop checks, once, whether
            every sequence is done (the only time it waits for the GPU).
        length_bucket: Prompt lengths round up to a multiple of this so a batch job reuses a
            few compiled shapes instead of compiling one per prompt length.
        cuda_graphs: Record ``check_every`` steps as one CUDA graph and replay it (on a CUDA
            model): the host then launches one graph per ``check_every`` tokens instead of a
            step's hundreds of kernels per token.
        fuse: Compute q/k/v and gate/up as one product each in Llama layers, their weights
            made views of one tensor (memory and ``state_dict`` unchanged; the model computes
            as before outside this decoder).
        max_shapes: How many (batch size, length, guard) shapes keep their KV cache and CUDA
            graph; the least recently used is dropped beyond that, so a service that sees
            many batch sizes does not keep a cache for each. (A guard is the pair
            ``no_repeat_ngram_size``, whether ``repetition_penalty`` is on: its operations are
            part of the recorded step; the penalty's value is not.)
        compile_prefill: Compile the prompt's forward pass too: faster batch calls and first
            token, for a longer warm-up (measured on the benchmarks page).
        share_prefix: When every prompt of a batch starts with the same tokens (the
            template's instruction, at least ``length_bucket`` of them), their keys and values
            are computed once, for one row, kept for later calls (``max_shapes`` such starts,
            dropped when the weights change) and copied into every row's cache; the prompt's
            forward then runs over the rest of each prompt only. It computes what the
            whole prompt's forward computes (the same positions, the same attention); in
            16-bit the start's keys, computed eagerly for one row, may round differently, as
            any two kernels may. A batch of one runs its whole prompt: its forward is bound
            by kernel launches, not by the prompt's length, and copying the start in cost
            more than it saved.
        attention_kernel: With ``fuse``, a decode step's attention in Llama layers (rotary
            embedding, KV-cache write, attention over the cache up to the token) runs as one
            Triton kernel (:mod:`productdesc.generation.fused_decode`) in 16-bit on CUDA, instead of
            five kernels, and without ``compile_mode`` so do each RMSNorm and the MLP's
            ``silu(gate) * up``; elsewhere, or without Triton, transformers' path runs.

    Compilation: torch compiles the first shape as it is, then makes one size symbolic each
    time a new one varies (batch size, prompt bucket, ``max_new_tokens``), with a batch of one
    kept apart: up to five compilations of the prompt's forward and four of the step before
    every shape is served (seen on CPU), or three when a batch of one, a longer prompt and a
    batch of two come first, as :meth:`~productdesc.generation.describer.Describer.warm_up` does.

    CUDA graphs record where the weights are. When the model's parameters have moved or
    changed since the last call (``.to()``, a new ``state_dict`` assigned or loaded, a
    training step), the recorded shapes and kept prompt starts are dropped and the
    projections fused again before decoding; so they are when a PEFT adapter is switched
    off, on or to another. Edits through ``.data`` cannot be seen (they count no version):
    after one that changes what the model computes, build a new decoder (or ``Describer``).

    Raises:
        ValueError: The model has sliding-window, chunked or linear-attention layers, whose
            cache decides with Python numbers what a recorded step cannot redo.
    """

    def __init__(
        self,
        model: Any,
        *,
        compile_mode: str | None = "default",
        check_every: int = 16,
        length_bucket: int = 32,
        cuda_graphs: bool = True,
        fuse: bool = True,
        max_shapes: int = 8,
        compile_prefill: bool = True,
        share_prefix: bool = True,
        attention_kernel: bool = True,
    ) -> None:
        import collections

        if min(check_every, length_bucket, max_shapes) < 1:
            raise ValueError("check_every, length_bucket and max_shapes must be at least 1")
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        probe = StaticCache(config=model.config, max_cache_len=1)
        if not all(type(layer) is StaticLayer for layer in probe.layers):
            raise ValueError(
                "the fast path decodes models whose layers all use full attention; this one "
                "has sliding-window, chunked or linear-attention layers (use fast=False)"
            )
        _use_grouped_attention(model)
        self.fuse = fuse
        self.model = model
        self._weights: tuple = ()
        self._params: tuple = ()
        self._tuners: list = []  # peft's BaseTunerLayer modules
        self.check_every = check_every
        self.length_bucket = length_bucket
        self.share_prefix = share_prefix
        self._kernel = _load_kernel() if attention_kernel and fuse else None
        self.cuda_graphs = cuda_graphs and model.device.type == "cuda"
        self.max_shapes = max_shapes
        # One slot per shape and guard, reused: CUDA graphs are recorded against fixed
        # buffer addresses.
        self._slots: collections.OrderedDict[tuple[int, int, int, bool, bool], Slot] = (
            collections.OrderedDict()
        )
        # Keys and values of shared prompt starts, one row each, per layer.
        self._prefixes = SharedStarts(length_bucket, max_shapes)
        self._compile_mode = compile_mode
        self._compiled_prefill = compile_mode is not None and compile_prefill
        self._kind = model_kind(model) if compile_mode is not None else None
        self._functions: dict[tuple[int, bool, bool], tuple[Any, Any]] = {}

    def _step_and_prefill(self, ngram: int, penalize: bool, decays: bool) -> tuple[Any, Any]:
        """The one-token step and the prompt's forward for a guard: compiled (once), each
        guard its own code (:func:`~productdesc.generation.compile_cache.own_code`), since its ops are in the graph and every
        guard would otherwise add its compilations to one list; eager without a
        ``compile_mode``."""
        import torch

        functions = self._functions.get((ngram, penalize, decays))
        if functions is not None:
            return functions
        step = prefill = self._next_tokens
        key = (self._kind, ngram, penalize, decays)
        if self._compile_mode is not None:
            use_compile_cache()
            step = own_code(self._next_tokens, ("step", *key))
            step = torch.compile(step, mode=self._compile_mode, fullgraph=True)
        if self._compiled_prefill:
            # Not fullgraph: a graph break in the prompt's forward would cost some speed;
            # with fullgraph it would stop every call.
            prefill = own_code(self._next_tokens, ("prefill", *key))
            prefill = torch.compile(prefill, mode=self._compile_mode)
        self._functions[(ngram, penalize, decays)] = step, prefill
        return step, prefill

    def _next_tokens(
        self,
        tokens,
        position,
        cache_position,
        mask,
        cache,
        done,
        eos_bias,
        stops,
        pad,
        guard,
        decay=None,
    ):
        """Feed ``tokens`` (B, T) into ``cache``; return the next tokens (B, 1) and ``done`` (B,).

        ``eos_bias`` (added to the logits: -inf at EOS, or all zeros) holds EOS back before
        ``min_new_tokens``; ``stops`` (V,) marks the end ids, ``pad`` is the pad id; ``guard`` and
        ``decay`` are the slot's (:class:`Slot`) or ``None``. Tensors, not Python numbers, so
        that changing them never recompiles.
        """
        logits = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=position,
            cache_position=cache_position,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        return pick(logits, done, eos_bias, stops, pad, guard, decay)

    def _run_steps(self, slot: Slot, step: Any) -> None:
        """``check_every`` calls of ``step`` on ``slot``'s buffers, in place (what a graph
        records)."""
        import torch

        for j in range(self.check_every):
            # The fed token's own key becomes visible; a Python index would be baked into a
            # graph, so the position lives on the device.
            slot.mask.index_fill_(1, slot.cache_position, 1)
            bias = torch.where(slot.step < slot.min_new, slot.hold_eos, slot.allow_eos)
            token, done = step(
                slot.token,
                slot.position,
                slot.cache_position,
                slot.mask,
                slot.cache,
                slot.done,
                bias,
                slot.stops,
                slot.pad,
                slot.guard,
                slot.decay,
            )
            slot.take(token, done)
            slot.out[:, j] = token[:, 0]
            slot.position += 1
            slot.cache_position += 1
            slot.step += 1

    def _advance(self, slot: Slot, step: Any) -> None:
        """Run ``check_every`` steps: eagerly the first time a shape is seen (which compiles
        and warms up), then as one recorded CUDA graph."""
        import torch

        if not self.cuda_graphs:
            self._run_steps(slot, step)
        elif slot.graph is not None:
            slot.graph.replay()
        else:
            # PyTorch's recipe: warm up on a side stream, then record.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._run_steps(slot, step)
            torch.cuda.current_stream().wait_stream(stream)
            # Recording runs nothing: the buffers hold what the eager run left in them. One
            # recording at a time, and other threads' GPU work does not break it.
            graph = torch.cuda.CUDAGraph()
            with _CAPTURE_LOCK, torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._run_steps(slot, step)
            slot.graph = graph

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        min_new_tokens: int = 0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        exponential_decay_length_penalty: tuple[int, float] | None = None,
    ) -> torch.Tensor:
        """New tokens for a left-padded batch: ``(B, <= max_new_tokens)``, pad after EOS.

        ``eos_token_id`` may be several ids, as in ``generate``: a row ends at any of them.

        ``repetition_penalty``, ``no_repeat_ngram_size`` and
        ``exponential_decay_length_penalty`` are ``generate``'s, computed on the device inside
        the step: the tokens they count are those ``generate`` counts, the whole given prompt,
        its left padding included (see :func:`~productdesc.generation.guard.guarded` and
        :func:`~productdesc.generation.guard.decayed`).
        """
        import torch

        if repetition_penalty <= 0 or no_repeat_ngram_size < 0:
            raise ValueError(
                "repetition_penalty must be positive and no_repeat_ngram_size not negative"
            )
        stop_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self._refresh()
        given = input_ids
        prefix, input_ids, attention_mask = self._split_prefix(input_ids, attention_mask)
        input_ids, attention_mask = self._bucketed(input_ids, attention_mask, pad_token_id)
        batch, fed = input_ids.shape
        # The cache holds [shared prefix][the rest of each prompt, left-padded][answer].
        start, prompt_len = len(prefix), len(prefix) + fed
        # The first token comes from the prefill, the rest in whole runs of check_every steps
        # (the surplus of the last run is cut off).
        runs = -(-(max_new_tokens - 1) // self.check_every)
        total = prompt_len + runs * self.check_every
        decay = exponential_decay_length_penalty
        guard = no_repeat_ngram_size, repetition_penalty != 1.0, decay is not None
        step, prefill = self._step_and_prefill(*guard)
        with torch.inference_mode(), _fused_products(self._kernel):
            slot, known = self._slot(batch, total, guard)
            logger.debug(
                "fast path decodes %d rows: %d prompt tokens (%d of them a shared start), up to %d "
                "new, no_repeat_ngram_size=%d, repetition_penalty=%g; a %s shape",
                *(batch, prompt_len, start, max_new_tokens, no_repeat_ngram_size),
                *(repetition_penalty, "known" if known else "new"),
            )
            positions = slot.start_call(
                stop_ids, pad_token_id, start, attention_mask, given, repetition_penalty, decay
            )
            if prefix:
                self._write_prefix(slot.cache, prefix, batch)
            token = self._prefill(slot, prefill, input_ids, positions, start, min_new_tokens)
            return self._decode(slot, step, token, runs, min_new_tokens, max_new_tokens)

    def _prefill(
        self, slot: Slot, prefill: Any, input_ids: Any, positions: Any, start: int, min_new: int
    ) -> torch.Tensor:
        """Feed the prompt (after a shared ``start`` already in the cache) and set the slot up
        for the first decode step; return the first new token (B, 1)."""
        import torch

        prompt_len = start + input_ids.shape[1]
        prompt = (
            input_ids,
            positions,
            torch.arange(start, prompt_len, device=input_ids.device),
            slot.mask,
            slot.cache,
            slot.done,
            slot.hold_eos if min_new > 0 else slot.allow_eos,
            slot.stops,
            slot.pad,
            slot.guard,
        )
        if self._compiled_prefill and not slot.cache.is_initialized:
            # A new cache allocates its tensors on its first write, in the keys' dtype.
            # Code compiled before that would not match it on the shape's next call and
            # compile again, so the first write is an eager prefill, then done over.
            self._next_tokens(*prompt)
            slot.cache.reset()
        token, done = prefill(*prompt)
        slot.take(token, done)
        slot.position.copy_(positions[:, -1:] + 1)
        slot.cache_position.fill_(prompt_len)
        slot.step.fill_(1)
        slot.min_new.fill_(min_new)
        return token

    def _bucketed(self, input_ids: Any, attention_mask: Any, pad: int) -> tuple[Any, Any]:
        """Left-padded further to a multiple of ``length_bucket``: shapes repeat, compiled
        graphs get reused."""
        import torch

        extra = -input_ids.shape[1] % self.length_bucket
        if extra:
            input_ids = torch.nn.functional.pad(input_ids, (extra, 0), value=pad)
            attention_mask = torch.nn.functional.pad(attention_mask, (extra, 0), value=0)
        return input_ids, attention_mask

    def _refresh(self) -> None:
        """Drop what the model's weights were recorded with, if they changed since the last
        call (first call, parameters moved or changed, an adapter switched): recorded graphs
        would read stale memory or run the old forward, kept prompt starts would hold stale
        keys and values."""
        if self._weights != self._state():
            self._slots.clear()
            self._prefixes.clear()
            if self.fuse:
                _fuse_projections(self.model)
                _patch_norms(self.model)
            self._weights = self._state()

    def _slot(self, batch: int, total: int, guard: tuple[int, bool, bool]) -> tuple[Slot, bool]:
        """The kept slot of this shape (its cache emptied) and ``True``, or a new one and
        ``False``; the least recently used is dropped beyond ``max_shapes``."""
        key = (batch, total, *guard)
        slot = self._slots.pop(key, None)
        known = slot is not None
        if slot is None:
            if len(self._slots) >= self.max_shapes:
                self._slots.popitem(last=False)
            slot = Slot(self.model, batch, total, self.check_every, *guard)
        else:
            slot.cache.reset()
        self._slots[key] = slot  # now the most recently used
        return slot, known

    def _decode(
        self, slot: Slot, step: Any, token: Any, runs: int, min_new: int, max_new: int
    ) -> torch.Tensor:
        """After the prefill's ``token``: runs of steps until every row is done, cut to
        ``max_new`` columns and, where every row ended, to the last EOS (``generate``'s shape)."""
        import torch

        pieces = [token]
        for run in range(runs):
            # EOS cannot come before min_new_tokens: no need to look for it until then.
            if 1 + run * self.check_every >= min_new and bool(slot.done.all()):
                break
            self._advance(slot, step)
            pieces.append(slot.out.clone())
        result = torch.cat(pieces, dim=1)[:, :max_new]
        ended = slot.stops[result]
        if bool(ended.any(-1).all()):
            result = result[:, : int(ended.int().argmax(-1).max()) + 1]
        return result

    def _state(self) -> tuple:
        """What recorded graphs and kept starts were made for: each parameter's storage and
        count of in-place changes (:func:`_where`), and which PEFT adapters are on, since
        switching one off, on or to another changes the forward but no weight."""
        params = _where(self.model)
        if params != self._params:  # adapters come and go with parameters: look again
            self._params = params
            self._tuners = [m for m in self.model.modules() if hasattr(m, "merged_adapters")]
        return params, tuple((m.disable_adapters, tuple(m.active_adapters)) for m in self._tuners)

    def _split_prefix(
        self, input_ids: Any, attention_mask: Any
    ) -> tuple[tuple[int, ...], Any, Any]:
        """The start every row shares, and each row's rest (:meth:`SharedStarts.split`)."""
        if not self.share_prefix:
            return (), input_ids, attention_mask
        return self._prefixes.split(input_ids, attention_mask)

    def _write_prefix(self, cache: Any, prefix: tuple[int, ...], batch: int) -> None:
        """``prefix``'s keys and values in every row of ``cache`` (:meth:`SharedStarts.write`)."""
        self._prefixes.write(self.model, cache, prefix, batch)


def _where(model: Any) -> tuple:
    """Where and how each parameter is stored, and its count of in-place changes. (Inference
    tensors count no changes: they cannot be changed outside ``inference_mode``.)"""
    return tuple(
        (p.data_ptr(), p.dtype, p.device, -1 if p.is_inference() else p._version)
        for p in model.parameters()
    )
