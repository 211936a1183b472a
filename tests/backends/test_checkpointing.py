"""``use_gradient_checkpointing = "auto"`` (backends.checkpointing)."""

from __future__ import annotations

import types

import pytest

from productdesc.backends import checkpointing

TINYLLAMA = types.SimpleNamespace(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22)


def test_the_estimate_covers_what_a_packed_tinyllama_step_measured():
    # Unsloth's packed 8 x 2048 step peaked at 21.7 GB on an H200 without checkpointing.
    need = checkpointing.activation_bytes(TINYLLAMA, 8 * 2048)
    assert 21.7e9 <= need <= 1.5 * 21.7e9


def test_explicit_settings_pass_through():
    for value in (True, False, "unsloth"):
        assert checkpointing.choose(value, model=None, tokens_per_micro_batch=1) == value


def test_auto_follows_free_gpu_memory(monkeypatch):
    torch = pytest.importorskip("torch")
    model = types.SimpleNamespace(config=TINYLLAMA)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (130e9, 141e9))  # an H200
    assert checkpointing.choose("auto", model, 8 * 2048) is False
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (20e9, 24e9))  # a 24 GB card
    assert checkpointing.choose("auto", model, 8 * 2048) == "unsloth"


def test_auto_is_off_on_cpu(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = types.SimpleNamespace(config=TINYLLAMA)
    assert checkpointing.choose("auto", model, 8 * 2048) is False


def test_float32_activations_count_double(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (40e9, 80e9))
    bf16 = types.SimpleNamespace(config=TINYLLAMA, dtype=torch.bfloat16)
    fp32 = types.SimpleNamespace(config=TINYLLAMA, dtype=torch.float32)
    assert checkpointing.choose("auto", bf16, 8 * 2048) is False
    assert checkpointing.choose("auto", fp32, 8 * 2048) == "unsloth"
