"""Both backends on the tiny random Llama: load, adapt, train, save, reload, merge.

``import unsloth`` patches transformers, TRL and PEFT for the whole process, so the unsloth
backend runs in a subprocess of its own (one, for all its checks); that subprocess also checks
that the transformers backend still trains once unsloth has patched the process. Everything
else here runs in the pytest process, unpatched.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from productdesc.backends import get_backend, resolve_dtype
from productdesc.backends.transformers import TransformersBackend
from productdesc.config import LoraSettings, ModelConfig, TrainingConfig
from productdesc.errors import UserError

HAS_UNSLOTH = importlib.util.find_spec("unsloth") is not None
PAIRS = [
    {"prompt": f"Title: {title}\nDescription:\n", "completion": f"{text}</s>"}
    for title, text in [
        ("soft cotton blanket", "a warm blanket for babies"),
        ("kitchen knife set", "six stainless steel knives"),
        ("ballet tutu", "a pink tutu for girls who dance"),
        ("wireless mouse", "a rechargeable usb mouse for the office"),
    ]
]


def _logits(model, tokenizer, text: str = "Title: ballet tutu\nDescription:\na pink"):
    import torch

    batch = tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _train(backend, tiny_llama: Path, out: Path):
    """Load, add an adapter, train 4 steps at a high rate; returns (model, tokenizer, trainer)."""
    from datasets import Dataset

    model_config = ModelConfig(model_name=str(tiny_llama), max_seq_length=64, load_in_4bit=False)
    model, tokenizer = backend.load_model(model_config)
    model = backend.add_adapter(
        model, LoraSettings(r=8, lora_alpha=16, use_gradient_checkpointing=False), seed=1
    )
    training = TrainingConfig(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=4,
        warmup_steps=0,
        learning_rate=5e-3,
        save_steps=None,
        packing=False,  # Unsloth turns packing off on CPU; padded rows keep the backends equal
    )
    trainer = backend.train(
        model,
        tokenizer,
        Dataset.from_list(PAIRS * 2),
        None,
        model_config=model_config,
        training=training,
        output_dir=out,
    )
    model.eval()
    return model, tokenizer, trainer


def _packed_and_padded_loss(backend, model, tokenizer) -> tuple[float, float, bool]:
    """The loss on all PAIRS in one batch, packed into rows and padded one a row.

    Returns the two losses and whether the packed batch was packed (Unsloth turns packing off
    where it cannot keep examples apart).
    """
    import torch
    from datasets import Dataset

    from productdesc.backends._sft import build_trainer

    losses, packed = [], False
    for packing in (True, False):
        trainer = build_trainer(
            model,
            tokenizer,
            Dataset.from_list(PAIRS),
            None,
            model_config=ModelConfig(max_seq_length=256),
            training=TrainingConfig(packing=packing, save_steps=None),
            output_dir="unused",
        )
        dataset = trainer.train_dataset
        batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
        packed = packed or "position_ids" in batch  # packed: no attention mask, positions restart
        with torch.no_grad():
            losses.append(float(trainer.compute_loss(model, batch)))
    return losses[0], losses[1], packed


@pytest.fixture(scope="module")
def trained(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """The transformers backend's tuned tiny model, its adapter saved to a directory."""
    backend = TransformersBackend()
    work = tmp_path_factory.mktemp("transformers-backend")
    model, tokenizer, trainer = _train(backend, tiny_llama, work / "checkpoints")
    model.save_pretrained(work / "adapter")
    tokenizer.save_pretrained(work / "adapter")
    return backend, model, tokenizer, trainer, work / "adapter"


def test_training_logs_a_finite_loss_and_throughput(trained) -> None:
    *_, trainer, _ = trained
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 4 and all(0 < loss < 20 for loss in losses)
    assert any("train_tokens_per_second" in e for e in trainer.state.log_history)


def test_adapter_records_its_base(trained, tiny_llama: Path) -> None:
    *_, adapter_dir = trained
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama)
    assert (adapter_dir / "adapter_model.safetensors").is_file()


