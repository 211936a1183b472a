"""Where a training run writes, before it writes: the output directory checked for a fresh
run, a resume (same config, a complete checkpoint) or an overwrite (only of a productdesc run),
its lock, and what a killed run left there (removed by the next)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from productdesc import distributed
from productdesc._io import leftovers, remove_leftovers
from productdesc._lock import output_lock
from productdesc.config import FineTuneConfig
from productdesc.errors import OutputDirError, UserError
from productdesc.rundir import (
    CARD_FILE,
    CHECKPOINTS,
    CONFIG_FILE,
    HISTORY_FILE,
    LOGS,
    MERGED,
    PLOT_FILE,
    TRAINER_STATE,
    is_complete_checkpoint,
    is_run,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ADAPTER_SCRATCH",
    "check_output_dir",
    "checkpoint_of",
    "locked_run_dir",
    "prepare_output_dir",
    "run_leftovers",
]


def prepare_output_dir(
    out: Path, resume: Any, overwrite: bool, run_config: FineTuneConfig
) -> str | None:
    """Check ``out`` for a run of ``run_config`` (:func:`check_output_dir`), then, on the main
    process, remove what a killed run left and, when overwriting, the old run's folders; return
    the checkpoint to resume from."""
    main = distributed.is_main_process()
    checkpoint, clear = check_output_dir(out, resume, overwrite, run_config)
    # Every rank checks the directory as it was, before rank 0 changes it.
    distributed.barrier()
    if main:  # under the lock: what a killed run left, no writer's at work
        remove_leftovers(run_leftovers(out))
    if clear and main:
        for sub in (CHECKPOINTS, MERGED, LOGS):
            shutil.rmtree(out / sub, ignore_errors=True)
    return checkpoint


def check_output_dir(
    out: Path, resume: Any, overwrite: bool, run_config: FineTuneConfig
) -> tuple[str | None, bool]:
    """``(checkpoint to resume from, whether to clear old checkpoints)``; changes nothing."""
    config_file = out / CONFIG_FILE
    if resume:
        if not is_run(out):
            raise OutputDirError(f"nothing to resume in {out}: it has no {CONFIG_FILE}")
        previous = tomllib.loads(config_file.read_text(encoding="utf-8"))
        differ = _differences(previous, run_config.to_dict())
        if differ:
            raise OutputDirError(
                f"{out} holds a run with another config ({', '.join(differ)} differ); "
                f"resume it with FineTuneConfig.from_toml({str(config_file)!r})"
            )
        return str(checkpoint_of(out, resume)), False
    if out.is_file():
        raise OutputDirError(f"output directory {out} is a file")
    if out.is_dir() and set(out.iterdir()) - set(run_leftovers(out)):
        if not overwrite:
            raise OutputDirError(
                f"output directory {out} is not empty; choose a new one, continue the run "
                f"there (resume_from_checkpoint=True, CLI --resume) or overwrite it "
                f"(overwrite=True, CLI --overwrite)"
            )
        # Overwriting deletes checkpoints/ and merged/: only where the run's config proves
        # a run made them, never in a folder that merely has directories of those names.
        if not is_run(out):
            raise OutputDirError(
                f"output directory {out} is not empty and holds no productdesc run (no "
                f"{CONFIG_FILE}), so overwrite (CLI --overwrite) would delete what is not "
                f"a run's; choose a new output directory (CLI --out)"
            )
        return None, True
    return None, False


@contextlib.contextmanager
def locked_run_dir(out: Path, *, create: bool) -> Iterator[None]:
    """Hold ``out``'s lock (:func:`~productdesc._lock.output_lock`) on the main process for the
    block, creating ``out`` first when ``create``; no lock where it is not a directory (a file,
    or nothing to resume: the directory check then says which).

    Raises:
        OutputDirError: Another run holds the lock (in this process too), or ``out`` cannot
            be created.
    """
    if not distributed.is_main_process():  # rank 0 alone writes the run
        yield
        return
    if create and not out.exists():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputDirError(f"cannot create output directory {out}: {exc}") from None
    if not out.is_dir():
        yield
        return
    with output_lock(out, "train"):
        yield


# The name of the adapter's scratch folder (".adapter.XXXXXXXX"), which run_leftovers matches.
ADAPTER_SCRATCH = "adapter"


def run_leftovers(out: Path) -> list[Path]:
    """The temporary files and scratch folders (``_save_adapter``'s, ``save_merged``'s) a
    killed run left in ``out``: a run removes them first, and a folder holding only them counts
    as empty."""
    return leftovers(
        out, (CONFIG_FILE, HISTORY_FILE, PLOT_FILE, CARD_FILE), (ADAPTER_SCRATCH, MERGED)
    )


def checkpoint_of(out: Path, resume: Any) -> Path:
    # A checkpoint a kill cut short (trainer_state.json empty or partial) is passed over.

    if resume is True:
        complete = [
            p for p in (out / CHECKPOINTS).glob("checkpoint-*") if is_complete_checkpoint(p)
        ]
        if not complete:
            raise UserError(
                f"no complete checkpoint in {out / CHECKPOINTS} to resume from (checkpoints are "
                f"written every training.save_steps steps): start the run again with "
                f"overwrite=True (CLI --overwrite)"
            )
        return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]))
    path = Path(resume)
    if not is_complete_checkpoint(path):
        raise UserError(f"{path} is not a complete checkpoint (no whole {TRAINER_STATE})")
    return path


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found
