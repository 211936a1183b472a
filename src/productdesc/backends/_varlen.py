"""Packed attention in one kernel a layer under Unsloth on torch 2.11.

Unsloth (2026.10) attends over packed rows with torch's varlen flash kernel only where
``torch.nn.attention.varlen.varlen_attn`` takes ``enable_gqa``, which came in torch 2.12. On
torch 2.11 it falls back to one SDPA call per run of equal-length examples: about 40 calls a
layer for a packed row of 2,048 tokens, each a few microseconds of GPU work behind a few hundred
of Python. Profiled on an H200, that left the GPU idle 77% of a TinyLlama-1.1B step.

:func:`install` hands Unsloth a ``varlen_attn`` that takes ``enable_gqa`` by repeating each KV
head for its query heads, the layout the SDPA path itself uses (``repeat_interleave`` on the
head axis). The repeated K and V of a micro-batch (16k tokens × 32 heads × 64 × 2 bytes, 64 MB
each) are kept for the backward pass: about 2.8 GB over TinyLlama's 22 layers, within what
the packed step measured (21.4 GB peak with the fix, 21.8 GB without). Nothing changes on
torch 2.12 and later, without CUDA, where Unsloth already found a varlen kernel, or where the
user turned it off (``UNSLOTH_TORCH_VARLEN=0``).
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def with_gqa(varlen_attn: Any) -> Any:
    """``varlen_attn`` with torch 2.12's ``enable_gqa``: K/V heads repeated to Q's count.

    Tensors are ``(tokens, heads, head_dim)``, as ``varlen_attn`` takes them.
    """

    def varlen_attn_gqa(
        query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, enable_gqa=False, **kwargs
    ):
        groups = query.shape[1] // key.shape[1]
        if groups != 1:
            if not enable_gqa:
                raise ValueError(
                    f"query has {query.shape[1]} heads and key {key.shape[1]}: pass enable_gqa"
                )
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **kwargs)

    return varlen_attn_gqa


def install() -> bool:
    """Give Unsloth's packed attention a GQA-capable ``varlen_attn``; ``True`` if it was needed.

    Call after ``import unsloth``.
    """
    import torch

    if os.environ.get("UNSLOTH_TORCH_VARLEN", "1").lower() in ("0", "false", "no", "off"):
        return False  # the user's choice, which Unsloth honours the same way
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn
        from unsloth.utils import attention_dispatch
    except ImportError:
        return False
    if getattr(attention_dispatch, "_TORCH_VARLEN_ATTN", "absent") is not None:
        return False  # Unsloth found one itself (torch >= 2.12), or its internals have moved on
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params or "enable_gqa" in params:
        return False
    if not torch.backends.cuda.is_flash_attention_available():
        return False
    attention_dispatch._TORCH_VARLEN_ATTN = with_gqa(varlen_attn)
    logger.info(
        "torch %s: Unsloth's packed attention uses torch's varlen kernel (KV heads repeated for "
        "GQA) instead of one SDPA call per example length",
        torch.__version__,
    )
    return True
