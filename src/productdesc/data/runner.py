"""The prepare engine: parse and clean in worker processes, decide in the parent.

Work is cut into chunks of whole lines (byte ranges of a plain file, each worker reading its
own; decompressed blocks of a gzip file). A worker parses every line and runs the per-record
steps (:meth:`Pipeline.process <productdesc.data.cleaning.Pipeline.process>`), then sends back
only counts, a few rejected lines, and for each surviving record its line, its dedupe keys
(8-byte hashes), its split and its final JSON line. The parent takes chunks in input order,
checks the keys (:meth:`Pipeline.admit <productdesc.data.cleaning.Pipeline.admit>`) and
hands the records on. The output is the same for any number of workers and any chunk size.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import multiprocessing
import os
import sys
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import orjson

from productdesc.data.cleaning import CleaningStepError, Drop
from productdesc.data.config import PrepareConfig
from productdesc.data.reader import (
    HashingReader,
    InputFile,
    TruncatedStream,
    byte_ranges,
    parse_line,
    split_lines,
    stream_blocks,
)
from productdesc.data.split import Splitter
from productdesc.errors import DataFormatError

__all__ = ["Kept", "Run"]

logger = logging.getLogger(__name__)

Kept = tuple[int, bytes]  # (split index, JSON line with "\n")


class _Chunk(NamedTuple):
    """What a worker sends back for one chunk (line numbers are chunk-local, 0-based)."""

    lines: int
    dropped: dict[str, int]  # drops decided in the worker
    rejects: list[tuple[int, str, str, str]]  # (line, reason, detail, raw text)
    # Records the parent must still check against keyed steps, in line order:
    # (line, keys, split index, JSON line); split -1 means a later step dropped it, and the
    # last item is then (reason, detail, raw text).
    pending: list[tuple[int, tuple[Any, ...], int, Any]]
    error: tuple[int, str] | None  # (line, message) of a step that raised


class _Worker:
    """Processes chunks; built once per worker process."""

    def __init__(self, config: PrepareConfig, path: str | None) -> None:
        self.pipeline = config.pipeline()
        self.split_index = Splitter(config.split).index
        self.limit = config.rejects_per_reason
        self.fd = os.open(path, os.O_RDONLY) if path is not None else None

    def __call__(self, task: tuple[int, int] | bytes) -> _Chunk:
        if isinstance(task, bytes):
            data = task
        else:
            start, end = task
            data = os.pread(self.fd, end - start, start)
        return self.process(data)

    def process(self, data: bytes) -> _Chunk:
        lines = split_lines(data)
        dropped: dict[str, int] = {}
        rejects: list[tuple[int, str, str, str]] = []
        pending: list[tuple[int, tuple[Any, ...], int, Any]] = []
        limit = self.limit
        process = self.pipeline.process
        split_index = self.split_index
        dumps = orjson.dumps

        for i, raw in enumerate(lines):
            record = parse_line(raw)
            if type(record) is not Drop:
                try:
                    keys, record = process(record)
                except CleaningStepError as exc:
                    return _Chunk(len(lines), dropped, rejects, pending, (i, str(exc)))
                if type(record) is not Drop:
                    try:
                        line = dumps(record, option=orjson.OPT_APPEND_NEWLINE)
                    except TypeError as exc:
                        msg = f"a cleaning step returned a record JSON cannot hold: {exc}"
                        return _Chunk(len(lines), dropped, rejects, pending, (i, msg))
                    pending.append((i, keys, split_index(record["title"]), line))
                    continue
                if keys:  # dropped after a keyed step: the parent must still see its keys
                    pending.append((i, keys, -1, (record.reason, record.detail, _text(raw))))
                    continue
            n = dropped.get(record.reason, 0)
            dropped[record.reason] = n + 1
            if n < limit:
                rejects.append((i, record.reason, record.detail, _text(raw)))
        return _Chunk(len(lines), dropped, rejects, pending, None)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", "backslashreplace")


_WORKER: _Worker | None = None


def _init_worker(config: PrepareConfig, path: str | None) -> None:
    global _WORKER
    _WORKER = _Worker(config, path)


def _run_task(task: tuple[int, int] | bytes) -> _Chunk:
    assert _WORKER is not None
    return _WORKER(task)


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork: workers inherit the pipeline as built (steps defined in a notebook or __main__
    # work); elsewhere the platform default (spawn) pickles it.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


class Run:
    """One pass over an input: iterate it for the surviving records, chunk by chunk.

    After the iteration, :attr:`lines`, :attr:`kept`, :attr:`dropped`, :meth:`rejects`
    and :attr:`sha256` describe the run.

    Args:
        source: The checked input file.
        config: What to do.
        hash_input: Compute the input's SHA-256 on the way (for the manifest).
        progress: Show a tqdm bar with records/s on stderr.
    """

    def __init__(
        self,
        source: InputFile,
        config: PrepareConfig,
        *,
        hash_input: bool = True,
        progress: bool = False,
    ) -> None:
        self.source = source
        self.config = config
        self.hash_input = hash_input
        self.progress = progress
        self.lines = 0
        self.kept = 0
        self.dropped: Counter[str] = Counter()
        self.sha256: str | None = None
        self._rejects: dict[str, list[dict[str, Any]]] = {}
        self._pipeline = config.pipeline()
        self._memory = self._pipeline.new_memory()

    # -- parent side ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[Kept]]:
        """Yields, for each chunk in input order, its surviving ``(split, JSON line)`` pairs.

        Raises:
            DataFormatError: A truncated or corrupt gzip stream (the message has the number
                of lines read).
            CleaningStepError: A step raised (the message has the line number).
        """
        bar = self._bar()
        try:
            for chunk, position in self._results():
                kept = self._absorb(chunk)
                if bar is not None:
                    bar.update(chunk.lines)
                    if position:  # estimate the total from the share of the input done
                        bar.total = max(bar.n, round(bar.n * self.source.size / position))
                yield kept
        finally:
            if bar is not None:
                bar.close()
        logger.info(
            "read %d lines: %d kept, %d dropped %s",
            self.lines,
            self.kept,
            self.lines - self.kept,
            dict(self.dropped.most_common()),
        )

    def rejects(self) -> list[dict[str, Any]]:
        """The first ``rejects_per_reason`` dropped lines of each reason, by line number."""
        return sorted((r for rs in self._rejects.values() for r in rs), key=lambda r: r["line"])

    def _bar(self) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(desc=f"prepare {self.source.path.name}", unit="rec", unit_scale=True)

    def _absorb(self, chunk: _Chunk) -> list[Kept]:
        base = self.lines + 1  # 1-based line numbers, as editors show them
        if chunk.error is not None:
            line, message = chunk.error
            raise CleaningStepError(f"line {base + line}: {message}")
        self.lines += chunk.lines
        self.dropped.update(chunk.dropped)
        for line, reason, detail, raw in chunk.rejects:
            self._reject(reason, {"line": base + line, "detail": detail, "raw": raw})
        admit = self._pipeline.admit
        memory = self._memory
        kept: list[Kept] = []
        for line, keys, split, payload in chunk.pending:
            drop = admit(keys, memory) if keys else None
            if drop is None and split >= 0:
                kept.append((split, payload))
                continue
            if drop is None:  # dropped in the worker by a step after a keyed one
                drop = Drop(payload[0], payload[1])
                entry = {"line": base + line, "detail": drop.detail, "raw": payload[2]}
            else:
                entry = {"line": base + line, "detail": drop.detail, "record": payload}
            self.dropped[drop.reason] += 1
            self._reject(drop.reason, entry)
        self.kept += len(kept)
        return kept

    def _reject(self, reason: str, entry: dict[str, Any]) -> None:
        kept = self._rejects.setdefault(reason, [])
        if len(kept) < self.config.rejects_per_reason:
            entry = {"line": entry["line"], "reason": reason, **entry}
            if isinstance(entry.get("record"), bytes):
                entry["record"] = orjson.loads(entry["record"])
            kept.append(entry)

    # -- dispatch -------------------------------------------------------------------------------
    def _results(self) -> Iterator[tuple[_Chunk, int]]:
        """Chunk results in input order, with the input position (bytes) each one ends at."""
        plain = self.source.compression == "none"
        path = str(self.source.path) if plain else None
        tasks = self._plain_tasks() if plain else self._gzip_tasks()
        workers = self.config.workers
        if workers == 1:
            worker = _Worker(self.config, path)
            try:
                for task, position in tasks:
                    yield worker(task), position
            finally:
                if worker.fd is not None:
                    os.close(worker.fd)
            return
        with _mp_context().Pool(workers, _init_worker, (self.config, path)) as pool:
            # A bounded window of tasks in flight keeps memory flat whatever the file size
            # (Pool.imap would read the whole input ahead).
            window: deque[tuple[Any, int]] = deque()
            for task, position in tasks:
                window.append((pool.apply_async(_run_task, (task,)), position))
                if len(window) >= 3 * workers:
                    result, pos = window.popleft()
                    yield result.get(), pos
            while window:
                result, pos = window.popleft()
                yield result.get(), pos

    def _plain_tasks(self) -> Iterator[tuple[tuple[int, int], int]]:
        sha = hashlib.sha256() if self.hash_input else None
        buffer = memoryview(bytearray(1 << 20))
        with self.source.path.open("rb", buffering=0) as fh:
            for start, end in byte_ranges(
                self.source.path, self.source.size, self.config.chunk_bytes
            ):
                if sha is not None:  # the parent hashes while the workers parse
                    fh.seek(start)
                    todo = end - start
                    while todo:
                        n = fh.readinto(buffer[: min(todo, len(buffer))])
                        sha.update(buffer[:n])
                        todo -= n
                yield (start, end), end
        if sha is not None:
            self.sha256 = sha.hexdigest()

    def _gzip_tasks(self) -> Iterator[tuple[bytes, int]]:
        with self.source.path.open("rb") as raw:
            reader = HashingReader(raw)
            try:
                with gzip.GzipFile(fileobj=reader, mode="rb") as stream:  # type: ignore[arg-type]
                    for block in stream_blocks(stream, self.config.chunk_bytes):
                        yield block, reader.bytes_read
            except TruncatedStream as exc:
                raise DataFormatError(
                    f"{self.source.path} is a truncated or corrupt gzip file ({exc.cause}): "
                    f"it ends after {exc.lines:,} complete lines, and nothing was written; "
                    f"re-download or re-compress it (`gzip -t` tests a file)"
                ) from None
            while reader.read(1 << 20):  # bytes after the gzip stream are input too
                pass
        if self.hash_input:
            self.sha256 = reader.sha256.hexdigest()
