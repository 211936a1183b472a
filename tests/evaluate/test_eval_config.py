"""EvalConfig: evaluate's settings as one frozen, validated object, or as keyword options."""

from __future__ import annotations

from pathlib import Path

import pytest

from productdesc import EvalConfig, GenerationConfig
from productdesc.errors import UserError
from productdesc.evaluate import evaluate


def test_options_are_set_over_a_config_which_stays_as_it_was() -> None:
    base = EvalConfig(limit=50, baselines=["retrieval"])
    cfg = EvalConfig.of(base, seed=7)
    assert (cfg.limit, cfg.baselines, cfg.seed) == (50, ("retrieval",), 7)
    assert base.seed == 0
    assert EvalConfig.of() == EvalConfig()
    assert EvalConfig(generation=None).generation == GenerationConfig()


def test_an_unknown_or_bad_option_names_it() -> None:
    with pytest.raises(UserError, match=r"unknown evaluation option.*limt"):
        EvalConfig.of(limt=5)
    with pytest.raises(UserError, match="'limit'"):
        EvalConfig.of(limit="5")


def test_evaluate_refuses_a_bad_option_before_it_loads_anything(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown evaluation option"):
        evaluate(tmp_path / "nowhere", tmp_path / "nothing", n_resample=10)
    with pytest.raises(UserError, match="model directory not found"):
        evaluate(tmp_path / "nowhere", tmp_path, config=EvalConfig(limit=3))
