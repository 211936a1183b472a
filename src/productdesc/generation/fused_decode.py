"""One Triton kernel for a decode step's attention: rotary embedding, KV-cache write, attention.

In a compiled decode step at batch 64 on an H200, a Llama layer's attention was five kernels
after the q/k/v product: the rotary embedding, two cache writes (transformers'
``StaticLayer.update``: keys and values at its counter, and the counter itself), the mask's
preparation and cuDNN's attention. :func:`decode_attention` does all of it in one, reading the
cache only up to the step's own position (a static cache is sized for the longest answer).

It is used by :class:`~productdesc.generation.static_decoder.StaticGreedyDecoder` for one-token steps in 16-bit
on CUDA (:func:`supported`); everything else takes transformers' own path, which
:func:`reference` restates for the tests.

Beside it, element-wise kernels for the rest of a layer, which without ``torch.compile``
(the fast path's default, CUDA graphs of the eager step) are many small kernels:
:func:`rms_norm` (Llama's RMSNorm: eight kernels in transformers' forward), :func:`add_rms_norm`
(the residual add after attention and the norm after it: nine) and :func:`silu_mul` (the MLP's
``silu(gate) * up`` on the fused gate/up product: two). They round where transformers'
forwards round, so their outputs differ from them only by the order of a sum.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

__all__ = [
    "add_rms_norm",
    "decode_attention",
    "elementwise_supported",
    "reference",
    "rms_norm",
    "silu_mul",
    "supported",
]

# Triton's interpreter runs kernels on CPU tensors (the CI's tests of this module).
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _rope(x, x_rotated, c, s, sign):
    """The rotary embedding in float32: ``x * cos + rotate_half(x) * sin``."""
    return x.to(tl.float32) * c + sign * x_rotated.to(tl.float32) * s


@triton.jit
def _attend(
    q, k, v, head_keys, head_values, mask_row, stride_mask_l, stride_cache_l, pos,
    SCALE: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_MASK: tl.constexpr,
):  # fmt: skip
    """Online softmax of a group's queries over one head's cache up to ``pos``. The token's
    own key and value are taken from registers, not read back from the cache just written."""
    d = tl.arange(0, D)
    best = tl.full([GROUP_PAD], -1.0e30, tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D], tl.float32)
    for start in range(0, pos + 1, BLOCK_L):
        at = start + tl.arange(0, BLOCK_L)
        before = at < pos
        here = (at == pos)[:, None]
        keys = tl.load(
            head_keys + at[:, None] * stride_cache_l + d[None, :], mask=before[:, None], other=0.0
        )
        keys = tl.where(here, k[None, :], keys)
        values = tl.load(
            head_values + at[:, None] * stride_cache_l + d[None, :], mask=before[:, None], other=0.0
        )
        values = tl.where(here, v[None, :], values)
        seen = at <= pos
        if HAS_MASK:
            seen = seen & tl.load(mask_row + at * stride_mask_l, mask=seen, other=0)
        scores = tl.dot(q, tl.trans(keys)) * SCALE
        scores = tl.where(seen[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, 1))
        weights = tl.exp(scores - new_best[:, None])
        shrink = tl.exp(best - new_best)
        total = total * shrink + tl.sum(weights, 1)
        acc = acc * shrink[:, None] + tl.dot(weights.to(q.dtype), values)
        best = new_best
    return acc / total[:, None]


@triton.jit
def _kernel(
    qkv,  # (B, (H + 2 * H_KV) * D): one token's fused q/k/v product
    cos, sin,  # (B, D), the token's rotary cos and sin
    key_cache, value_cache,  # (B, H_KV, L, D)
    counter,  # the cache layer's write counter, advanced by one
    mask,  # (B, L) by its strides: True where a position may be attended to
    position,  # (1,): the cache position this token is written at
    out,  # (B, H * D)
    stride_qkv, stride_rope, stride_cache_b, stride_cache_h, stride_cache_l,
    stride_mask_b, stride_mask_l, stride_out,
    SCALE: tl.constexpr,  # a Python float would be typed float64 under torch.compile
    H_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
    BLOCK_L: tl.constexpr, HAS_MASK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    pos = tl.load(position)
    d = tl.arange(0, D)
    # rotate_half: the second half of a head, negated, then the first.
    rotated = (d + D // 2) % D
    sign = tl.where(d < D // 2, -1.0, 1.0)
    c = tl.load(cos + b * stride_rope + d).to(tl.float32)
    s = tl.load(sin + b * stride_rope + d).to(tl.float32)
    row = qkv + b * stride_qkv
    dtype = qkv.dtype.element_ty

    g = tl.arange(0, GROUP_PAD)
    heads = (kv_head * GROUP + g)[:, None] * D
    real = (g < GROUP)[:, None]
    q = tl.load(row + heads + d[None, :], mask=real, other=0.0)
    q_rotated = tl.load(row + heads + rotated[None, :], mask=real, other=0.0)
    q = _rope(q, q_rotated, c[None, :], s[None, :], sign[None, :]).to(dtype)
    k_at = row + (H_KV * GROUP + kv_head) * D
    k = _rope(tl.load(k_at + d), tl.load(k_at + rotated), c, s, sign).to(dtype)
    v = tl.load(row + (H_KV * GROUP + H_KV + kv_head) * D + d)

    head_keys = key_cache + b * stride_cache_b + kv_head * stride_cache_h
    head_values = value_cache + b * stride_cache_b + kv_head * stride_cache_h
    tl.store(head_keys + pos * stride_cache_l + d, k)
    tl.store(head_values + pos * stride_cache_l + d, v)
    if b == 0 and kv_head == 0:
        tl.store(counter, tl.load(counter) + 1)
    acc = _attend(
        q, k, v, head_keys, head_values, mask + b * stride_mask_b, stride_mask_l,
        stride_cache_l, pos, SCALE, GROUP_PAD, D, BLOCK_L, HAS_MASK,
    )  # fmt: skip
    tl.store(out + b * stride_out + heads + d[None, :], acc.to(dtype), mask=real)


def supported(query_dtype: torch.dtype, device: torch.device, head_dim: int) -> bool:
    """Whether :func:`decode_attention` serves this case: CUDA, 16-bit, a power-of-two head size
    from 16 to 256 (or, under Triton's interpreter, a CPU tensor in float32 or float16)."""
    if not (16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0):
        return False
    if _INTERPRET:  # whose bfloat16 arithmetic is not faithful
        return device.type == "cpu" and query_dtype in (torch.float32, torch.float16)
    return device.type == "cuda" and query_dtype in (torch.float16, torch.bfloat16)


@triton_op("productdesc::decode_attention", mutates_args={"key_cache", "value_cache", "counter"})
def _op(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    counter: torch.Tensor,
    mask: torch.Tensor | None,
    position: torch.Tensor,
    heads: int,
    scale: float,
    block_l: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    """The kernel as a torch operator that ``torch.compile`` sees into."""
    batch, kv_heads, _, dim = key_cache.shape
    group = heads // kv_heads
    out = qkv.new_empty(batch, heads * dim)
    has_mask = mask is not None
    wrap_triton(_kernel)[(batch, kv_heads)](
        qkv,
        cos,
        sin,
        key_cache,
        value_cache,
        counter,
        mask if has_mask else position,
        position,
        out,
        qkv.stride(0),
        cos.stride(0),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        mask.stride(0) if has_mask else 0,
        mask.stride(-1) if has_mask else 0,
        out.stride(0),
        SCALE=scale,
        H_KV=kv_heads,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        D=dim,
        BLOCK_L=block_l,
        HAS_MASK=has_mask,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def decode_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    counter: torch.Tensor,
    mask: torch.Tensor | None,
    position: torch.Tensor,
    heads: int,
    scale: float,
    *,
    block_l: int | None = None,
    num_warps: int = 4,
    num_stages: int = 1,
) -> torch.Tensor:
    """One token's attention output ``(B, heads * D)``, its key and value written to the cache.

    Each head must be contiguous (last stride 1) in ``qkv``, ``cos``, ``sin`` and the caches,
    and the two caches laid out alike, as transformers' ``StaticLayer`` allocates them: the
    kernel steps through a head one element at a time and reads both caches with the keys'
    strides. (Not checked here: the check would run inside the decoder's compiled step.)

    Args:
        qkv: ``(B, (heads + 2 * H_KV) * D)``: the token's q, k and v products side by side.
        cos, sin: ``(B or 1, [1,] D)`` rotary factors for the token (transformers'
            ``rotate_half`` form).
        key_cache, value_cache: ``(B, H_KV, L, D)``; the token's rotated key and its value are
            written at ``position``.
        counter: The cache layer's count of written positions, advanced by one.
        mask: ``(B, 1, 1, L)`` or ``(B, L)`` booleans (True: attend), or ``None``.
        position: ``(1,)`` int64, the token's cache position; positions after it are not read.
        heads: Query heads (a multiple of ``H_KV``).
        scale: Factor on the scores (``head_dim ** -0.5`` for Llama).
        block_l, num_warps, num_stages: Triton launch settings. The defaults were the fastest
            of 36 tried at batch 1 and 64 on an H200 for a head size of 64
            (``benchmarks/decode_attention.py``): 256 cache positions a block, fewer for larger
            heads so that a block's keys stay the same size (16384 elements).
    """
    batch, dim = qkv.shape[0], key_cache.shape[-1]
    if block_l is None:
        block_l = max(16, min(256, 16384 // dim))
    if mask is not None:  # (B or 1, [1, 1,] L) -> (B, L)
        mask = mask.reshape(-1, mask.shape[-1]).expand(batch, -1)
    return _op(
        qkv,
        cos.reshape(-1, dim).expand(batch, -1),
        sin.reshape(-1, dim).expand(batch, -1),
        key_cache,
        value_cache,
        counter,
        mask,
        position,
        heads,
        scale,
        block_l,
        num_warps,
        num_stages,
    )


def reference(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    counter: torch.Tensor,
    mask: torch.Tensor | None,
    position: torch.Tensor,
    heads: int,
    scale: float,
) -> torch.Tensor:
    """What :func:`decode_attention` computes, in torch operations (float32 arithmetic)."""
    batch, kv_heads, length, dim = key_cache.shape
    q, k, v = qkv.float().split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    c, s = cos.reshape(-1, 1, dim).float(), sin.reshape(-1, 1, dim).float()

    def rope(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(batch, -1, dim)
        half = torch.cat([-x[..., dim // 2 :], x[..., : dim // 2]], dim=-1)
        return (x * c + half * s).to(qkv.dtype)

    q, k = rope(q), rope(k)
    key_cache.index_copy_(2, position, k[:, :, None])
    value_cache.index_copy_(2, position, v.reshape(batch, kv_heads, 1, dim).to(qkv.dtype))
    counter.add_(1)
    seen = (torch.arange(length, device=qkv.device) <= position).expand(batch, length)
    if mask is not None:
        seen = seen & mask.reshape(-1, length)
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    scores = grouped @ key_cache.float().transpose(-1, -2) * scale
    scores = scores.masked_fill(~seen[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ value_cache.float()
    return out.reshape(batch, heads * dim).to(qkv.dtype)


# -- the element-wise kernels -------------------------------------------------------------------
@triton.jit
def _rms_normed(v, weight, cols, inside, N, EPS: tl.constexpr, dtype: tl.constexpr):
    """``weight * (v / rms(v))`` for one row ``v`` in float32, rounded where transformers rounds:
    the normalised row to the input's dtype before the product."""
    normed = (v * (1.0 / tl.sqrt(tl.sum(v * v, 0) / N + EPS))).to(dtype)
    w = tl.load(weight + cols, mask=inside, other=0.0).to(tl.float32)
    return (w * normed.to(tl.float32)).to(dtype)


@triton.jit
def _rms_norm_kernel(
    x, weight, out, stride_x, stride_out, N, EPS: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < N
    dtype = out.dtype.element_ty
    v = tl.load(x + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(out + row * stride_out + cols, _rms_normed(v, weight, cols, inside, N, EPS, dtype),
             mask=inside)  # fmt: skip


@triton.jit
def _add_rms_norm_kernel(
    x, residual, weight, total, out, stride_x, stride_residual, stride_total, stride_out, N,
    EPS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < N
    dtype = out.dtype.element_ty
    a = tl.load(x + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
    r = tl.load(residual + row * stride_residual + cols, mask=inside, other=0.0).to(tl.float32)
    h = (a + r).to(dtype)  # the sum rounds to the inputs' dtype, as torch's add does
    tl.store(total + row * stride_total + cols, h, mask=inside)
    tl.store(out + row * stride_out + cols,
             _rms_normed(h.to(tl.float32), weight, cols, inside, N, EPS, dtype), mask=inside)  # fmt: skip


@triton.jit
def _silu_mul_kernel(gate_up, out, stride_in, stride_out, N, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < N
    dtype = out.dtype.element_ty
    gate = tl.load(gate_up + row * stride_in + cols, mask=inside, other=0.0).to(tl.float32)
    up = tl.load(gate_up + row * stride_in + N + cols, mask=inside, other=0.0).to(tl.float32)
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype)  # silu rounds to the input's dtype
    tl.store(out + row * stride_out + cols, (activated.to(tl.float32) * up).to(dtype), mask=inside)


def elementwise_supported(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :func:`rms_norm` and :func:`silu_mul` serve tensors of this dtype and device:
    CUDA in 16-bit (or, under Triton's interpreter, CPU in float32 or float16)."""
    if _INTERPRET:
        return device.type == "cpu" and dtype in (torch.float32, torch.float16)
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


@triton_op("productdesc::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    n = rows.shape[-1]
    wrap_triton(_rms_norm_kernel)[(len(rows),)](
        rows, weight, out, rows.stride(0), out.stride(0), n, EPS=eps,
        BLOCK=triton.next_power_of_2(n),
    )  # fmt: skip
    return out.reshape(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``'s forward in one kernel: ``weight * (x / rms(x))``, the mean of squares
    in float32 and the normalised ``x`` rounded to ``x``'s dtype before the product, as
    transformers does. ``x``'s last dimension must be contiguous, ``weight`` of ``x``'s dtype."""
    return _rms_norm_op(_rows(x), weight, eps)


@triton_op("productdesc::add_rms_norm", mutates_args=())
def _add_rms_norm_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.reshape(-1, x.shape[-1])
    residual_rows = residual.reshape(-1, x.shape[-1])
    total, out = torch.empty_like(rows), torch.empty_like(rows)
    n = rows.shape[-1]
    wrap_triton(_add_rms_norm_kernel)[(len(rows),)](
        rows, residual_rows, weight, total, out, rows.stride(0), residual_rows.stride(0),
        total.stride(0), out.stride(0), n, EPS=eps, BLOCK=triton.next_power_of_2(n),
    )  # fmt: skip
    return total.reshape(x.shape), out.reshape(x.shape)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = residual + x`` and :func:`rms_norm` of ``h``, in one kernel: a Llama layer's
    residual add after attention and the norm before its MLP. Returns ``(h, norm(h))``, ``h``
    rounded to ``x``'s dtype before it is normalised, as in transformers' two steps."""
    return _add_rms_norm_op(_rows(x), _rows(residual), weight, eps)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@triton_op("productdesc::silu_mul", mutates_args=())
def _silu_mul_op(gate_up: torch.Tensor) -> torch.Tensor:
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    n = rows.shape[-1] // 2
    out = rows.new_empty(len(rows), n)
    block = min(1024, triton.next_power_of_2(n))
    wrap_triton(_silu_mul_kernel)[(len(rows), triton.cdiv(n, block))](
        rows, out, rows.stride(0), out.stride(0), n, BLOCK=block
    )
    return out.reshape(*gate_up.shape[:-1], n)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up``, the gate and up products side by side in its last
    dimension (contiguous), in one kernel; each rounds to the input's dtype as in torch."""
    return _silu_mul_op(_rows(gate_up))
