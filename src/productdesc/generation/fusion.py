"""What the fast path changes in a model for decoding: attention and fused projections.

A decode step's attention reads the grouped KV cache as it is (:func:`grouped_decode_attention`,
registered with transformers under :data:`ATTENTION`): transformers' SDPA path expands every KV
head to all its query heads whenever a mask is given, which copies the whole static cache on
every step, 8 times over for TinyLlama. In Llama layers the q/k/v and gate/up projections become
one product each (:func:`_fuse_projections`, their weights views of one tensor), and in 16-bit on
CUDA a decode step's rotary embedding, cache write and attention are one Triton kernel
(:mod:`productdesc.generation.fused_decode`), as are the RMSNorms (:func:`_patch_norms`) and
the MLP's ``silu(gate) * up``. The fused forwards run only inside
:func:`_fused_products`, the decoder's own calls; elsewhere the model computes as before.

This module knows nothing of caches, graphs or decoding loops
(:mod:`productdesc.generation.static_decoder` owns those).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ATTENTION", "grouped_decode_attention"]

logger = logging.getLogger(__name__)

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
    ``(B, 1, H, D)``. transformers' own SDPA function repeats every KV head for its query heads
    whenever a mask is given, copying the whole static cache on every step. Here, in 16-bit,
    torch's SDPA gets the grouped cache with ``enable_gqa`` and runs as one fused kernel (15%
    faster decoding at batch 64 on an H200 than three kernels). cuDNN's fused attention is
    16-bit only, and in float32 SDPA decoded at about half the speed of grouped matmuls, so
    there query heads are grouped by their KV head, as ``repeat_kv`` orders them, and each
    group is one small matmul against its own cache. Anything else (prefill, dropout) goes to
    transformers' SDPA function.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or (dropout and module.training):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    if query.dtype in (torch.float16, torch.bfloat16):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True
        )
        return out.transpose(1, 2), None
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale  # (B, H_kv, G, L)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1), value)  # (B, H_kv, G, D)
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


#: Module classes whose projections :func:`_fuse_projections` merges, with the parameters their
#: forward has in the transformers versions whose forward the fused one follows.
_FUSABLE = {
    "LlamaAttention": (
        ("q_proj", "k_proj", "v_proj"),
        ("self", "hidden_states", "position_embeddings", "attention_mask", "past_key_values"),
    ),
    "LlamaMLP": (("gate_proj", "up_proj"), ("self", "x")),
}


def _fuse_projections(model: Any) -> int:
    """Compute q/k/v, and gate/up, as one matrix product each in ``model``'s Llama layers.

    A decode step at batch 64 spends most of its time in small projection GEMMs: k and v are
    2048 x 256 each in TinyLlama, too small to fill the GPU, and every product is a kernel of
    its own. Here the weights of each group are copied once into one tensor and each
    ``nn.Linear`` keeps a *view* of its rows, so memory does not grow and ``state_dict`` and
    ``save_pretrained`` are unchanged. The layer's forward multiplies once and splits, but
    only inside :func:`_fused_products` (the decoder's own calls) and with gradients off;
    anywhere else the original forward runs, so a model used or changed elsewhere afterwards
    behaves as before. A module whose views no longer share the fused tensor (the model was
    moved, cast or copied) is fused again.

    Only plain ``nn.Linear`` projections of the classes in ``_FUSABLE`` are fused (not 4-bit
    or LoRA layers).

    Returns:
        How many modules were fused (again).
    """
    import inspect
    import types

    import torch

    fused = 0
    for module in model.modules():
        names, params = _FUSABLE.get(type(module).__name__, (None, None))
        if names is None:
            continue
        # Another transformers release may have changed the forward this one stands in for.
        if tuple(inspect.signature(type(module).forward).parameters)[: len(params)] != params:
            continue
        linears = [getattr(module, name, None) for name in names]
        if not all(type(x) is torch.nn.Linear for x in linears):
            continue
        if len({x.bias is None for x in linears}) > 1 or _still_fused(module, linears):
            continue
        # Not inference tensors, even under inference_mode: the model is used elsewhere too.
        with torch.inference_mode(False), torch.no_grad():
            weight = torch.cat([x.weight for x in linears])
            bias = None if linears[0].bias is None else torch.cat([x.bias for x in linears])
            sizes = [x.out_features for x in linears]
            for x, w in zip(linears, weight.split(sizes), strict=True):
                x.weight = torch.nn.Parameter(w, requires_grad=x.weight.requires_grad)
            if bias is not None:
                for x, b in zip(linears, bias.split(sizes), strict=True):
                    x.bias = torch.nn.Parameter(b, requires_grad=x.bias.requires_grad)
        module._pd_fused = (weight, bias, sizes)
        module._pd_silu = type(getattr(module, "act_fn", None)).__name__ in _SILU
        forward = _attention_forward if len(names) == 3 else _mlp_forward
        module.forward = types.MethodType(forward, module)
        fused += 1
    return fused


#: Activation classes that compute ``silu`` (transformers' own, and torch's).
_SILU = ("SiLUActivation", "SiLU")

#: Norm classes whose forward :func:`_patch_norms` replaces, with their forward's parameters.
_NORMS = {"LlamaRMSNorm": ("self", "hidden_states")}
#: Decoder layers whose forward it replaces too (their residual add after attention joins the
#: norm after it), with the parameters of the forward that :func:`_layer_forward` restates.
_LAYERS = {
    "LlamaDecoderLayer": (
        "self",
        "hidden_states",
        "attention_mask",
        "position_ids",
        "past_key_values",
        "use_cache",
        "position_embeddings",
        "kwargs",
    )
}


def _patch_norms(model: Any) -> int:
    """Let ``model``'s Llama RMSNorms run as one kernel (:func:`~productdesc.generation.
    fused_decode.rms_norm`) inside :func:`_fused_products` when a kernel module is given there;
    anywhere else, and for other dtypes or devices, their own forward runs.

    Without ``torch.compile`` transformers' RMSNorm is eight kernels, two norms a layer, and
    the residual add before the second one more: a Llama decoder layer whose second norm is
    patched runs the add and that norm as one kernel (:func:`_layer_forward`).

    Returns:
        How many norms and layers were patched (those patched before are not counted).
    """
    import inspect
    import types

    def patch(module: Any, kinds: dict, forward: Any) -> bool:
        params = kinds.get(type(module).__name__)
        if params is None or "forward" in vars(module):
            return False
        if tuple(inspect.signature(type(module).forward).parameters) != params:
            return False
        module.forward = types.MethodType(forward, module)
        return True

    patched = sum(patch(module, _NORMS, _norm_forward) for module in model.modules())
    for module in model.modules():
        # Only where the second norm runs this module's forward: another wrapper (an
        # offloading hook, say) must keep running.
        norm = getattr(module, "post_attention_layernorm", None)
        forward = vars(norm).get("forward") if norm is not None else None
        if getattr(forward, "__func__", None) is _norm_forward:
            patched += patch(module, _LAYERS, _layer_forward)
    return patched


def _norm_kernel(norm: Any, x: Any) -> Any:
    """The kernel module when it normalises ``x`` with ``norm`` in this call, else ``None``."""
    kernel = _attention_kernel
    if _elementwise(kernel, x) and norm.weight.dtype == x.dtype:
        return kernel
    return None


def _norm_forward(self: Any, hidden_states: Any) -> Any:
    kernel = _norm_kernel(self, hidden_states)
    if kernel is not None:
        return kernel.rms_norm(hidden_states, self.weight, self.variance_epsilon)
    return type(self).forward(self, hidden_states)


def _layer_forward(
    self: Any,
    hidden_states: Any,
    attention_mask: Any = None,
    position_ids: Any = None,
    past_key_values: Any = None,
    use_cache: Any = False,
    position_embeddings: Any = None,
    **kwargs: Any,
) -> Any:
    """``LlamaDecoderLayer.forward`` (transformers 5) with the residual add after attention and
    the norm after it as one kernel."""
    norm = self.post_attention_layernorm
    kernel = _norm_kernel(norm, hidden_states)
    if kernel is None:
        return type(self).forward(
            self, hidden_states, attention_mask, position_ids, past_key_values, use_cache,
            position_embeddings, **kwargs,
        )  # fmt: skip
    attended, _ = self.self_attn(
        hidden_states=self.input_layernorm(hidden_states),
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    residual, normed = kernel.add_rms_norm(
        attended, hidden_states, norm.weight, norm.variance_epsilon
    )
    return residual + self.mlp(normed)


def _elementwise(kernel: Any, x: Any) -> bool:
    """Whether ``kernel``'s element-wise functions serve ``x`` in this call: not while
    ``torch.compile`` traces it, whose own fusion (the residual add into the norm, too) an
    opaque kernel would stop."""
    import torch

    return (
        _fusion_on
        and kernel is not None
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and kernel.elementwise_supported(x.dtype, x.device)
    )


def _still_fused(module: Any, linears: list) -> bool:
    """Whether ``module`` was fused and every projection's weights still live in that tensor."""
    fused = vars(module).get("_pd_fused")
    if fused is None:
        return False
    storage = fused[0].untyped_storage().data_ptr()
    return all(
        x.weight.untyped_storage().data_ptr() == storage and x.weight.dtype == fused[0].dtype
        for x in linears
    )


_fusion_on = False
_attention_kernel: Any = None
# Held while the two globals above are set: compiled code reads them (dynamo guards on their
# values), so they cannot be per thread, and a second thread must not see or undo the first's.
_FUSION_LOCK = threading.RLock()


@contextlib.contextmanager
def _fused_products(kernel: Any = None) -> Iterator[None]:
    """Let fused layers use their one product, and ``kernel`` (:func:`_load_kernel`) for
    decode steps' attention where it applies (the decoder's calls only, one thread at a time)."""
    global _fusion_on, _attention_kernel
    with _FUSION_LOCK:
        previous = _fusion_on, _attention_kernel
        _fusion_on, _attention_kernel = True, kernel
        try:
            yield
        finally:
            _fusion_on, _attention_kernel = previous


def _load_kernel() -> Any:
    """:mod:`productdesc.generation.fused_decode`, or ``None`` where Triton cannot be imported."""
    try:
        from productdesc.generation import fused_decode
    except ImportError as exc:
        logger.info("fused decode attention off: %s", exc)
        return None
    return fused_decode


def _product(module: Any, x: Any) -> Any:
    """The fused group's one product for input ``x``, or ``None``: run the original forward."""
    import torch

    if not _fusion_on or torch.is_grad_enabled():
        return None
    weight, bias, _ = module._pd_fused
    return torch.nn.functional.linear(x, weight, bias)


def _mlp_forward(self: Any, x: Any) -> Any:
    out = _product(self, x)
    if out is None:
        return type(self).forward(self, x)
    if self._pd_silu and _elementwise(_attention_kernel, out):
        return self.down_proj(_attention_kernel.silu_mul(out))
    gate, up = out.split(self._pd_fused[2], dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def _decode_kernel(
    module: Any, hidden_states: Any, cos: Any, mask: Any, cache: Any, kwargs: dict
) -> Any:
    """:func:`productdesc.generation.fused_decode.decode_attention` when it computes this call's attention
    (a one-token step on a static cache, rotary embedding over the whole head, a boolean or no
    mask, a kernel for this device and dtype), else ``None``."""
    kernel = _attention_kernel
    if kernel is None:
        return None
    import torch

    # Not transformers' top-level lazy names: compiled code cannot trace their lookup.
    from transformers.cache_utils import StaticCache, StaticLayer

    if (
        hidden_states.shape[1] != 1
        or module.training
        or module.config._attn_implementation != ATTENTION
        or not isinstance(kwargs.get("cache_position"), torch.Tensor)
        or cos.shape[-1] != module.head_dim
        or not (mask is None or (mask.dtype == torch.bool and mask.shape[-2] == 1))
        or type(cache) is not StaticCache  # an offloading or quantized cache acts on update()
        or getattr(cache, "offloading", False)
        or type(cache.layers[module.layer_idx]) is not StaticLayer
        or not cache.layers[module.layer_idx].is_initialized
        or not kernel.supported(hidden_states.dtype, hidden_states.device, module.head_dim)
    ):
        return None
    return kernel.decode_attention


def _attention_forward(
    self: Any,
    hidden_states: Any,
    position_embeddings: Any = None,
    attention_mask: Any = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> Any:
    """``LlamaAttention.forward`` (transformers 5) with one q/k/v product."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    out = _product(self, hidden_states)
    if out is None:
        return type(self).forward(
            self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs
        )
    cos, sin = position_embeddings
    kernel = _decode_kernel(self, hidden_states, cos, attention_mask, past_key_values, kwargs)
    if kernel is not None:
        layer = past_key_values.layers[self.layer_idx]
        output = kernel(
            out.reshape(len(out), -1),
            cos,
            sin,
            layer.keys,
            layer.values,
            layer.cumulative_length,
            attention_mask,
            kwargs["cache_position"],
            self.config.num_attention_heads,
            self.scaling,
        )
        return self.o_proj(output.reshape(*hidden_states.shape[:-1], -1)), None
    modeling = sys.modules[type(self).__module__]
    hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    parts = out.split(self._pd_fused[2], dim=-1)
    query, key, value = (x.reshape(hidden_shape).transpose(1, 2) for x in parts)
    query, key = modeling.apply_rotary_pos_emb(query, key, cos, sin)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling.eager_attention_forward
    )
    dropout = self.attention_dropout if self.training else 0.0
    output, weights = attention(
        self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
    )
    output = output.reshape(*hidden_states.shape[:-1], -1).contiguous()
    return self.o_proj(output), weights
