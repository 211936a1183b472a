"""The training run directory: the one place that knows its file names and reads them back.

:class:`~productdesc.finetune.LoraFineTuner` writes a run directory; the describer, the
evaluation and the GGUF export read it. They all name its files through this module, so that
renaming one (or adding one) is a change here, not a search through the package::

    run/
        adapter_config.json, adapter_model.safetensors, tokenizer files
        productdesc_config.toml   CONFIG_FILE: the exact FineTuneConfig used
        loss_history.json         HISTORY_FILE
        loss.png                  PLOT_FILE
        README.md                 CARD_FILE: the model card
        checkpoints/              CHECKPOINTS
            checkpoint-N/         complete once its TRAINER_STATE is whole JSON
        merged/                   MERGED: with merge=True
        logs/                     LOGS: TensorBoard's event files

Importing it is cheap (no torch): the CLI and the light readers use it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from productdesc.config import FineTuneConfig, read_config_file
from productdesc.errors import UserError

__all__ = [
    "ADAPTER_CONFIG",
    "CARD_FILE",
    "CHECKPOINTS",
    "CONFIG_FILE",
    "HISTORY_FILE",
    "LOGS",
    "MERGED",
    "PLOT_FILE",
    "TRAINER_STATE",
    "adapter_base",
    "config_of",
    "has_adapter",
    "is_complete_checkpoint",
    "is_run",
    "read_config",
    "read_config_text",
    "read_loss_history",
    "run_of",
]

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's name; PEFT writes and reads it
CONFIG_FILE = "productdesc_config.toml"
HISTORY_FILE = "loss_history.json"
PLOT_FILE = "loss.png"
CARD_FILE = "README.md"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"  # the last file transformers writes into a checkpoint
MERGED = "merged"
LOGS = "logs"


def is_run(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a productdesc training run (its :data:`CONFIG_FILE`)."""
    return (Path(directory) / CONFIG_FILE).is_file()


def has_adapter(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a LoRA adapter (its :data:`ADAPTER_CONFIG`)."""
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def read_config(directory: str | os.PathLike[str]) -> FineTuneConfig | None:
    """The :class:`~productdesc.config.FineTuneConfig` a run trained with, or ``None`` when
    ``directory`` is no run (a merged or plain model directory).

    Raises:
        UserError: The config file is there but unreadable or not a valid config.
    """
    return config_of(directory, read_config_text(directory))


def read_config_text(directory: str | os.PathLike[str]) -> str | None:
    """The run's :data:`CONFIG_FILE` as written, or ``None`` when ``directory`` is no run.

    With :func:`config_of`, a reader that keeps the text (an evaluation's provenance) and
    needs the config reads the file once.

    Raises:
        UserError: The config file is there but unreadable.
    """
    path = Path(directory) / CONFIG_FILE
    return read_config_file(path) if path.is_file() else None


def config_of(directory: str | os.PathLike[str], text: str | None) -> FineTuneConfig | None:
    """The config in ``text``, :func:`read_config_text` of ``directory`` (``None``: no run).

    Raises:
        UserError: ``text`` is not a valid config.
    """
    return (
        None if text is None else FineTuneConfig.from_toml_text(text, Path(directory) / CONFIG_FILE)
    )


def run_of(source: str | os.PathLike[str]) -> Path | None:
    """The run ``source`` is, or whose :data:`MERGED` model it is; ``None`` for neither."""
    source = Path(source)
    for directory in (source, source.parent) if source.name == MERGED else (source,):
        if is_run(directory):
            return directory
    return None


def adapter_base(directory: str | os.PathLike[str]) -> str:
    """The base model an adapter directory's :data:`ADAPTER_CONFIG` names.

    A base recorded as an absolute path that is not on this machine (a run copied from
    another, whose base was a converted GGUF or embedded model there) falls back to the name
    the run's config gives (``"smollm2-135m"``, a ``.gguf`` path), which resolves here.

    Raises:
        UserError: The adapter config is unreadable or names no base model.
    """
    adapter_config = Path(directory) / ADAPTER_CONFIG
    try:
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {adapter_config}: {exc}") from None
    if not base:
        raise UserError(
            f"{adapter_config} names no base model (base_model_name_or_path); set it to the "
            f"model the adapter was trained on"
        )
    if Path(base).is_absolute() and not Path(base).exists():
        config = read_config(adapter_config.parent)
        if config is not None:
            name = config.model.model_name
            logger.info(
                "base model %s is not here; loading %s as the run's config names it", base, name
            )
            return name
    return base


def read_loss_history(model_dir: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """The run's :data:`HISTORY_FILE` rows (``step``, ``loss``, optional ``eval_loss``, ``epoch``).

    Returns ``None`` when the file is absent; a malformed file is logged and also gives ``None``
    (the report then says why it has no curve), since a broken log must not sink an evaluation.
    """
    path = Path(model_dir) / HISTORY_FILE
    try:
        rows = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        logger.warning("%s is not valid JSON (%s); the report has no loss curve", path, exc)
        return None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "step" in r for r in rows):
        logger.warning("%s is not a list of {step, loss, ...}; the report has no loss curve", path)
        return None
    return rows


def is_complete_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether the Trainer finished writing checkpoint ``path``: its ``trainer_state.json``,
    the last file it writes there, is whole JSON.

    The file's presence is not enough: transformers writes it in place, not atomically, so a
    run killed while writing it leaves it empty or cut short, and a resume from there would
    fail in ``json.loads``. The files written before it are whole once it exists (a kill
    loses no data the process wrote; a power cut could, as nothing is fsynced).
    """
    try:
        state = json.loads((Path(path) / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state
