"""Frozen configs: documented defaults, errors that name the field, TOML round trips."""

from __future__ import annotations

import attrs
import pytest

from productdesc.config import (
    FineTuneConfig,
    GenerationConfig,
    LoraSettings,
    ModelConfig,
    TrainingConfig,
)
from productdesc.errors import UserError


def test_seed_recipe_has_the_notebooks_values():
    cfg = FineTuneConfig.seed_recipe()
    assert cfg.model == ModelConfig(
        model_name="unsloth/tinyllama-chat-bnb-4bit", max_seq_length=2048, load_in_4bit=True
    )
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (16, 16, 0.0)
    assert cfg.lora.target_modules == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    assert cfg.lora.use_gradient_checkpointing == "unsloth"
    t = cfg.training
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (2, 22)
    assert (t.warmup_steps, t.learning_rate, t.max_grad_norm) == (5, 2e-4, 0.6)
    assert (t.optim, t.weight_decay, t.lr_scheduler_type) == ("adamw_8bit", 0.01, "linear")
    assert (t.group_by_length, t.packing, t.seed) == (True, False, 3407)


def test_default_differs_from_the_seed_only_in_batching_and_checkpointing():
    default, seed = FineTuneConfig(), FineTuneConfig.seed_recipe()
    assert default.model == seed.model
    assert default.lora.use_gradient_checkpointing == "auto"
    assert attrs.evolve(default.lora, use_gradient_checkpointing="unsloth") == seed.lora
    assert (
        attrs.evolve(
            default.training,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=22,
            packing=False,
        )
        == seed.training
    )


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (LoraSettings, {"r": 0}, "'r'"),
        (LoraSettings, {"lora_dropout": 1.5}, "'lora_dropout'"),
        (ModelConfig, {"dtype": "int3"}, "'dtype'"),
        (TrainingConfig, {"learning_rate": -1}, "'learning_rate'"),
        (TrainingConfig, {"save_steps": 0}, "'save_steps'"),
        (GenerationConfig, {"max_new_tokens": 4, "min_new_tokens": 8}, "'min_new_tokens'"),
    ],
)
def test_a_bad_value_names_its_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_toml_round_trip_keeps_every_value_including_none(tmp_path):
    cfg = FineTuneConfig(
        model=ModelConfig(model_name="smollm2-135m", load_in_4bit=False, max_seq_length=384),
        lora=LoraSettings(target_modules="q_proj, v_proj", use_gradient_checkpointing=False),
        training=TrainingConfig(max_steps=7, save_steps=None, save_total_limit=None, eval_steps=3),
        question_share=0.25,
    )
    path = tmp_path / "run.toml"
    cfg.to_toml(path)
    assert 'save_steps = "off"' in path.read_text()
    assert FineTuneConfig.from_toml(path) == cfg


def test_config_file_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora]\nrank = 8\n")
    with pytest.raises(UserError, match=r"unknown key\(s\) rank in \[lora\]"):
        FineTuneConfig.from_toml(bad)
    bad.write_text("[training]\nlearning_rate = 0\n")
    with pytest.raises(UserError, match="'learning_rate' must be > 0"):
        FineTuneConfig.from_toml(bad)
    with pytest.raises(UserError, match="not found"):
        FineTuneConfig.from_toml(tmp_path / "missing.toml")


def test_cli_prints_the_seed_recipe_on_request(tmp_path, capsys):
    from productdesc.cli import main

    assert main(["train", "--print-config", "--seed-recipe", "--max-steps", "3"]) == 0
    (tmp_path / "seed.toml").write_text(capsys.readouterr().out)
    seed = FineTuneConfig.seed_recipe()
    assert FineTuneConfig.from_toml(tmp_path / "seed.toml") == attrs.evolve(
        seed, training=attrs.evolve(seed.training, max_steps=3)
    )
    both = ["train", "--print-config", "--seed-recipe", "--config", str(tmp_path / "seed.toml")]
    assert main(both) != 0
    assert "pick one" in capsys.readouterr().err


def test_cli_context_flag_selects_the_context_template(capsys):
    from productdesc.cli import main

    assert main(["train", "--print-config", "--context"]) == 0
    assert 'template = "context"' in capsys.readouterr().out
