"""Issue 22 items 5 and 6, issue 20's closed pipe: the command line as a user drives it.

``train --set`` for any field, YAML configs, ``-v`` before or after the sub-command, other
libraries quiet unless ``-v``, and a stdout that closes early (``| head -1``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from test_cli_errors import one_line_error

from productdesc.cli import main
from productdesc.config import FineTuneConfig


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample, prepared (and indexed by the subprocess tests)."""
    out = tmp_path_factory.mktemp("sample") / "data"
    assert main(["prepare", "--sample", "--out", str(out)]) == 0
    return out


def printed_config(capsys: pytest.CaptureFixture[str], *options: str) -> dict:
    """The config ``train --print-config OPTIONS`` prints, as a dict."""
    assert main(["train", "--print-config", *options]) == 0
    return tomllib.loads(capsys.readouterr().out)


def cli(*argv: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    """``python -m productdesc.cli ARGV`` in a fresh process (stderr captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "productdesc.cli", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )


# -- --set --------------------------------------------------------------------------------------
def test_set_changes_any_field_with_toml_values(capsys: pytest.CaptureFixture[str]) -> None:
    config = printed_config(
        capsys,
        "--set", "training.learning_rate=1e-3",
        "--set", "model.model_name=smollm2-135m",  # not TOML: taken as the text
        "--set", 'lora.target_modules=["q_proj", "v_proj"]',
        "--set", "training.save_steps=off",
        "--set", "training.packing=false",
        "--set", "template_options.k=3",
    )  # fmt: skip
    assert config["training"]["learning_rate"] == 1e-3
    assert config["model"]["model_name"] == "smollm2-135m"
    assert config["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert (config["training"]["save_steps"], config["training"]["packing"]) == ("off", False)
    assert config["template_options"] == {"k": 3}


def test_named_options_keep_working_and_set_comes_after_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = printed_config(
        capsys,
        "--preset", "gpu-small",
        "--model", "my/model",
        "--max-steps", "7",
        "--backend", "transformers",
        "--report-to", "tensorboard",
        "--context",
        "--set", "training.max_steps=9",
    )  # fmt: skip
    assert config["model"]["model_name"] == "my/model"
    assert config["training"]["max_steps"] == 9  # --set after --max-steps
    assert (config["backend"], config["template"]) == ("transformers", "context")
    assert config["training"]["report_to"] == "tensorboard"
    assert config["training"]["learning_rate"] == 2e-3  # the preset's, untouched


@pytest.mark.parametrize(
    ("option", "names"),
    [
        ("training.lerning_rate=1e-3", ["--set training.lerning_rate=1e-3", "lerning_rate"]),
        ("training.learning_rate=fast", ["'learning_rate' must be a number, got 'fast'"]),
        ("training.max_steps=true", ["'max_steps' must be an integer, got True"]),
        ("lora.r=0", ["[lora] 'r' must be > 0"]),
        ("backend.name=x", ["backend is a value, not a section"]),
        ("learning_rate", ["--set learning_rate: expected KEY=VALUE"]),
    ],
)
def test_a_bad_set_is_one_line_naming_the_field(
    option: str, names: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--print-config", "--set", option]) == 2
    line = one_line_error(capsys, "train")
    assert all(name in line for name in names), line


def test_a_bad_named_option_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "--report-to", "none,wandb"]) == 2
    assert "--report-to none,wandb: " in one_line_error(capsys, "train")


# -- YAML configs -------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_train_reads_a_yaml_config_like_its_toml(
    suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml_path = tmp_path / f"run{suffix}"
    yaml_path.write_text(
        "model:\n  model_name: smollm2-135m\n  load_in_4bit: false\n"
        "training:\n  learning_rate: 5e-4\n  save_steps: off\n"
    )
    from_yaml = printed_config(capsys, "--config", str(yaml_path), "--max-steps", "3")
    toml_path = tmp_path / "run.toml"
    FineTuneConfig.from_dict(
        {
            "model": {"model_name": "smollm2-135m", "load_in_4bit": False},
            "training": {"learning_rate": 5e-4, "save_steps": "off"},
        }
    ).to_toml(toml_path)
    assert from_yaml == printed_config(capsys, "--config", str(toml_path), "--max-steps", "3")


def test_bad_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  learning_rate: [1e-4\n")
    assert main(["train", "--print-config", "--config", str(path)]) == 2
    line = one_line_error(capsys, "train")
    assert f"config file {path} is not valid YAML" in line and "line 3" in line


@pytest.fixture(scope="module")
def yaml_run(tiny_llama: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CPU step on the tiny Llama, from a YAML config with a --set on top."""
    folder = tmp_path_factory.mktemp("yaml-run")
    config = folder / "tiny.yaml"
    config.write_text(
        f"backend: transformers\n"
        f"model:\n  model_name: {tiny_llama}\n  max_seq_length: 256\n  load_in_4bit: false\n"
        f"lora:\n  use_gradient_checkpointing: false\n"
        f"training:\n  per_device_train_batch_size: 2\n  max_steps: 1\n  save_steps: off\n"
        f"  packing: false\n  optim: adamw_torch\n"
    )
    out = folder / "run"
    argv = ["train", "--data", str(prepared), "--out", str(out), "--config", str(config)]
    assert main([*argv, "--set", "training.learning_rate=3e-4"]) == 0
    return out


def test_train_runs_from_a_yaml_config_with_set(yaml_run: Path) -> None:
    saved = FineTuneConfig.from_toml(yaml_run / "productdesc_config.toml")
    assert saved.training.learning_rate == 3e-4 and saved.training.max_steps == 1
    assert (yaml_run / "adapter_model.safetensors").is_file()


# -- -v anywhere, quiet by default --------------------------------------------------------------
def test_index_is_quiet_without_v(prepared: Path) -> None:
    done = cli("index", str(prepared))
    assert done.returncode == 0, done.stderr
    assert "DEBUG" not in done.stderr and "BM25S" not in done.stderr, done.stderr
    assert done.stdout.startswith("indexed ")


@pytest.mark.parametrize(
    "argv",
    [["-vv", "index", "{data}"], ["index", "{data}", "-vv"], ["-v", "index", "-v", "{data}"]],
)
def test_v_works_before_and_after_the_command_and_counts(argv: list[str], prepared: Path) -> None:
    done = cli(*(arg.format(data=prepared) for arg in argv))
    assert done.returncode == 0, done.stderr
    assert "DEBUG bm25s: " in done.stderr and "BM25S" in done.stderr, done.stderr


def test_a_model_load_is_quiet_without_v(smollm2_dir: Path) -> None:
    # SmolLM2's tokenizer asks for clean_up_tokenization_spaces, which transformers warns about
    argv = ["describe", "--model", str(smollm2_dir), "--backend", "transformers", "Nice for Mice"]
    done = cli(*argv, "--max-new-tokens", "3")
    assert done.returncode == 0, done.stderr
    for noise in ("clean_up_tokenization_spaces", "Loading weights", "torchao", "_pytree"):
        assert noise not in done.stderr, done.stderr
    assert "clean_up_tokenization_spaces" not in done.stdout and done.stdout.strip()


def test_evaluate_sends_what_libraries_print_to_stderr(
    yaml_run: Path,
    prepared: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import productdesc.evaluate

    banner = "==((====))==  Unsloth: Fast Llama patching"
    real = productdesc.evaluate.evaluate

    def noisy(*args, **kwargs):  # as Unsloth prints while a model loads
        print(banner)
        return real(*args, **kwargs)

    monkeypatch.setattr(productdesc.evaluate, "evaluate", noisy)
    argv = ["evaluate", "--model", str(yaml_run), "--data", str(prepared), "--limit", "2"]
    out_dir = yaml_run.parent / "evaluation"
    flags = ["--no-base", "--no-retrieval", "--max-new-tokens", "2", "--out", str(out_dir)]
    assert main([*argv, *flags]) == 0
    captured = capsys.readouterr()
    assert banner in captured.err and banner not in captured.out
    assert captured.out.split("\n")[0].endswith(
        " test records; 95% bootstrap intervals in brackets"
    )


# -- a stdout that closes early -----------------------------------------------------------------
def _with_closed_stdout(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI into a pipe whose reader has gone, as ``| head -1`` leaves it."""
    read, write = os.pipe()
    os.close(read)  # before the command writes: its first write meets a closed pipe
    try:
        return cli(*argv, stdout=write)
    finally:
        os.close(write)


@pytest.mark.parametrize("command", ["print-config", "describe"])
def test_a_closed_stdout_ends_quietly(command: str, tiny_llama: Path) -> None:
    argv = {
        "print-config": ["train", "--print-config"],
        "describe": ["describe", "--model", str(tiny_llama), "Nice", "--max-new-tokens", "3"],
    }[command]
    done = _with_closed_stdout(*argv)
    assert done.returncode == 141  # 128 + SIGPIPE, as a shell reports a process ended by it
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_describe_into_head_prints_its_first_line(tiny_llama: Path) -> None:
    argv = ["describe", "--model", str(tiny_llama), "Nice", "--max-new-tokens", "20"]
    command = shlex.join([sys.executable, "-m", "productdesc.cli", *argv]) + " | head -c 1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=300
    )
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    assert len(done.stdout) == 1 and done.returncode in (0, 141)


def test_launched_processes_get_every_set_and_v(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train --nproc N`` starts N copies of the command: each gets the same config."""
    import productdesc.cli.train as train

    launched: list[list[str]] = []

    def launch(args) -> int:  # what torchrun would start, without starting it
        launched.append(train._child_argv(args))
        return 0

    monkeypatch.setattr(train, "_launch", launch)
    argv = ["train", "-v", "--data", ".", "--out", "o", "--nproc", "2"]
    assert main([*argv, "--set", "lora.r=8", "--set", "training.seed=1"]) == 0
    [child] = launched
    assert child[:2] == ["-v", "train"] and "--nproc" not in child
    assert child[child.index("--set") :][:4] == ["--set", "lora.r=8", "--set", "training.seed=1"]


def test_describe_takes_fast_and_torch_compile(
    tiny_llama: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--fast --torch-compile`` reach the Describer (on CPU the step is not compiled, so the
    answer is the one ``--no-fast`` gives)."""
    from productdesc.generation.describer import Describer

    made: list[Describer] = []
    real = Describer.__init__

    def keep(self: Describer, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Describer, "__init__", keep)
    answers = []
    for options in (["--fast", "--torch-compile"], ["--no-fast"]):
        # In this process: the transformers backend, since importing Unsloth (what "auto"
        # picks where it is installed) patches transformers for every later test.
        argv = ["describe", "--model", str(tiny_llama), "Nice", "--max-new-tokens", "6"]
        argv += ["--backend", "transformers"]
        assert main([*argv, *options]) == 0
        answers.append(capsys.readouterr().out)
    assert made[0]._fast is not None and made[0].torch_compile
    assert made[1]._fast is None and not made[1].torch_compile
    assert answers[0] == answers[1] and answers[0].strip()
