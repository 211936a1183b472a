"""The fused decode-step attention kernel: against its torch statement, and inside the decoder
against ``generate``.

Its Triton code runs on CPU tensors under Triton's interpreter: ``nox -s kernels`` sets
``TRITON_INTERPRET=1`` and installs Triton, which the main test session cannot have beside
Unsloth on a CPU machine. On a CUDA machine the same tests run the compiled kernel.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (nox -s kernels runs these tests)")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "the Triton kernel needs a GPU or TRITON_INTERPRET=1 (nox -s kernels)",
        allow_module_level=True,
    )

from productdesc.generation import fused_decode  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
# The interpreter's bfloat16 is not faithful (it gave nonsense for correct code): float16 and
# float32 there, the 16-bit types on a GPU.
DTYPES = [torch.float32, torch.float16] if INTERPRET else [torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def inputs(batch, heads, kv_heads, length, dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(DEVICE, dtype)

    angle = torch.randn(batch, 1, dim // 2, generator=generator).repeat(1, 1, 2)
    return dict(
        qkv=randn(batch, (heads + 2 * kv_heads) * dim),
        cos=angle.cos().to(DEVICE, dtype),
        sin=angle.sin().to(DEVICE, dtype),
        key_cache=randn(batch, kv_heads, length, dim),
        value_cache=randn(batch, kv_heads, length, dim),
        counter=torch.tensor(7, device=DEVICE),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim"), [(8, 2, 16), (4, 4, 32), (32, 4, 64)], ids=["gqa", "mha", "tl"]
)
@pytest.mark.parametrize("position", [0, 37, 99])
@pytest.mark.parametrize("mask_kind", ["padding", "broadcast", "none"])
@pytest.mark.parametrize("block_l", [16, 256])
def test_kernel_matches_its_torch_statement(
    dtype, heads, kv_heads, dim, position, mask_kind, block_l
):
    """Output, the written key and value, the counter; cache positions other than the token's
    are left alone, and positions after it are not attended to (they hold noise here)."""
    batch, length = 3, 100
    args = inputs(batch, heads, kv_heads, length, dim, dtype)
    mask = {
        "padding": torch.rand(batch, 1, 1, length, generator=torch.Generator().manual_seed(1))
        > 0.4,
        "broadcast": torch.ones(1, 1, 1, length, dtype=torch.bool),
        "none": None,
    }[mask_kind]
    if mask is not None:
        mask[..., position] = True
        mask = mask.to(DEVICE)
    where = torch.tensor([position], device=DEVICE)
    ref_args = {k: v.clone() for k, v in args.items()}
    scale = dim**-0.5
    ref = fused_decode.reference(**ref_args, mask=mask, position=where, heads=heads, scale=scale)
    before = {k: v.clone() for k, v in args.items()}
    out = fused_decode.decode_attention(
        **args, mask=mask, position=where, heads=heads, scale=scale, block_l=block_l
    )
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tolerance, rtol=tolerance)
    for name in ("key_cache", "value_cache"):
        torch.testing.assert_close(args[name], ref_args[name], atol=tolerance, rtol=0)
        others = torch.arange(length, device=DEVICE) != position
        assert torch.equal(args[name][:, :, others], before[name][:, :, others])
    assert args["counter"].item() == 8


def test_rotary_factors_of_one_row_serve_the_batch():
    """transformers gives ``cos``/``sin`` of one row when no position ids were passed."""
    heads, kv_heads, dim = 4, 2, 16
    args = inputs(3, heads, kv_heads, 20, dim, DTYPES[0])
    args["cos"], args["sin"] = args["cos"][:1], args["sin"][:1]
    expanded = {k: v.clone() for k, v in args.items()}
    expanded["cos"], expanded["sin"] = args["cos"].expand(3, 1, dim), args["sin"].expand(3, 1, dim)
    where = torch.tensor([9], device=DEVICE)
    out = fused_decode.decode_attention(**args, mask=None, position=where, heads=heads, scale=0.25)
    ref = fused_decode.reference(**expanded, mask=None, position=where, heads=heads, scale=0.25)
    tolerance = TOLERANCE[DTYPES[0]]
    torch.testing.assert_close(out.float(), ref.float(), atol=tolerance, rtol=tolerance)


def test_unsupported_cases_are_refused():
    """A head size that is no power of two, or outside 16..256, and on the wrong device."""
    dtype, device = DTYPES[0], torch.device(DEVICE)
    assert fused_decode.supported(dtype, device, 64)
    for dim in (8, 24, 80, 512):
        assert not fused_decode.supported(dtype, device, dim)
    other = torch.device("cuda" if INTERPRET else "cpu")
    assert not fused_decode.supported(dtype, other, 64)


def test_the_token_attends_to_itself_even_where_the_cache_held_other_values():
    """The token's own key comes from the product, not from a stale cache row: with every
    earlier position masked, the output is the token's value for every query head."""
    heads, kv_heads, dim = 4, 2, 16
    args = inputs(1, heads, kv_heads, 10, dim, DTYPES[-1])
    mask = torch.zeros(1, 1, 1, 10, dtype=torch.bool, device=DEVICE)
    mask[..., 5] = True
    out = fused_decode.decode_attention(
        **args, mask=mask, position=torch.tensor([5], device=DEVICE), heads=heads, scale=0.25
    )
    value = args["qkv"][:, (heads + kv_heads) * dim :].reshape(kv_heads, 1, dim)
    expected = value.expand(kv_heads, heads // kv_heads, dim).reshape(1, -1)
    torch.testing.assert_close(out, expected)


def llama_norm(hidden, eps, dtype, generator):
    """transformers' ``LlamaRMSNorm`` with a weight that is not all ones."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(hidden, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(hidden, generator=generator) / 4)
    return norm.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [16, 576, 2048])  # 576: SmolLM2's, no power of two
def test_rms_norm_is_llamas(dtype, hidden):
    generator = torch.Generator().manual_seed(hidden)
    norm = llama_norm(hidden, 1e-5, dtype, generator)
    x = (3 * torch.randn(3, 2, hidden, generator=generator)).to(DEVICE, dtype)
    with torch.no_grad():
        expected = norm(x)
    got = fused_decode.rms_norm(x, norm.weight, norm.variance_epsilon)
    assert got.shape == x.shape and got.dtype == dtype
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
    # a row's layout does not matter: the same rows, not contiguous in memory
    wide = torch.cat([x, x], dim=-1)[..., :hidden]
    torch.testing.assert_close(fused_decode.rms_norm(wide, norm.weight, 1e-5), got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [16, 576])
def test_add_rms_norm_is_the_layers_add_then_its_norm(dtype, hidden):
    generator = torch.Generator().manual_seed(hidden)
    norm = llama_norm(hidden, 1e-6, dtype, generator)
    attended, residual = (torch.randn(2, 3, 1, hidden, generator=generator) * 3).to(DEVICE, dtype)
    with torch.no_grad():
        expected_total = residual + attended
        expected = norm(expected_total)
    total, normed = fused_decode.add_rms_norm(attended, residual, norm.weight, 1e-6)
    assert total.shape == normed.shape == attended.shape and normed.dtype == dtype
    torch.testing.assert_close(total, expected_total, atol=0, rtol=0)  # the add, exactly
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(normed.float(), expected.float(), atol=tolerance, rtol=tolerance)
    # the norm is the one-input kernel's on the same sum
    torch.testing.assert_close(normed, fused_decode.rms_norm(total, norm.weight, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("intermediate", [40, 1536])  # 1536: two blocks, the second cut
def test_silu_mul_is_the_mlps(dtype, intermediate):
    generator = torch.Generator().manual_seed(intermediate)
    gate_up = (2 * torch.randn(5, 2 * intermediate, generator=generator)).to(DEVICE, dtype)
    gate, up = gate_up.split(intermediate, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    got = fused_decode.silu_mul(gate_up)
    assert got.shape == (5, intermediate) and got.dtype == dtype
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_the_elementwise_kernels_refuse_other_dtypes_and_devices():
    device = torch.device(DEVICE)
    assert fused_decode.elementwise_supported(DTYPES[0], device)
    assert not fused_decode.elementwise_supported(torch.float64, device)
    other = torch.device("cuda" if INTERPRET else "cpu")
    assert not fused_decode.elementwise_supported(DTYPES[0], other)


@pytest.mark.skipif(
    not INTERPRET,
    reason="float32, whose answers can be compared token for token, runs the kernel only under "
    "the interpreter (on CUDA it takes transformers' path); generate_speed.py checks bf16 on a GPU",
)
@pytest.mark.parametrize("titles", [["soft cotton blanket", "mouse", "knife set"], ["mouse"]])
def test_decoder_with_the_kernel_gives_generates_tokens(tiny_llama, titles, monkeypatch):
    """The kernel serves every decode step of every layer (the prompt's attention stays
    transformers'), the norm, add-and-norm and MLP kernels every forward, and the answers are ``generate``'s token for token (float32 under the
    interpreter, whose arithmetic the test can trust; sharpened attention, so a wrong position,
    head or rotation changes them)."""
    from test_static_decoder import HEAD, assert_same_as_generate, sharp

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    calls: dict[str, int] = {}
    for name in ("decode_attention", "rms_norm", "add_rms_norm", "silu_mul"):
        kernel = getattr(fused_decode, name)

        def counted(*a, _name=name, _kernel=kernel, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _kernel(*a, **k)

        monkeypatch.setattr(fused_decode, name, counted)
    model, tok = sharp(tiny_llama)
    model.to(DEVICE)
    enc = tok([HEAD + t for t in titles], return_tensors="pt", padding=True).to(DEVICE)
    decoder = StaticGreedyDecoder(model, compile_mode=None, length_bucket=8, check_every=4)
    for _ in range(2):  # the second call reuses the cache and its counters
        out = assert_same_as_generate(
            model, decoder, enc, eos=tok.eos_token_id, pad=tok.pad_token_id, max_new_tokens=9
        )
    steps = 2 * (out.shape[1] - 1)  # the first token of each call comes from the prompt
    layers = model.config.num_hidden_layers
    assert calls["decode_attention"] >= steps * layers > 0
    # the norms (the second of a layer with the residual add before it) and the MLP's product
    # run as kernels in every forward, the prompt's too
    assert calls["rms_norm"] >= (steps + 2) * (layers + 1)
    assert calls["add_rms_norm"] >= (steps + 2) * layers
    assert calls["silu_mul"] >= (steps + 2) * layers
    # The kernel writes at the step's cache position and advances the layer's counter, from
    # which transformers takes the next step's mask offset: the two must stay equal.
    (slot,) = decoder._slots.values()
    for layer in slot.cache.layers:
        assert layer.cumulative_length.item() == slot.cache_position.item()


@pytest.mark.slow
@pytest.mark.skipif(
    INTERPRET, reason="torch.compile cannot trace the kernel under Triton's interpreter"
)
def test_compiled_decoder_with_the_kernel(tiny_llama):
    """On a GPU: the compiled, graph-recorded decoder traces the kernel path whole
    (``fullgraph``), keeps each layer's write counter at the cache position, and answers as
    it does with transformers' attention. Not token for token: in bf16 two attention kernels
    may round a near-tie apart."""
    from test_static_decoder import decode, options
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    tok = AutoTokenizer.from_pretrained(tiny_llama, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    model.to(DEVICE).eval()
    titles = ["soft cotton blanket", "mouse", "knife set with a block"]
    enc = tok(titles, return_tensors="pt", padding=True).to(DEVICE)
    answers = {}
    for kernel in (True, False):
        decoder = StaticGreedyDecoder(model, attention_kernel=kernel)
        for _ in range(2):  # the second call replays the recorded graphs
            answers[kernel] = decode(decoder, enc, **options(tok, 40), min_new_tokens=40)
        (slot,) = decoder._slots.values()
        for layer in slot.cache.layers:
            assert layer.cumulative_length.item() == slot.cache_position.item()
    assert answers[True].shape == (3, 40)
    assert (answers[True] == answers[False]).float().mean() >= 0.9


# Compiled for an H100/H200 (sm_90) without a GPU: Triton's compiler runs to PTX here, so a
# kernel that the interpreter runs but the compiler rejects (a type, a constexpr, a helper's
# arguments) fails in CI. Each kernel with the arguments its op gives it for TinyLlama.
_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from productdesc.generation import fused_decode as f

def compile(fn, signature, constexprs):
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    print(fn.__name__, ".entry" in ptx)

p, i = "*bf16", "i32"
compile(f._kernel, dict(
    qkv=p, cos=p, sin=p, key_cache=p, value_cache=p, counter="*i64", mask="*i1",
    position="*i64", out=p, stride_qkv=i, stride_rope=i, stride_cache_b=i, stride_cache_h=i,
    stride_cache_l=i, stride_mask_b=i, stride_mask_l=i, stride_out=i, SCALE="constexpr",
    H_KV="constexpr", GROUP="constexpr", GROUP_PAD="constexpr", D="constexpr",
    BLOCK_L="constexpr", HAS_MASK="constexpr",
), dict(SCALE=0.125, H_KV=4, GROUP=8, GROUP_PAD=16, D=64, BLOCK_L=64, HAS_MASK=True))
compile(f._rms_norm_kernel, dict(
    x=p, weight=p, out=p, stride_x=i, stride_out=i, N=i, EPS="constexpr", BLOCK="constexpr"
), dict(EPS=1e-5, BLOCK=2048))
compile(f._add_rms_norm_kernel, dict(
    x=p, residual=p, weight=p, total=p, out=p, stride_x=i, stride_residual=i, stride_total=i,
    stride_out=i, N=i, EPS="constexpr", BLOCK="constexpr",
), dict(EPS=1e-5, BLOCK=2048))
compile(f._silu_mul_kernel, dict(
    gate_up=p, out=p, stride_in=i, stride_out=i, N=i, BLOCK="constexpr"
), dict(BLOCK=1024))
"""


def test_the_kernels_compile_for_a_hopper_gpu():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [
        "_kernel", "True", "_rms_norm_kernel", "True", "_add_rms_norm_kernel", "True",
        "_silu_mul_kernel", "True",
    ]  # fmt: skip