def test_saved_adapter_reloads_to_the_same_logits(trained) -> None:
    import torch

    backend, model, tokenizer, _, adapter_dir = trained
    loaded, loaded_tokenizer = backend.load_for_inference(adapter_dir)
    assert not loaded.training
    assert loaded_tokenizer.pad_token_id != loaded_tokenizer.eos_token_id
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tokenizer))


def test_without_the_adapter_it_is_the_base_model(trained, tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    backend, model, tokenizer, _, adapter_dir = trained
    base, _ = backend.load_for_inference(adapter_dir, adapter=False)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.testing.assert_close(_logits(base, tokenizer), _logits(original, tokenizer))
    # and the adapter did change the model
    assert not torch.allclose(_logits(base, tokenizer), _logits(model, tokenizer), atol=1e-3)


def test_merged_model_gives_the_adapter_logits(trained, tmp_path: Path) -> None:
    import torch

    backend, model, tokenizer, _, adapter_dir = trained
    merged_dir = backend.save_merged(adapter_dir, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    merged, _ = backend.load_for_inference(merged_dir)
    torch.testing.assert_close(
        _logits(merged, tokenizer), _logits(model, tokenizer), atol=1e-4, rtol=1e-4
    )


def test_packed_examples_do_not_attend_to_each_other(trained) -> None:
    # Packed into one row, each example must see only itself: the same loss as padded rows.
    backend, model, tokenizer, *_ = trained
    packed, padded, was_packed = _packed_and_padded_loss(backend, model, tokenizer)
    assert was_packed or "unsloth" in sys.modules  # Unsloth, once imported, unpacks on CPU
    assert packed == pytest.approx(padded, rel=1e-5)


def test_prepared_model_generates(trained) -> None:
    backend, model, tokenizer, *_ = trained
    model = backend.prepare_for_inference(model)
    batch = tokenizer(["Title: wireless mouse\nDescription:\n"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_gradient_checkpointing_trains(tiny_llama: Path, tmp_path: Path) -> None:
    from datasets import Dataset

    backend = TransformersBackend()
    model_config = ModelConfig(model_name=str(tiny_llama), max_seq_length=64, load_in_4bit=False)
    model, tokenizer = backend.load_model(model_config)
    # "unsloth" (the seed's setting) means plain checkpointing on this backend
    model = backend.add_adapter(model, LoraSettings(use_gradient_checkpointing="unsloth"), seed=0)
    assert model.base_model.model.is_gradient_checkpointing
    trainer = backend.train(
        model,
        tokenizer,
        Dataset.from_list(PAIRS),
        None,
        model_config=model_config,
        training=TrainingConfig(max_steps=2, per_device_train_batch_size=2, save_steps=None),
        output_dir=tmp_path,
    )
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: gradients reached it


def test_wrong_target_modules_name_the_field(tiny_llama: Path) -> None:
    backend = TransformersBackend()
    model, _ = backend.load_model(ModelConfig(model_name=str(tiny_llama), load_in_4bit=False))
    with pytest.raises(UserError, match=r"lora\.target_modules \['query_key_value'\]"):
        backend.add_adapter(model, LoraSettings(target_modules=["query_key_value"]), seed=0)


def test_4bit_on_cpu_warns_and_loads_unquantized(tiny_llama: Path, caplog) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    backend = TransformersBackend()
    with caplog.at_level(logging.WARNING, logger="productdesc"):
        model, _ = backend.load_model(ModelConfig(model_name=str(tiny_llama), load_in_4bit=True))
    assert "load_in_4bit needs a CUDA GPU" in caplog.text
    assert not getattr(model, "is_loaded_in_4bit", False)
    assert model.dtype == torch.float32


def test_cpu_defaults_float32_and_a_non_8bit_optimizer(tmp_path: Path, caplog) -> None:
    import torch

    from productdesc.backends._sft import sft_config

    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallbacks")
    assert resolve_dtype("auto") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with caplog.at_level(logging.INFO, logger="productdesc"):
        args = sft_config(
            TrainingConfig(optim="adamw_8bit"),
            ModelConfig(max_seq_length=333),
            tmp_path,
            has_eval=True,
        )
    assert "8bit" not in str(args.optim)  # adamw_torch (adamw_torch_fused once Unsloth patched)
    assert "using adamw_torch on CPU" in caplog.text
    assert args.max_length == 333  # not TRL's silent 1024
    assert args.eval_strategy == "epoch" and not args.bf16 and not args.fp16


def test_a_backend_missing_a_library_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU image here has transformers and PEFT but no TRL: the error says which to install."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else find_spec(name, *a)
    )
    with pytest.raises(
        UserError, match=r"^backend 'transformers' needs trl, not installed here: pip install trl$"
    ):
        get_backend("transformers")


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"backend.*'nope'.*transformers.*unsloth"):
        get_backend("nope")


UNSLOTH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])  # the tests directory, for test_backends' helpers
    from productdesc.backends import get_backend  # imports nothing heavy
    assert "transformers" not in sys.modules
    backend = get_backend("auto")  # imports unsloth, before transformers
    import torch
    from test_backends import _logits, _packed_and_padded_loss, _train

    tiny, work = Path(sys.argv[1]), Path(sys.argv[2])
    report = {"auto": backend.name}
    model, tokenizer, trainer = _train(backend, tiny, work / "unsloth-ckpt")
    report["losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    model.save_pretrained(work / "adapter")
    tokenizer.save_pretrained(work / "adapter")
    expected = _logits(model, tokenizer)
    loaded, _ = backend.load_for_inference(work / "adapter")
    report["reload_diff"] = (_logits(loaded, tokenizer) - expected).abs().max().item()
    merged, _ = backend.load_for_inference(backend.save_merged(work / "adapter", work / "merged"))
    report["merged_diff"] = (_logits(merged, tokenizer) - expected).abs().max().item()
    fast = backend.prepare_for_inference(loaded)
    batch = tokenizer(["Title: wireless mouse\\nDescription:\\n"], return_tensors="pt")
    out = fast.generate(**batch, max_new_tokens=4, do_sample=False)
    report["generated"] = out.shape[1] - batch["input_ids"].shape[1]
    report["packed_and_padded_loss"] = _packed_and_padded_loss(backend, model, tokenizer)
    # The transformers backend in a process unsloth has patched.
    plain = get_backend("transformers")
    _, _, trainer = _train(plain, tiny, work / "transformers-ckpt")
    report["patched_transformers_losses"] = [
        e["loss"] for e in trainer.state.log_history if "loss" in e
    ]
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def unsloth_report(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not HAS_UNSLOTH:
        pytest.skip("unsloth is not installed")
    work = tmp_path_factory.mktemp("unsloth-backend")
    script = work / "run_unsloth.py"
    script.write_text(UNSLOTH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_llama), str(work), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("REPORT ") :])


