"""The run directory: its names live in one module, and its readers."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import productdesc
from productdesc import rundir
from productdesc.config import FineTuneConfig
from productdesc.errors import UserError

PACKAGE = Path(productdesc.__file__).parent
NAMES = (
    rundir.ADAPTER_CONFIG,
    rundir.CONFIG_FILE,
    rundir.HISTORY_FILE,
    rundir.PLOT_FILE,
    rundir.CARD_FILE,
    rundir.CHECKPOINTS,
    rundir.TRAINER_STATE,
    rundir.MERGED,
    rundir.LOGS,
)


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of ``tree``'s docstring nodes (module, class and function ones)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _spells(text: str, name: str) -> bool:
    # A file name with a dot is spelled wherever a message holds it; a bare folder name
    # ("logs", "merged") only as the whole string, since prose uses those words too.
    return name in text if "." in name else text == name


def test_each_run_directory_name_is_spelled_in_rundir_only() -> None:
    spelled: dict[str, set[str]] = {name: set() for name in NAMES}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
            ):
                for name in NAMES:
                    if _spells(node.value, name):
                        spelled[name].add(path.relative_to(PACKAGE).as_posix())
    assert spelled == {name: {"rundir.py"} for name in NAMES}


def test_old_import_paths_name_the_same_files() -> None:
    from productdesc import finetune
    from productdesc.backends import _sft, base
    from productdesc.evaluate import read_loss_history

    assert (finetune.CONFIG_FILE, finetune.HISTORY_FILE) == (
        rundir.CONFIG_FILE,
        rundir.HISTORY_FILE,
    )
    assert (finetune.PLOT_FILE, finetune.CARD_FILE) == (rundir.PLOT_FILE, rundir.CARD_FILE)
    assert (finetune.CHECKPOINTS, finetune.MERGED) == (rundir.CHECKPOINTS, rundir.MERGED)
    assert (base.ADAPTER_CONFIG, _sft.LOGS) == (rundir.ADAPTER_CONFIG, rundir.LOGS)
    assert read_loss_history is rundir.read_loss_history


def test_a_run_and_its_merged_model_lead_to_the_run(tmp_path: Path) -> None:
    assert not rundir.is_run(tmp_path)
    assert rundir.read_config(tmp_path) is None
    assert rundir.read_config_text(tmp_path) is None
    assert rundir.run_of(tmp_path) is None
    FineTuneConfig().to_toml(tmp_path / rundir.CONFIG_FILE)
    merged = tmp_path / rundir.MERGED
    merged.mkdir()
    assert rundir.is_run(tmp_path)
    assert rundir.run_of(tmp_path) == tmp_path
    assert rundir.run_of(merged) == tmp_path
    text = rundir.read_config_text(tmp_path)
    assert text == (tmp_path / rundir.CONFIG_FILE).read_text(encoding="utf-8")
    assert rundir.config_of(tmp_path, text) == rundir.read_config(tmp_path) == FineTuneConfig()


def test_a_bad_run_config_names_its_file(tmp_path: Path) -> None:
    (tmp_path / rundir.CONFIG_FILE).write_text("model = [", encoding="utf-8")
    with pytest.raises(UserError, match=rundir.CONFIG_FILE):
        rundir.read_config(tmp_path)


def _adapter(directory: Path, base: str | None) -> None:
    settings = {} if base is None else {"base_model_name_or_path": base}
    (directory / rundir.ADAPTER_CONFIG).write_text(json.dumps(settings), encoding="utf-8")


def test_adapter_base(tmp_path: Path) -> None:
    assert not rundir.has_adapter(tmp_path)
    _adapter(tmp_path, "HuggingFaceTB/SmolLM2-135M")
    assert rundir.has_adapter(tmp_path)
    assert rundir.adapter_base(tmp_path) == "HuggingFaceTB/SmolLM2-135M"
    _adapter(tmp_path, None)
    with pytest.raises(UserError, match="names no base model"):
        rundir.adapter_base(tmp_path)


def test_a_base_missing_here_falls_back_to_the_run_config_name(tmp_path: Path) -> None:
    _adapter(tmp_path, str(tmp_path / "elsewhere" / "converted"))
    config = FineTuneConfig.from_dict({"model": {"model_name": "smollm2-135m"}})
    config.to_toml(tmp_path / rundir.CONFIG_FILE)
    assert rundir.adapter_base(tmp_path) == "smollm2-135m"
