"""What a prepare worker process does with one task: parse a chunk of lines, run the
per-record steps, spill the survivors' JSON lines to a file, and send back counts and keys
(see :mod:`productdesc.data.runner`, which hands out the tasks and decides in the parent)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from array import array
from typing import Any, NamedTuple

import orjson

from productdesc.data.cleaning import CleaningStepError, Drop
from productdesc.data.config import PrepareConfig
from productdesc.data.reader import parse_line, split_lines
from productdesc.data.split import SPLIT_NAMES, Splitter

__all__ = ["LATE", "Chunk", "Worker", "init_worker", "mp_context", "run_task", "unspill"]

LATE = 255  # split marker of a record dropped by a step after a keyed one


class Chunk(NamedTuple):
    """What a worker sends back for one chunk (line numbers are chunk-local, 0-based).

    *Pending* records are those the parent must still judge: every record the per-record
    steps kept, and the few dropped after a keyed step (whose keys still count).
    """

    lines: int
    dropped: dict[str, int]  # drops decided in the worker
    rejects: list[tuple[int, str, str, str]]  # (line, reason, detail, raw text)
    rows: list[int]  # line of each pending record, in input order
    keys: list[Any]  # its keys (bare with Pipeline.single_keyed, else tuples)
    splits: bytearray  # its split index, or LATE
    blobs: tuple[bytes, ...]  # per split: the JSON lines of its pending records, joined
    spill: str | None  # or the file they were written to, one after the other
    ends: tuple[array, ...]  # per split: end offset of each of those lines in the blob
    late: dict[int, tuple[str, str, str]]  # pending index -> (reason, detail, raw) if LATE
    error: tuple[int, str] | None  # (line, message) of a step that raised


class Worker:
    """Processes chunks; built once per worker process.

    Args:
        config: The run's config.
        path: The plain input file (workers read their byte ranges), or ``None``.
        spill_dir: Where to write each chunk's JSON lines for the parent, which reads them
            from the page cache: cheaper for both sides than pickling megabytes through a
            pipe. ``None`` keeps them in the result (one process).
    """

    def __init__(self, config: PrepareConfig, path: str | None, spill_dir: str | None) -> None:
        self.pipeline = config.pipeline()
        self.split_index = Splitter(config.split).index
        self.limit = config.rejects_per_reason
        self.fields = config.column_names()
        self.fd = os.open(path, os.O_RDONLY) if path is not None else None
        self.spill_dir = spill_dir

    def __call__(self, seq: int, task: tuple[int, int] | bytes) -> Chunk:
        if isinstance(task, bytes):
            data = task
        else:
            start, end = task
            data = os.pread(self.fd, end - start, start)
        chunk = self.process(data)
        if self.spill_dir is None or chunk.error is not None:
            return chunk
        spill = os.path.join(self.spill_dir, f"chunk-{seq:08d}")
        with open(spill, "wb") as fh:
            for blob in chunk.blobs:
                fh.write(blob)
        return chunk._replace(blobs=(), spill=spill)

    def process(self, data: bytes) -> Chunk:
        lines = split_lines(data)
        dropped: dict[str, int] = {}
        rejects: list[tuple[int, str, str, str]] = []
        rows: list[int] = []
        keys: list[Any] = []
        splits = bytearray()
        parts: tuple[list[bytes], ...] = tuple([] for _ in SPLIT_NAMES)
        ends = tuple(array("Q") for _ in SPLIT_NAMES)
        sizes = [0] * len(SPLIT_NAMES)
        late: dict[int, tuple[str, str, str]] = {}
        limit = self.limit
        process = self.pipeline.process
        bare = self.pipeline.single_keyed
        split_index = self.split_index
        dumps = orjson.dumps
        fields = self.fields

        def failed(i: int, message: str) -> Chunk:
            blobs = tuple(b"" for _ in SPLIT_NAMES)
            return Chunk(
                len(lines),
                dropped,
                rejects,
                [],
                [],
                bytearray(),
                blobs,
                None,
                ends,
                {},
                (i, message),
            )

        for i, raw in enumerate(lines):
            record = parse_line(raw, fields)
            if type(record) is not Drop:
                try:
                    record_keys, record = process(record)
                except CleaningStepError as exc:
                    return failed(i, str(exc))
                if type(record) is not Drop:
                    try:
                        line = dumps(record, option=orjson.OPT_APPEND_NEWLINE)
                    except TypeError as exc:
                        return failed(
                            i, f"a cleaning step returned a record JSON cannot hold: {exc}"
                        )
                    split = split_index(record["title"])
                    parts[split].append(line)
                    sizes[split] += len(line)
                    ends[split].append(sizes[split])
                elif record_keys:  # dropped after a keyed step: its keys still count
                    split = LATE
                    late[len(rows)] = (record.reason, record.detail, _text(raw))
                else:
                    split = -1
                if split >= 0:
                    rows.append(i)
                    keys.append(record_keys[0] if bare else record_keys)
                    splits.append(split)
                    continue
            n = dropped.get(record.reason, 0)
            dropped[record.reason] = n + 1
            if n < limit:
                rejects.append((i, record.reason, record.detail, _text(raw)))
        blobs = tuple(b"".join(p) for p in parts)
        return Chunk(
            len(lines), dropped, rejects, rows, keys, splits, blobs, None, ends, late, None
        )


def unspill(path: str, ends: tuple[array, ...]) -> tuple[memoryview, ...]:
    with open(path, "rb") as fh:
        data = memoryview(fh.read())
    os.unlink(path)
    blobs = []
    start = 0
    for split_ends in ends:
        stop = start + (split_ends[-1] if split_ends else 0)
        blobs.append(data[start:stop])
        start = stop
    return tuple(blobs)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", "backslashreplace")


_WORKER: Worker | None = None


def init_worker(config: PrepareConfig, path: str | None, spill_dir: str, parent: int) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group: the parent stops the pool and cleans up, so a
    # worker printing its own KeyboardInterrupt traceback would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # An executor's worker waits on its task queue for good once the parent is gone (killed:
    # no shutdown comes), keeping the parent's pipes and the folder's spill files open.
    # The parent's pid as it forked: one that died before this line would be missed by getppid.
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _WORKER = Worker(config, path, spill_dir)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def run_task(seq: int, task: tuple[int, int] | bytes) -> Chunk:
    assert _WORKER is not None
    return _WORKER(seq, task)


def mp_context() -> multiprocessing.context.BaseContext:
    # fork: workers inherit the pipeline as built (steps defined in a notebook or __main__
    # work); elsewhere the platform default (spawn) pickles it.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()
