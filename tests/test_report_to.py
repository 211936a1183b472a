"""Issue 22 item 3: ``training.report_to`` reaches the Trainer; TensorBoard's reader opens the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from productdesc.cli import main
from productdesc.config import FineTuneConfig, ModelConfig, TrainingConfig
from productdesc.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import RECORDS, tiny_config


def test_report_to_defaults_to_none_and_takes_a_name_or_a_list() -> None:
    assert TrainingConfig().report_to == "none"
    assert TrainingConfig(report_to="tensorboard").report_to == "tensorboard"
    assert TrainingConfig(report_to=["tensorboard", "wandb"]).report_to == ("tensorboard", "wandb")
    assert TrainingConfig(report_to="tensorboard, wandb").report_to == ("tensorboard", "wandb")
    config = FineTuneConfig(training=TrainingConfig(report_to=["tensorboard", "mlflow"]))
    assert FineTuneConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("bad", [1, [], "", "tensor board", ["none", "wandb"], ["all", "wandb"]])
def test_a_bad_report_to_is_one_line_naming_the_field(bad: object) -> None:
    with pytest.raises(UserError) as refused:
        FineTuneConfig.from_dict({"training": {"report_to": bad}})
    message = str(refused.value)
    assert "\n" not in message and message.startswith("config: [training] 'report_to'")


def test_the_cli_flag_sets_report_to(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--report-to", "tensorboard,wandb", "--print-config"]) == 0
    import tomllib

    written = tomllib.loads(capsys.readouterr().out)
    assert written["training"]["report_to"] == ["tensorboard", "wandb"]


def test_sft_config_gets_report_to(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from productdesc.backends._sft import sft_config

    def args(**training):
        return sft_config(TrainingConfig(**training), ModelConfig(), tmp_path, has_eval=False)

    assert args().report_to == []  # "none", as before
    assert args(report_to="tensorboard").report_to == ["tensorboard"]


def test_an_unknown_or_missing_tracker_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.integrations import integration_utils

    from productdesc.backends._sft import report_to_names

    with pytest.raises(UserError, match=r"no integration named 'tensorbord'; known: .*tensorboard"):
        report_to_names("tensorbord")
    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: [])
    with pytest.raises(UserError) as refused:
        report_to_names(("tensorboard", "wandb"))
    assert str(refused.value) == (
        "training.report_to: tensorboard, wandb are not installed: pip install tensorboard wandb"
    )
    assert report_to_names("none") == "none"


def test_train_refuses_an_unknown_tracker_before_loading_the_model(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from productdesc.backends.base import Backend
    from productdesc.finetune import LoraFineTuner

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before report_to was checked")

    monkeypatch.setattr(Backend, "load_model", refuse)
    config = tiny_config(tiny_llama, report_to="tensorbord")
    with pytest.raises(UserError, match=r"training\.report_to: transformers has no integration"):
        LoraFineTuner(config).train(RECORDS, output_dir=tmp_path / "run")


def _scalars(logs: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs))
    events.Reload()
    assert tag in events.Tags()["scalars"], events.Tags()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_a_tensorboard_run_writes_event_files_that_tensorboard_reads(
    tiny_llama: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard", reason="pip install tensorboard (the tests session does)")
    from productdesc.finetune import LoraFineTuner

    steps = 4
    config = tiny_config(tiny_llama, max_steps=steps, save_steps=2, report_to="tensorboard")
    out = tmp_path / "run"
    result = LoraFineTuner(config).train(RECORDS, output_dir=out)

    logs = out / "logs"
    assert list(logs.glob("events.out.tfevents.*"))  # in the run's logs/, for --logdir run/logs
    assert not (out / "checkpoints" / "runs").exists()  # not transformers' default place
    losses = _scalars(logs, "train/loss")
    assert [step for step, _ in losses] == list(range(1, steps + 1))
    expected = [h["loss"] for h in result.history if "loss" in h]
    assert [value for _, value in losses] == pytest.approx(expected, rel=1e-5)
    assert [s for s, _ in _scalars(logs, "train/learning_rate")] == list(range(1, steps + 1))

    # Resumed from step 2 into the same folder: steps 3 and 4 are logged again, in a second
    # event file, and TensorBoard shows each step once (the later run's).
    LoraFineTuner(config).train(
        RECORDS, output_dir=out, resume_from_checkpoint=out / "checkpoints" / "checkpoint-2"
    )
    assert len(list(logs.glob("events.out.tfevents.*"))) == 2
    again = _scalars(logs, "train/loss")
    assert [step for step, _ in again] == list(range(1, steps + 1))
    assert [value for _, value in again] == pytest.approx(expected, rel=1e-4)  # a true resume
