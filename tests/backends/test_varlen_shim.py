"""The torch-2.11 varlen shim for Unsloth's packed attention (backends._varlen)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


def reference_varlen(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size):
    """torch 2.11's varlen_attn semantics on CPU: causal attention within each segment."""
    assert key.shape[1] == query.shape[1], "torch 2.11's kernel has no GQA"
    assert window_size == (-1, 0)
    out = torch.empty_like(query)
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        q, k, v = (x[start:end].transpose(0, 1) for x in (query, key, value))
        out[start:end] = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale
        ).transpose(0, 1)
    return out


def test_gqa_varlen_equals_per_example_attention_with_grouped_heads():
    from productdesc.backends._varlen import with_gqa

    torch.manual_seed(0)
    lengths = [5, 3, 7]
    tokens, heads, kv_heads, dim = sum(lengths), 8, 2, 16
    query = torch.randn(tokens, heads, dim)
    key, value = torch.randn(tokens, kv_heads, dim), torch.randn(tokens, kv_heads, dim)
    cu = torch.tensor([0, 5, 8, 15], dtype=torch.int32)
    got = with_gqa(reference_varlen)(
        query, key, value, cu, cu, 7, 7, scale=0.3, window_size=(-1, 0), enable_gqa=True
    )
    # What the per-segment SDPA path computes: each example alone, grouped-query attention.
    start = 0
    for n in lengths:
        q, k, v = (x[start : start + n].transpose(0, 1) for x in (query, key, value))
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
        torch.testing.assert_close(got[start : start + n], want.transpose(0, 1))
        start += n


def test_gqa_without_enable_gqa_is_refused():
    from productdesc.backends._varlen import with_gqa

    q, kv = torch.zeros(4, 4, 8), torch.zeros(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="enable_gqa"):
        with_gqa(reference_varlen)(q, kv, kv, cu, cu, 4, 4, window_size=(-1, 0))


def test_install_leaves_a_cpu_machine_alone():
    from productdesc.backends import _varlen

    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    assert _varlen.install() is False
