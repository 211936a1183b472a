"""Issue 20: nothing lost, nothing outside its folder touched, one clear line for every bad input.

Each test drives what a user runs (the CLI through ``productdesc.cli.main``, the example web
service through Starlette's TestClient, the noxfile through a recording session) and checks
both the one-line error and that nothing the user had was deleted or half-done.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from productdesc.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The CLI's stderr, checked to be one ``productdesc COMMAND: error: ...`` line and no more.

    Progress bars (lines redrawn with a carriage return, as the weights load) are not counted.
    """
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line and not line.startswith("\r")]
    assert len(lines) == 1 and lines[0].startswith(f"productdesc {command}: error: "), err
    return lines[0]


# -- 12: nox --install-only ---------------------------------------------------------------------
class RecordingSession:
    """Records which nox Session method ran each command (``install``, ``run``, ``run_install``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __getattr__(self, method: str) -> Any:
        def record(*args: str, **kwargs: Any) -> None:
            self.calls.append((method, args))

        return record


def test_nox_install_only_removes_torchvision_and_triton() -> None:
    pytest.importorskip("nox")
    noxfile = _load(ROOT / "noxfile.py", "productdesc_noxfile")
    session = RecordingSession()
    noxfile._install_stack(session, "dev", unsloth=True)
    uninstalls = [method for method, args in session.calls if "uninstall" in args]
    # `nox --install-only` skips session.run: only run_install and install steps happen.
    assert uninstalls == ["run_install"]


# -- 1: commands delete only what they made ---------------------------------------------------
@pytest.mark.parametrize("folder", ["data", "run"])
def test_demo_refuses_an_out_whose_folders_it_did_not_make(
    folder: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / folder / "thesis.txt"
    mine.parent.mkdir()
    mine.write_text("years of work")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    line = one_line_error(capsys, "demo")
    assert str(tmp_path / folder) in line and "--out" in line
    assert mine.read_text() == "years of work"


def test_demo_rerun_replaces_its_own_folders_and_nothing_else(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    demo = ["demo", "--out", str(out), "--model", str(tiny_llama), "--backend", "transformers"]
    short = ["--max-steps", "1", "--titles", "1", "--max-new-tokens", "2"]
    assert main([*demo, *short]) == 0
    stale = out / "run" / "stale.txt"  # what a first demo left: the rerun starts clean
    stale.write_text("old")
    assert main([*demo, *short]) == 0
    assert not stale.exists()
    assert (out / "run" / "adapter_model.safetensors").is_file()
    assert (out / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample, prepared."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    assert main(["prepare", "--sample", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_toml(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config for one short CPU step on the tiny Llama."""
    from productdesc.config import FineTuneConfig

    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    FineTuneConfig.from_dict(
        {
            "backend": "transformers",
            "model": {"model_name": str(tiny_llama), "max_seq_length": 256, "load_in_4bit": False},
            "lora": {"use_gradient_checkpointing": False},
            "training": {
                "per_device_train_batch_size": 2, "max_steps": 1, "save_steps": "off",
                "packing": False, "optim": "adamw_torch",
            },
        }
    ).to_toml(path)  # fmt: skip
    return path


