"""The scripts in examples/ run end to end: prepare -> finetune -> describe -> evaluate -> serve.

Each runs as a user would run it (a subprocess), with short settings and the tiny random Llama;
the web service is tested in-process with Starlette's TestClient.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = ("prepare.py", "finetune.py", "describe.py", "evaluate.py", "serve.py")


def run_example(script: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


@pytest.fixture(scope="module")
def data_dir(workdir: Path) -> Path:
    """examples/prepare.py on its default input, the sample bundled in the package."""
    result = ok(run_example("prepare.py", "--workers", "1", cwd=workdir))
    out = workdir / "example-out" / "data"  # the script's default --out
    assert (out / "manifest.json").is_file()
    assert f"wrote {Path('example-out/data')}" in result.stdout
    return out


@pytest.fixture(scope="module")
def run_dir(workdir: Path, data_dir: Path, tiny_llama: Path) -> Path:
    out = workdir / "run"
    result = ok(
        run_example(
            "finetune.py",
            "--data", data_dir, "--out", out, "--model", tiny_llama,
            "--max-steps", "2", "--backend", "transformers", "--template", "alpaca",
            cwd=workdir,
        )
    )  # fmt: skip
    assert "2 steps in" in result.stdout
    assert (out / "adapter_model.safetensors").is_file()
    assert 'template = "alpaca"' in (out / "productdesc_config.toml").read_text()
    return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_example_has_help(script: str, tmp_path: Path) -> None:
    result = ok(run_example(script, "--help", cwd=tmp_path))
    assert result.stdout.startswith("usage:")


def test_prepare_accounts_for_every_line(data_dir: Path) -> None:
    from productdesc import AmazonTitlesDataset

    manifest = orjson.loads((data_dir / "manifest.json").read_bytes())
    assert manifest["lines"] == manifest["kept"] + sum(manifest["dropped"].values())
    splits = AmazonTitlesDataset.from_prepared(data_dir).splits
    assert splits["train"] > 0 and splits["test"] >= 3  # 80/10/10 keeps some held out


def test_prepare_reports_a_bad_option_in_one_line(tmp_path: Path) -> None:
    result = run_example("prepare.py", "--split", "50/50", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("prepare: error:") and "Traceback" not in result.stderr


def test_describe_streams_one_title(run_dir: Path, workdir: Path) -> None:
    from productdesc import Describer

    result = ok(
        run_example(
            "describe.py", "--model", run_dir, "--max-new-tokens", "8", "Nice for Mice", cwd=workdir
        )
    )
    expected = Describer.from_pretrained(run_dir, backend="transformers").describe(
        "Nice for Mice", max_new_tokens=8, repetition_penalty=1.1
    )
    assert result.stdout == expected + "\n"


def test_describe_batches_several_titles(run_dir: Path, workdir: Path) -> None:
    result = ok(
        run_example(
            "describe.py", "--model", run_dir, "--max-new-tokens", "6", "Nice for Mice", "The Prophet",
            cwd=workdir,
        )
    )  # fmt: skip
    headers = [line for line in result.stdout.splitlines() if line.startswith("== ")]
    assert [h.split("  (")[0] for h in headers] == ["== Nice for Mice", "== The Prophet"]
    for header in headers:
        tokens = int(header.split("(")[1].split()[0])
        assert 1 <= tokens <= 6


def test_describe_without_a_model_says_so(tmp_path: Path) -> None:
    result = run_example("describe.py", "--model", tmp_path / "missing", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"model directory not found: {tmp_path / 'missing'}")


def test_evaluate_writes_a_report(run_dir: Path, data_dir: Path, workdir: Path) -> None:
    out = workdir / "evaluation"
    result = ok(
        run_example(
            "evaluate.py", "--model", run_dir, "--data", data_dir, "--limit", "3",
            "--max-new-tokens", "8", "--out", out,
            cwd=workdir,
        )
    )  # fmt: skip
    for name in ("report.md", "report.html", "results.json"):
        assert (out / name).is_file(), name
    results = orjson.loads((out / "results.json").read_bytes())
    assert set(results["systems"]) == {"retrieval", "base", "tuned"}
    assert len(results["records"]) == 3
    rows = {line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()}
    assert {"retrieval", "base", "tuned"} <= rows


# -- the web service ----------------------------------------------------------------------------
def _serve_module() -> ModuleType:
    pytest.importorskip("starlette", reason="examples/serve.py needs starlette")
    pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
    spec = importlib.util.spec_from_file_location(
        "productdesc_example_serve", EXAMPLES / "serve.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_streams_the_describers_answer(run_dir: Path) -> None:
    from starlette.testclient import TestClient

    from productdesc import Describer

    serve = _serve_module()
    describer = Describer.from_pretrained(run_dir, backend="transformers")
    client = TestClient(serve.create_app(describer))

    params = {"title": "Nice for Mice", "question": "Is it for kids?", "max_new_tokens": "8"}
    with client.stream("GET", "/describe", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        body = "".join(response.iter_text())
    assert body == describer.describe("Nice for Mice", "Is it for kids?", max_new_tokens=8)

    assert client.get("/health").text == "ok"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "'title' query parameter is required"),
        ({"title": "  "}, "'title' query parameter is required"),
        ({"title": "Soap", "max_new_tokens": "0"}, "max_new_tokens must be an integer"),
        ({"title": "Soap", "max_new_tokens": "lots"}, "max_new_tokens must be an integer"),
    ],
)
def test_serve_rejects_bad_requests(query: dict[str, str], message: str) -> None:
    from starlette.testclient import TestClient

    serve = _serve_module()

    class NeverCalled:
        def stream(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("a bad request must not reach the model")

    response = TestClient(serve.create_app(NeverCalled())).get("/describe", params=query)
    assert response.status_code == 400
    assert message in response.json()["error"]