@pytest.mark.slow
def test_auto_picks_unsloth_when_installed(unsloth_report: dict) -> None:
    assert unsloth_report["auto"] == "unsloth"


@pytest.mark.slow
def test_unsloth_backend_trains_on_cpu(unsloth_report: dict, trained) -> None:
    losses = unsloth_report["losses"]
    assert len(losses) == 4 and all(0 < loss < 20 for loss in losses)
    # Same data, seed and model as the transformers backend: the same loss curve.
    *_, trainer, _ = trained
    expected = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses == pytest.approx(expected, rel=1e-3)


@pytest.mark.slow
def test_unsloth_adapter_and_merged_model_reload_to_the_same_logits(unsloth_report) -> None:
    assert unsloth_report["reload_diff"] < 1e-5
    assert unsloth_report["merged_diff"] < 1e-4


@pytest.mark.slow
def test_unsloth_packing_is_correct_or_off(unsloth_report: dict) -> None:
    # On CPU Unsloth turns packing off (no FlashAttention); where it packs, examples stay apart.
    packed, padded, _ = unsloth_report["packed_and_padded_loss"]
    assert packed == pytest.approx(padded, rel=1e-5)


@pytest.mark.slow
def test_unsloth_for_inference_generates(unsloth_report: dict) -> None:
    assert unsloth_report["generated"] > 0


@pytest.mark.slow
def test_transformers_backend_still_trains_after_unsloth_patched_the_process(
    unsloth_report: dict, trained
) -> None:
    *_, trainer, _ = trained
    expected = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert unsloth_report["patched_transformers_losses"] == pytest.approx(expected, rel=1e-3)