def _train(data: Path, out: Path, config: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--config", str(config), *extra])


def test_train_overwrite_refuses_a_folder_that_is_not_a_run(
    tiny_toml: Path, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "checkpoints" / "photos.tar"
    mine.parent.mkdir()
    mine.write_text("holiday")
    assert _train(prepared, tmp_path, tiny_toml, "--overwrite") == 2
    line = one_line_error(capsys, "train")
    assert str(tmp_path) in line and "productdesc_config.toml" in line and "--out" in line
    assert mine.read_text() == "holiday"


def test_train_overwrite_replaces_a_runs_checkpoints_and_keeps_other_files(
    tiny_toml: Path, prepared: Path, tmp_path: Path
) -> None:
    assert _train(prepared, tmp_path, tiny_toml) == 0
    old = tmp_path / "checkpoints" / "checkpoint-99"
    old.mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    assert _train(prepared, tmp_path, tiny_toml, "--overwrite") == 0
    assert not old.exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- 3: one run at a time in an output directory -------------------------------------------------
def test_a_second_train_into_a_running_out_fails_at_once(
    tiny_toml: Path, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable, "-m", "productdesc.cli", "train", "--data", str(prepared),
            "--out", str(out), "--config", str(tiny_toml), "--max-steps", "100000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "productdesc_config.toml").is_file():  # the first is training now
            assert first.poll() is None and time.monotonic() < deadline, "first run never started"
            time.sleep(0.2)
        started = time.monotonic()
        assert _train(prepared, out, tiny_toml, "--overwrite") == 2
        assert time.monotonic() - started < 5  # at once, before any model loads
        line = one_line_error(capsys, "train")
        assert str(out) in line and "in use by another train run" in line
        assert first.poll() is None  # the first run goes on, its folder untouched
    finally:
        first.kill()
        first.wait()


# -- 5: describe --out is checked before any answer is generated ---------------------------------
def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o500)
        return folder / "answers.jsonl"
    if not Path("/proc/self").is_dir():
        pytest.skip(
            "root ignores permissions, and there is no /proc to stand for a read-only folder"
        )
    return Path("/proc/productdesc-answers.jsonl")  # even root cannot create files there


@pytest.mark.parametrize("where", ["a directory", "below a file", "unwritable"])
def test_describe_file_checks_out_before_generating(
    where: str, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    titles = tmp_path / "titles.txt"
    titles.write_text("soft cotton blanket\nkitchen knife set\n")
    (tmp_path / "file.txt").write_text("")
    out = {
        "a directory": tmp_path,
        "below a file": tmp_path / "file.txt" / "answers.jsonl",
        "unwritable": _unwritable(tmp_path),
    }[where]
    argv = ["describe", "--model", str(tiny_llama), "--file", str(titles), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "2", "--backend", "transformers"]) == 2
    line = one_line_error(capsys, "describe")
    assert f"--out {out}" in line  # and nothing else on stderr: no answer was generated


# -- 6: optional extras are checked when the command starts --------------------------------------
@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load fails the test: the check must come before the work."""
    from productdesc.backends.base import Backend

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the missing extra was reported")

    monkeypatch.setattr(Backend, "load_for_inference", refuse)
    monkeypatch.setattr(Backend, "load_model", refuse)


@pytest.mark.parametrize(
    ("missing", "command"),
    [
        ("bm25s", ["index", "{data}", "--out", "{tmp}/index"]),
        ("snowballstemmer", ["index", "{data}", "--out", "{tmp}/index"]),
        ("bm25s", ["evaluate", "--model", "{tmp}", "--data", "{data}", "--out", "{tmp}/r"]),
        (
            "rouge_score",
            ["evaluate", "--model", "{tmp}", "--data", "{data}", "--no-retrieval", "--no-base"],
        ),
        ("sacrebleu", ["evaluate", "--model", "{tmp}", "--data", "{data}", "--no-retrieval"]),
        ("bm25s", ["describe", "--model", "{tmp}", "--context", "{data}", "Nice for Mice"]),
    ],
)
def test_a_missing_extra_is_one_line_before_any_work(
    missing: str,
    command: list[str],
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_model_loads: None,
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` sees when it is not installed
    argv = [arg.format(data=prepared, tmp=tmp_path) for arg in command]
    assert main(argv) == 2
    line = one_line_error(capsys, argv[0])
    assert missing in line and 'pip install "productdesc[eval]"' in line
    assert not (tmp_path / "index").exists() and not (tmp_path / "r").exists()


# -- 9: unreadable weights and config files ------------------------------------------------------
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x00" * 64}[how]
    )


@pytest.fixture(scope="module")
def tiny_run(tiny_toml: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    assert _train(prepared, out, tiny_toml) == 0
    return out


@pytest.mark.parametrize(
    ("source", "weights", "how"),
    [("tiny_llama", "model.safetensors", how) for how in ("empty", "truncated", "garbage")]
    + [("tiny_run", "adapter_model.safetensors", how) for how in ("empty", "truncated")],
)
def test_describe_with_damaged_weights_names_the_file(
    source: str,
    weights: str,
    how: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model"
    shutil.copytree(request.getfixturevalue(source), model)
    capsys.readouterr()  # what building the fixture printed
    _damage(model / weights, how)
    assert main(["describe", "--model", str(model), "--backend", "transformers", "soap"]) == 2
    line = one_line_error(capsys, "describe")
    assert f"{model / weights} is not a readable safetensors file" in line


def test_train_on_a_damaged_base_model_names_the_file(
    tiny_llama: Path, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    _damage(model / "model.safetensors", "truncated")
    argv = ["train", "--data", str(prepared), "--out", str(tmp_path / "run"), "--model", str(model)]
    assert main([*argv, "--backend", "transformers", "--max-steps", "1"]) == 2
    line = one_line_error(capsys, "train")
    assert f"{model / 'model.safetensors'} is not a readable safetensors file" in line


def _config_error(content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``train --config`` prints for a config file holding ``content``."""
    config = tmp_path / "run.toml"
    config.write_bytes(content)
    assert main(["train", "--config", str(config), "--print-config"]) == 2
    return one_line_error(capsys, "train")


def test_a_config_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _config_error('[model]\nmodel_name = "Café"\n'.encode("latin-1"), tmp_path, capsys)
    assert f"config file {tmp_path / 'run.toml'} is not UTF-8 text" in line
    assert "save it as UTF-8" in line


def test_infinite_epochs_are_refused_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _config_error(b"[training]\nnum_train_epochs = inf\n", tmp_path, capsys)
    assert "'num_train_epochs' must be a finite number, got inf" in line


# -- 10: config errors are short and name the field; booleans are not integers ------------------
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[training]\nmax_steps = true\n", "[training] 'max_steps' must be an integer, got True"),
        ("[lora]\nr = false\n", "[lora] 'r' must be an integer, got False"),
        ("[training]\nmax_steps = 2.5\n", "[training] 'max_steps' must be an integer, got 2.5"),
        ('[training]\nlearning_rate = "fast"\n', "'learning_rate' must be a number, got 'fast'"),
        ('[model]\nload_in_4bit = "yes"\n', "'load_in_4bit' must be true or false, got 'yes'"),
        ('[lora]\nbias = "some"\n', "'bias' must be one of 'none', 'all', 'lora_only'"),
        ("[training]\nwarmup_steps = -1\n", "[training] 'warmup_steps' must be >= 0: -1"),
    ],
)
def test_config_errors_are_one_short_line_naming_the_field(
    toml: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _config_error(toml.encode(), tmp_path, capsys)
    assert message in line
    assert "Attribute(" not in line and len(line) < 160


# -- 11: the example web service -------------------------------------------------------------------
@pytest.fixture(scope="module")
def serve(tiny_llama: Path) -> tuple[ModuleType, Any]:
    pytest.importorskip("starlette", reason="examples/serve.py needs starlette")
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    from productdesc import Describer

    module = _load(ROOT / "examples" / "serve.py", "productdesc_serve_reliability")
    return module, Describer.from_pretrained(tiny_llama, backend="transformers")


def _client(serve: tuple[ModuleType, Any], **options: Any) -> Any:
    from starlette.testclient import TestClient

    module, describer = serve
    return TestClient(module.create_app(describer, **options))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"title": "soap" * 5_000}, "'title' is 20000 characters; at most 1000"),
        ({"title": "soap", "question": "why?" * 250}, "'question' is 1000 characters"),
        ({"title": "soap", "max_new_tokens": "²"}, "max_new_tokens must be an integer"),
        ({"title": "soap", "max_new_tokens": "9" * 5000}, "max_new_tokens must be an integer"),
        ({"title": "soap", "max_new_tokens": "+5"}, "max_new_tokens must be an integer"),
    ],
)
def test_serve_rejects_oversized_and_odd_input_with_400(
    serve: tuple[ModuleType, Any], params: dict[str, str], message: str
) -> None:
    response = _client(serve).get("/describe", params=params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_serve_caps_prompt_tokens(serve: tuple[ModuleType, Any]) -> None:
    response = _client(serve, max_prompt_tokens=20).get(
        "/describe", params={"title": "soft cotton blanket " * 10}
    )
    assert response.status_code == 400 and "tokens; at most 20" in response.json()["error"]


def test_serve_with_an_api_key_wants_it_as_a_bearer_token(serve: tuple[ModuleType, Any]) -> None:
    client = _client(serve, api_key="s3cret")
    params = {"title": "soap", "max_new_tokens": "2"}
    assert client.get("/describe", params=params).status_code == 401
    wrong = {"Authorization": "Bearer guess"}
    assert client.get("/describe", params=params, headers=wrong).status_code == 401
    right = {"Authorization": "Bearer s3cret"}
    assert client.get("/describe", params=params, headers=right).status_code == 200
    assert client.get("/health").text == "ok"  # no key needed to see that it runs


def test_serve_cuts_an_answer_at_the_time_limit(serve: tuple[ModuleType, Any]) -> None:
    module, _ = serve
    params = {"title": "soap", "max_new_tokens": "50"}
    body = _client(serve, timeout_s=0.0).get("/describe", params=params).text
    assert body.endswith(module.TIMED_OUT) and len(body) < 200


def test_serve_answers_503_when_the_queue_is_full(serve: tuple[ModuleType, Any]) -> None:
    client = _client(serve, max_queue=1)
    params = {"title": "soap", "max_new_tokens": "40"}
    with client.stream("GET", "/describe", params=params) as first:  # holds the one slot
        busy = client.get("/describe", params=params)
        assert busy.status_code == 503 and "busy" in busy.json()["error"]
        first.read()
    assert client.get("/describe", params=params).status_code == 200  # the slot came back
