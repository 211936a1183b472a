"""The fused decode-step attention kernel against the path it replaces, on a CUDA machine.

    python benchmarks/decode_attention.py > benchmarks/results/decode_attention.txt

TinyLlama's attention shape (32 query heads, 4 KV heads, head size 64), a static cache of 320
positions, the token at position 250, batch 1 and 64, random 16-bit inputs and a padding mask.
For each batch size it prints:

- the largest difference of the kernel's output and written cache from
  :func:`productdesc.generation.fused_decode.reference` (float32 arithmetic), next to the same for the
  replaced path;
- microseconds per layer, 22 layers recorded as one CUDA graph and replayed, for the replaced
  path (compiled: rotary embedding, cache writes and counter as ``StaticLayer.update`` does
  them, SDPA with ``enable_gqa``), the kernel compiled the same way, and the kernel alone
  under each launch setting tried.
"""

from __future__ import annotations

import itertools
import sys

from _harness import graph_us

LAYERS, HEADS, KV_HEADS, LENGTH, DIM, POSITION = 22, 32, 4, 320, 64, 250


def per_layer_us(fn) -> float:
    """Microseconds per layer of ``fn`` (all layers), recorded as one CUDA graph."""
    return graph_us(fn, reps=20) / LAYERS


def case(batch, dtype, compiled_replaced, compiled_fused) -> None:
    """Differences and timings at one batch size and dtype."""
    import torch

    from productdesc.generation.fused_decode import _op, reference

    dev, scale = "cuda", DIM**-0.5
    qkv = [
        torch.randn(batch, (HEADS + 2 * KV_HEADS) * DIM, device=dev, dtype=dtype)
        for _ in range(LAYERS)
    ]
    angle = torch.randn(batch, 1, DIM // 2, device=dev).repeat(1, 1, 2)
    cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
    keys = [torch.randn(batch, KV_HEADS, LENGTH, DIM, device=dev, dtype=dtype) for _ in qkv]
    values = [torch.randn_like(k) for k in keys]
    counter = torch.zeros((), dtype=torch.long, device=dev)
    mask = torch.ones(batch, 1, 1, LENGTH, dtype=torch.bool, device=dev)
    mask[..., POSITION + 1 :] = False
    mask[::3, ..., :40] = False  # left padding in a third of the rows
    position = torch.tensor([POSITION], device=dev)
    print(f"\nbatch {batch}, {dtype}", flush=True)

    def error(fn) -> str:
        k, v = keys[0].clone(), values[0].clone()
        out = fn(qkv[0], cos, sin, k, v, counter, mask, position)
        rk, rv = keys[0].clone(), values[0].clone()
        ref = reference(qkv[0], cos, sin, rk, rv, counter, mask, position, HEADS, scale)
        return (
            f"out {(out.float() - ref.float()).abs().max().item():.2e}, "
            f"keys {(k.float() - rk.float()).abs().max().item():.2e}, "
            f"values {(v.float() - rv.float()).abs().max().item():.2e}"
        )

    print("  max difference from reference, replaced path:", error(compiled_replaced))
    print("  max difference from reference, kernel:       ", error(compiled_fused))

    def over_layers(fn):
        def run() -> None:
            for i in range(LAYERS):
                fn(qkv[i], cos, sin, keys[i], values[i], counter, mask, position)

        return run

    for name, fn in (
        ("replaced path, compiled", compiled_replaced),
        ("kernel, compiled", compiled_fused),
    ):
        print(f"  {name:40s} {per_layer_us(over_layers(fn)):7.2f} us/layer", flush=True)
    flat_cos, flat_sin, flat_mask = (
        cos.reshape(batch, -1),
        sin.reshape(batch, -1),
        mask.reshape(batch, -1),
    )
    for block, warps, stages in itertools.product((32, 64, 128, 256), (2, 4, 8), (1, 2, 3)):

        def alone(q, c, s, k, v, n, m, p, block=block, warps=warps, stages=stages):
            return _op(
                q, flat_cos, flat_sin, k, v, n, flat_mask, p, HEADS, scale, block, warps, stages
            )

        try:
            us = per_layer_us(over_layers(alone))
        except Exception as exc:  # a setting the card cannot run: say so, try the next
            print(
                f"  block {block} warps {warps} stages {stages}: {type(exc).__name__} {exc}"[:200]
            )
            continue
        print(
            f"  kernel block {block:3d} warps {warps} stages {stages}  {us:7.2f} us/layer",
            flush=True,
        )


def main() -> int:
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from productdesc.generation.fused_decode import decode_attention

    torch.manual_seed(0)
    scale = DIM**-0.5
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)

    def replaced(qkv, cos, sin, keys, values, counter, mask, position):
        batch = qkv.shape[0]
        q, k, v = qkv.view(batch, 1, -1).split(
            [HEADS * DIM, KV_HEADS * DIM, KV_HEADS * DIM], dim=-1
        )
        q, k, v = (x.view(batch, 1, -1, DIM).transpose(1, 2) for x in (q, k, v))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        counter.add_(1)
        keys.index_copy_(2, position, k)
        values.index_copy_(2, position, v)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True
        )
        return out.transpose(1, 2).reshape(batch, -1)

    def fused(qkv, cos, sin, keys, values, counter, mask, position):
        return decode_attention(qkv, cos, sin, keys, values, counter, mask, position, HEADS, scale)

    compiled_replaced = torch.compile(replaced, fullgraph=True)
    compiled_fused = torch.compile(fused, fullgraph=True)
    for batch, dtype in ((1, torch.bfloat16), (64, torch.bfloat16), (64, torch.float16)):
        case(batch, dtype, compiled_replaced, compiled_fused)
    return 0


if __name__ == "__main__":
    sys.exit(main())
