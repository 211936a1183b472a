"""Data-parallel runs: this process's place in a ``torchrun`` or ``accelerate launch`` job.

Both launchers start one process per GPU and tell each its place in environment variables
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``). ``transformers.Trainer`` reads them and trains with
DistributedDataParallel (DDP) by itself: each process trains its own share of every epoch's
batches and gradients are averaged. This module adds what a whole run needs around the trainer:

* :func:`is_main_process`: only global rank 0 writes outputs and logs progress;
* :func:`barrier` and :func:`main_process_first`: the other ranks wait for rank 0 where it
  changes the file system (emptying the output directory, converting a model once);
* :func:`init`: creates the process group as the Trainer would, so ranks can wait for each other
  before the Trainer exists; it also keeps NVLink multicast off (``NCCL_NVLS_ENABLE=0``) and
  quiets the other ranks (no progress bars; productdesc logs warnings only, as the Trainer's
  ``log_level_replica`` does), so the console shows one run, not N.

Outside a launch every function is a no-op that answers as rank 0 of 1, and nothing imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

__all__ = [
    "NCCL_NVLS_ENV",
    "barrier",
    "init",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "main_process_first",
    "rank",
    "shutdown",
    "world_size",
]

logger = logging.getLogger(__name__)

NCCL_NVLS_ENV = "NCCL_NVLS_ENABLE"
# transformers' TrainingArguments.ddp_timeout default: rank 0 may merge a model while others wait.
_TIMEOUT_S = 1800


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        return default


def world_size() -> int:
    """How many processes train together (``WORLD_SIZE``; 1 outside a launch)."""
    return max(_env_int("WORLD_SIZE", 1), 1)


def rank() -> int:
    """This process's global rank (``RANK``; 0 outside a launch)."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its host, which is the GPU it owns (``LOCAL_RANK``)."""
    return _env_int("LOCAL_RANK", 0)


def is_distributed() -> bool:
    """Whether this process is one of several started by ``torchrun``/``accelerate launch``."""
    return world_size() > 1


def is_main_process() -> bool:
    """Whether this process writes the run's outputs and logs its progress (global rank 0)."""
    return rank() == 0


def init() -> None:
    """Join the launch's process group (NCCL on GPU, gloo on CPU), as the HF Trainer would.

    The Trainer joins it later anyway and reuses a group that exists. Does nothing outside a
    launch; the work is done once a process.
    """
    if is_distributed():
        _join()


@functools.cache
def _join() -> None:
    # A LoRA run all-reduces a few MB of gradients a step, which NVLink multicast (NVLS) does
    # not speed up; on shared hosts it has taken GPUs out of service. Set it to 1 to opt in.
    os.environ.setdefault(NCCL_NVLS_ENV, "0")
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    cuda = torch.cuda.is_available()
    if cuda:  # one GPU a process: models load there, NCCL waits there
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    if not torch.distributed.is_initialized():
        state = PartialState(cpu=not cuda, timeout=timedelta(seconds=_TIMEOUT_S))
        if is_main_process():
            logger.info(
                "data-parallel run: %d processes, %s backend", state.num_processes, state.backend
            )
    if not is_main_process():
        _quiet_replica()


def _quiet_replica() -> None:
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    package = logging.getLogger("productdesc")
    package.setLevel(max(package.getEffectiveLevel(), logging.WARNING))


def barrier() -> None:
    """Wait until every process of the launch gets here (no-op outside a launch)."""
    if not is_distributed():
        return
    init()
    import torch

    # NCCL needs the GPU to wait on; init() made it this rank's (LOCAL_RANK).
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    torch.distributed.barrier(device_ids=devices)


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (for one-off caches, downloads).

    If the block fails on rank 0, the other ranks never run it: the launcher stops them.
    """
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def shutdown() -> None:
    """Leave the process group at the end of a program (the CLI calls it; no-op when none)."""
    if not is_distributed():
        return
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
