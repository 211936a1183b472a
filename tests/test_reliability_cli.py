"""Issue 20: nothing lost, nothing outside its folder touched, one clear line for every bad input.

Each test drives what a user runs (the CLI through ``productdesc.cli.main``, the example web
service through Starlette's TestClient, the noxfile through a recording session) and checks
both the one-line error and that nothing the user had was deleted or half-done.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The CLI's stderr, checked to be a single ``productdesc COMMAND: error: ...`` line."""
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert lines, "no error message"
    assert lines[-1].startswith(f"productdesc {command}: error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


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
