"""The prepare engine: parse and clean in worker processes, decide in the parent.

Work is cut into chunks of whole lines (byte ranges of a plain file, each worker reading its
own; decompressed blocks of a gzip file). A worker parses every line, runs the per-record
steps (:meth:`Pipeline.process <productdesc.data.pipeline.Pipeline.process>`), writes the
surviving records' JSON lines, grouped by split, to a spill file, and sends back only counts,
a few rejected lines, and for each surviving record its line number, split and keyed-step
keys (an 8-byte hash for :class:`~productdesc.data.cleaning.Dedupe`). The parent takes the
chunks in input order, judges the keys (:meth:`Pipeline.admit_all
<productdesc.data.pipeline.Pipeline.admit_all>`), and appends the survivors to the shards in
runs of consecutive lines. The output is the same for any number of workers and chunk size.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import orjson

from productdesc.data.cleaning import CleaningStepError, Drop
from productdesc.data.config import PrepareConfig
from productdesc.data.formats import TableReader
from productdesc.data.reader import (
    HashingReader,
    InputFile,
    TruncatedStream,
    byte_ranges,
    stream_blocks,
)
from productdesc.data.worker import (
    LATE,
    Chunk,
    Worker,
    init_worker,
    mp_context,
    run_task,
    unspill,
)
from productdesc.errors import DataFormatError, UserError

__all__ = ["Kept", "Run"]

logger = logging.getLogger(__name__)


class Kept(NamedTuple):
    """One chunk's surviving records, as their JSON lines grouped by split.

    Attributes:
        blobs: Per split, the JSON lines (each ending in ``\\n``) the workers produced.
        ends: Per split, the end offset of each line in its blob.
        skip: Per split, sorted positions of the lines a keyed step dropped.
        splits: Split of each pending record in input order (``LATE``: not in a blob).
        dropped: Input-order indices, into ``splits``, of the records that did not survive.
    """

    blobs: tuple[bytes | memoryview, ...]
    ends: tuple[array, ...]
    skip: tuple[list[int], ...]
    splits: bytearray
    dropped: set[int]

    def runs(self, split: int) -> Iterator[tuple[int, int]]:
        """``[start, stop)`` ranges of surviving line positions of ``split``."""
        start = 0
        for position in (*self.skip[split], len(self.ends[split])):
            if position > start:
                yield start, position
            start = position + 1

    def in_order(self) -> Iterator[tuple[int, bytes]]:
        """``(split, JSON line)`` of the survivors, in input order."""
        cursor = [0] * len(self.blobs)
        for i, split in enumerate(self.splits):
            if split == LATE:
                continue
            position = cursor[split]
            cursor[split] += 1
            if i not in self.dropped:
                ends = self.ends[split]
                yield (
                    split,
                    self.blobs[split][ends[position - 1] if position else 0 : ends[position]],
                )


class Run:
    """One pass over an input: iterate it for the surviving records, chunk by chunk.

    After the iteration, :attr:`lines`, :attr:`kept`, :attr:`dropped`, :meth:`rejects`,
    :attr:`sha256` and :attr:`input_bytes` (the input's size, known once a stream is read)
    describe the run.

    Args:
        source: The checked input file.
        config: What to do.
        hash_input: Compute the input's SHA-256 on the way (for the manifest).
        progress: Show a tqdm bar with records/s on stderr.
        spill_parent: Directory for the workers' temporary files (default: the system's).
    """

    def __init__(
        self,
        source: InputFile,
        config: PrepareConfig,
        *,
        hash_input: bool = True,
        progress: bool = False,
        spill_parent: str | os.PathLike[str] | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.hash_input = hash_input
        self.progress = progress
        self.spill_parent = spill_parent
        self.lines = 0
        self.kept = 0
        self.dropped: Counter[str] = Counter()
        self.sha256: str | None = None
        self.input_bytes = 0
        self._rejects: dict[str, list[dict[str, Any]]] = {}
        self._pipeline = config.pipeline()
        self._memory = self._pipeline.new_memory()

    # -- parent side ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Kept]:
        """Yields, for each chunk in input order, its surviving records (:class:`Kept`).

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
                    if position and self.source.size:  # the total, from the share done
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

        return tqdm(desc=f"prepare {self.source.name}", unit="rec", unit_scale=True)

    def _absorb(self, chunk: Chunk) -> Kept:
        base = self.lines + 1  # 1-based line numbers, as editors show them
        if chunk.error is not None:
            line, message = chunk.error
            raise CleaningStepError(f"line {base + line}: {message}")
        if chunk.spill is not None:
            chunk = chunk._replace(blobs=unspill(chunk.spill, chunk.ends))
        self.lines += chunk.lines
        self.dropped.update(chunk.dropped)
        for line, reason, detail, raw in chunk.rejects:
            self._reject(reason, {"line": base + line, "detail": detail, "raw": raw})

        # Keyed steps judge the pending records in input order; a keyed drop of a record a
        # later step dropped in the worker wins, as it came first.
        decided = dict(self._pipeline.admit_all(chunk.keys, self._memory))
        skip: tuple[list[int], ...] = tuple([] for _ in chunk.blobs)
        for i in sorted(decided.keys() | chunk.late.keys()):
            split = chunk.splits[i]
            line = base + chunk.rows[i]
            drop = decided.get(i)
            if split == LATE:
                reason, detail, raw = chunk.late[i]
                if drop is None:
                    drop = Drop(reason, detail)
                entry: dict[str, Any] = {"line": line, "detail": drop.detail, "raw": raw}
            else:
                assert drop is not None
                position = chunk.splits.count(split, 0, i)  # its place in the split's blob
                skip[split].append(position)
                ends = chunk.ends[split]
                start = ends[position - 1] if position else 0
                record = orjson.loads(chunk.blobs[split][start : ends[position]])
                entry = {"line": line, "detail": drop.detail, "record": record}
            self.dropped[drop.reason] += 1
            self._reject(drop.reason, entry)
        dropped = decided.keys() | chunk.late.keys()
        self.kept += len(chunk.rows) - len(dropped)
        return Kept(chunk.blobs, chunk.ends, skip, chunk.splits, dropped)

    def _reject(self, reason: str, entry: dict[str, Any]) -> None:
        kept = self._rejects.setdefault(reason, [])
        if len(kept) < self.config.rejects_per_reason:
            kept.append({"line": entry["line"], "reason": reason, **entry})

    # -- dispatch -------------------------------------------------------------------------------
    def _results(self) -> Iterator[tuple[Chunk, int]]:
        """Chunk results in input order, with the input position (bytes) each one ends at."""
        # Workers read their own byte ranges of a plain file; a stream or a gzip file is read
        # (and decompressed) here, in blocks handed to them, as is a table, as JSON lines.
        jsonl = self.source.format == "jsonl"
        ranges = jsonl and self.source.compression == "none" and not self.source.is_stream
        path = str(self.source.path) if ranges else None
        if ranges:
            tasks = self._plain_tasks()
        else:
            tasks = self._stream_tasks() if jsonl else self._table_tasks()
        workers = self.config.workers
        if workers == 1:
            worker = Worker(self.config, path, None)
            try:
                for seq, (task, position) in enumerate(tasks):
                    yield worker(seq, task), position
            finally:
                if worker.fd is not None:
                    os.close(worker.fd)
            return
        spill_dir = tempfile.mkdtemp(prefix=".spill-", dir=self.spill_parent)
        # Not multiprocessing.Pool: a worker killed mid-task (the kernel's OOM killer) loses
        # that task for good, and Pool waits for its result forever; the executor fails
        # every pending future with BrokenProcessPool instead.
        pool = ProcessPoolExecutor(
            workers,
            mp_context(),
            initializer=init_worker,
            initargs=(self.config, path, spill_dir, os.getpid()),
        )
        try:
            # The workers fork at the first submit: make it before the input is read, whose
            # readers (pyarrow's) may start threads that a fork would copy mid-work.
            pool.submit(int).result()
            yield from self._pooled(pool, tasks)
        except BrokenProcessPool:
            raise UserError(
                "a prepare worker process was killed (by the system, most often for lack of "
                "memory) or failed to start; nothing was written: run it again, with fewer "
                "--workers if memory is short"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            shutil.rmtree(spill_dir, ignore_errors=True)

    def _pooled(
        self, pool: ProcessPoolExecutor, tasks: Iterator[tuple[Any, int]]
    ) -> Iterator[tuple[Chunk, int]]:
        # A bounded window of tasks in flight keeps memory flat whatever the file size
        # (Executor.map would read the whole input ahead).
        window: deque[tuple[Future, int]] = deque()
        try:
            for seq, (task, position) in enumerate(tasks):
                window.append((pool.submit(run_task, seq, task), position))
                if len(window) >= 3 * self.config.workers:
                    yield window[0][0].result(), window[0][1]
                    window.popleft()
            while window:
                yield window[0][0].result(), window[0][1]
                window.popleft()
        except BaseException:
            # Ctrl-C, an error, or the consumer stopping: let the tasks in flight end first,
            # so that no worker is still writing its spill file when the folder is removed.
            for future, _ in window:
                future.cancel()  # only those no worker has started
            wait([future for future, _ in window])
            raise

    def _plain_tasks(self) -> Iterator[tuple[tuple[int, int], int]]:
        size = self.source.size
        assert size is not None  # a regular file
        sha = hashlib.sha256() if self.hash_input else None
        buffer = memoryview(bytearray(1 << 20))
        with self.source.path.open("rb", buffering=0) as fh:
            for start, end in byte_ranges(self.source.path, size, self.config.chunk_bytes):
                if sha is not None:  # the parent hashes while the workers parse
                    fh.seek(start)
                    todo = end - start
                    while todo:
                        n = fh.readinto(buffer[: min(todo, len(buffer))])
                        sha.update(buffer[:n])
                        todo -= n
                yield (start, end), end
        self.input_bytes = size
        if sha is not None:
            self.sha256 = sha.hexdigest()

    def _table_tasks(self) -> Iterator[tuple[bytes, int]]:
        reader = TableReader(
            self.source, self.config.column_names(), self.config.chunk_bytes, self.hash_input
        )
        for block in reader.blocks():
            yield block, 0  # no byte position: the bar shows no total
        self.input_bytes = reader.input_bytes
        self.sha256 = reader.sha256

    def _stream_tasks(self) -> Iterator[tuple[bytes, int]]:
        gz = self.source.compression == "gzip"
        with self.source.open_raw() as raw:
            reader = HashingReader(raw)
            try:
                with (
                    gzip.GzipFile(fileobj=reader, mode="rb")  # type: ignore[arg-type]
                    if gz
                    else contextlib.nullcontext(reader)
                ) as stream:
                    for block in stream_blocks(stream, self.config.chunk_bytes):
                        yield block, reader.bytes_read
            except TruncatedStream as exc:
                path = self.source.path
                raise DataFormatError(
                    f"{path} is a truncated or corrupt gzip file ({exc.cause}): it ends after "
                    f"{exc.lines:,} complete lines, and nothing was written; re-download or "
                    f"re-compress it (`gzip -t` tests a file)"
                    if gz
                    else f"reading {path} failed after {exc.lines:,} complete lines "
                    f"({exc.cause}); nothing was written"
                ) from None
            while reader.read(1 << 20):  # bytes after the gzip stream are input too
                pass
        self.input_bytes = reader.bytes_read
        if self.hash_input:
            self.sha256 = reader.sha256.hexdigest()
