"""Frozen configs: documented defaults, errors that name the field, TOML and YAML files."""

from __future__ import annotations

import re

import attrs
import pytest

from productdesc.config import (
    FineTuneConfig,
    GenerationConfig,
    LoraSettings,
    ModelConfig,
    TrainingConfig,
    toml_value,
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
    assert t.completion_only_loss is False  # the notebook trains on the whole text


def test_default_differs_from_the_seed_only_in_batching_checkpointing_and_the_loss():
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
            completion_only_loss=False,
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


def test_with_overrides_sets_fields_by_dotted_name_and_validates_them():
    config = FineTuneConfig().with_overrides(
        {
            "training.learning_rate": "1e-3",
            "training.save_steps": "off",
            "lora.target_modules": ["q_proj", "v_proj"],
            "template_options.k": 3,
            "backend": "transformers",
        }
    )
    assert config.training.learning_rate == 1e-3 and config.training.save_steps is None
    assert config.lora.target_modules == ("q_proj", "v_proj")
    assert (config.template_options, config.backend) == ({"k": 3}, "transformers")
    refused = {
        "training.lerning_rate": "unknown key(s) lerning_rate in [training]",
        "training.max_steps": "[training] 'max_steps' must be an integer, got True",
        "backend.name": "backend.name: backend is a value, not a section",
    }
    for key, message in refused.items():
        with pytest.raises(UserError, match=re.escape(message)):
            FineTuneConfig().with_overrides({key: True})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2e-4", 2e-4),
        ("true", True),
        ("12", 12),
        ('"a b"', "a b"),
        ('["q", "v"]', ["q", "v"]),
        ("smollm2-135m", "smollm2-135m"),  # not TOML: the text itself
        ("org/model", "org/model"),
        ("", ""),
    ],
)
def test_toml_value_reads_toml_and_keeps_other_text(text, value):
    assert toml_value(text) == value


def test_yaml_config_reads_like_the_toml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "backend: transformers\n"
        "model:\n  model_name: smollm2-135m\n"
        "lora:\n  target_modules: [q_proj, v_proj]\n"
        "training:\n  learning_rate: 2e-4\n  save_steps: off\n  max_steps: null\n  packing: false\n"
    )
    config = FineTuneConfig.from_file(path)
    assert config == FineTuneConfig.from_yaml(path)
    assert config.to_dict() == {
        **FineTuneConfig().to_dict(),
        "backend": "transformers",
        "model": {**FineTuneConfig().to_dict()["model"], "model_name": "smollm2-135m"},
        "lora": {**FineTuneConfig().to_dict()["lora"], "target_modules": ["q_proj", "v_proj"]},
        "training": {
            **FineTuneConfig().to_dict()["training"],
            "save_steps": "off",
            "packing": False,
        },
    }
    (tmp_path / "empty.yml").write_text("")
    assert FineTuneConfig.from_file(tmp_path / "empty.yml") == FineTuneConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training: [1\n", r"is not valid YAML: expected ',' or '\]'.* at line 2, column 1$"),
        ("model:\n  model_name: x\n\tr: 2\n", r"is not valid YAML: found character '\\t'"),
        ("- model\n", r": expected a mapping \(model:, lora:, training:, \.\.\.\), got list$"),
        # YAML 1.1 would read `no` as false; here it is text, and packing wants a boolean
        ("training:\n  packing: no\n", r"\[training\] 'packing' must be true or false, got 'no'"),
        ("training:\n  lerning_rate: 1\n", r"unknown key\(s\) lerning_rate in \[training\]"),
    ],
)
def test_yaml_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as refused:
        FineTuneConfig.from_yaml(path)
    assert "\n" not in str(refused.value)
