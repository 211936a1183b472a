"""Kernel times of one batch-64 decode step's parts, TinyLlama-1.1B shapes, bf16, on CUDA.

Run on the GPU machine (no model, no downloads)::

    python benchmarks/decode_kernels.py

Each part runs for 22 layers' worth of distinct tensors (so the weights do not sit in L2),
recorded as one CUDA graph and replayed; the time is per layer. Attention: a one-token query
of 32 heads against a 4-head KV cache of 320 positions, through SDPA's forms and backends and
as three kernels. GEMMs: the decode step's four products at 64 rows through ``F.linear``, the
transposed product, cuBLAS with reduced-precision reductions, and Triton kernels autotuned by
inductor. It answers whether a different kernel would make the decode step faster.
"""

import torch
import torch.nn.functional as F
from _harness import graph_us
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, KV, L, D = 64, 32, 4, 320, 64
LAYERS = 22
dev, bf = "cuda", torch.bfloat16


def bench(name, fn, reps=10):
    """Record ``fn`` (all layers) as a CUDA graph, replay it; print microseconds per layer."""
    us = graph_us(fn, reps) / LAYERS
    print(f"{name:50s} {us:7.2f} us/layer", flush=True)
    return us


def main():
    torch.manual_seed(0)
    q = [torch.randn(B, H, 1, D, device=dev, dtype=bf) for _ in range(LAYERS)]
    k = [torch.randn(B, KV, L, D, device=dev, dtype=bf) for _ in range(LAYERS)]
    v = [torch.randn(B, KV, L, D, device=dev, dtype=bf) for _ in range(LAYERS)]
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool, device=dev)
    mask[:, :, :, 250:] = False
    mask[::3, :, :, :20] = False
    addm = torch.zeros(B, 1, 1, L, device=dev, dtype=bf).masked_fill(~mask, float("-inf"))
    out = [None] * LAYERS
    ref = F.scaled_dot_product_attention(q[0], k[0], v[0], attn_mask=mask, enable_gqa=True)

    def att(f):
        def run():
            for i in range(LAYERS):
                out[i] = f(q[i], k[i], v[i])

        return run

    def gqa_bool(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    def gqa_add(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=addm, enable_gqa=True)

    def grouped(q, k, v):
        grouped_q = q.view(B, KV, H // KV, D)
        return F.scaled_dot_product_attention(grouped_q, k, v, attn_mask=mask).view(B, H, 1, D)

    def grouped_add(q, k, v):
        grouped_q = q.view(B, KV, H // KV, D)
        return F.scaled_dot_product_attention(grouped_q, k, v, attn_mask=addm).view(B, H, 1, D)

    def math3(q, k, v):
        s = torch.matmul(q.view(B, KV, H // KV, D), k.transpose(-1, -2)) * D**-0.5
        s = s + addm
        return torch.matmul(torch.softmax(s.float(), -1).to(bf), v).view(B, H, 1, D)

    for name, f in [
        ("sdpa gqa bool (current)", gqa_bool),
        ("sdpa gqa additive", gqa_add),
        ("sdpa grouped bool", grouped),
        ("sdpa grouped additive", grouped_add),
        ("3 kernels grouped", math3),
    ]:
        try:
            bench(name, att(f))
            print("   maxdiff", (f(q[0], k[0], v[0]) - ref).abs().max().item())
        except Exception as e:
            print(name, "failed", type(e).__name__, str(e)[:200])
    for be in (
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
    ):
        for name, f in [
            ("gqa bool", gqa_bool),
            ("grouped bool", grouped),
            ("grouped additive", grouped_add),
        ]:
            try:
                with sdpa_kernel([be]):
                    bench(f"{be.name} {name}", att(f))
            except Exception as e:
                print(be.name, name, "failed", type(e).__name__, str(e)[:150])
    try:
        bench("compiled grouped additive", att(torch.compile(grouped_add, fullgraph=True)))
        bench("compiled 3 kernels", att(torch.compile(math3, fullgraph=True)))
    except Exception as e:
        print("compile failed", e)

    # x (64, K) @ W (N, K)^T, as the step's q/k/v, o, gate/up and down products.
    shapes = {
        "qkv": (2048, 2560),
        "o": (2048, 2048),
        "gate_up": (2048, 11264),
        "down": (5632, 2048),
    }
    for nm, (K, N) in shapes.items():
        time_gemms(nm, K, N)


def time_gemms(nm, K, N):
    import torch._inductor.config as ic

    W = [torch.randn(N, K, device=dev, dtype=bf) for _ in range(LAYERS)]
    x = torch.randn(B, K, device=dev, dtype=bf)
    y = [None] * LAYERS

    def lin():
        for i in range(LAYERS):
            y[i] = F.linear(x, W[i])

    def lint():
        for i in range(LAYERS):
            y[i] = (W[i] @ x.t()).t()

    def report(name, fn):
        us = bench(f"gemm {nm} {name}", fn)
        print(f"   {N * K * 2 / us / 1e6:.2f} TB/s")

    report("linear", lin)
    report("W@x.T", lint)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    report("linear reduced-prec", lin)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    try:
        ic.max_autotune_gemm_backends = "TRITON"
        cl = torch.compile(
            lambda a, b: F.linear(a, b), mode="max-autotune-no-cudagraphs", dynamic=False
        )

        def lintr():
            for i in range(LAYERS):
                y[i] = cl(x, W[i])

        report("triton autotune", lintr)
    except Exception as e:
        print("triton failed", str(e)[:200])


if __name__ == "__main__":
    main()
