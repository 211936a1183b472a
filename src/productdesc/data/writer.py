"""Writing a prepared directory: shards, rejects and manifest, never a half-done mixture.

A run holds the directory's lock (:func:`~productdesc._lock.output_lock`) from its first check
to its last rename, and writes everything, the manifest last, into a hidden staging directory
inside the output directory. Renaming that directory to ``.publishing`` commits the run; then
the old files and manifest are removed and the new files moved in, the manifest last. A run
killed after the commit leaves ``.publishing``, and the next prepare into the directory
finishes that publish first; one that fails or is killed before it leaves what was there
untouched (the next run removes its staging directory).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from productdesc._io import atomic_write
from productdesc._lock import output_lock
from productdesc._version import __version__
from productdesc.data.config import PrepareConfig
from productdesc.data.manifest import (
    MANIFEST_NAME,
    PUBLISHING_NAME,
    FileInfo,
    InputInfo,
    Manifest,
    SplitInfo,
)
from productdesc.data.reader import UNREADABLE_REASONS, InputFile
from productdesc.data.runner import Run
from productdesc.data.split import SPLIT_NAMES
from productdesc.errors import DataFormatError, OutputDirError, UserError

__all__ = ["REJECTS_NAME", "write_prepared"]

logger = logging.getLogger(__name__)

REJECTS_NAME = "rejects.jsonl"
_STAGING_PREFIX = ".prepare-"
# What cures a failed write, by errno.
_CURES = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (a disk quota is reached)",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}


class _ShardWriter:
    """Streams one split's lines into ``<split>-00000.jsonl``, ``-00001`` ... of ``size`` rows."""

    def __init__(self, directory: Path, split: str, size: int) -> None:
        self.directory = directory
        self.split = split
        self.size = size
        self.shards: list[FileInfo] = []
        self._stack = contextlib.ExitStack()
        self._fh: IO[bytes] | None = None
        self._rows = 0
        self._bytes = 0
        self._sha = hashlib.sha256()

    def write(
        self, blob: bytes | memoryview, ends: Sequence[int], runs: Iterable[tuple[int, int]]
    ) -> None:
        """Append the lines ``[start, stop)`` of each run; ``ends[i]`` is where line i ends."""
        view = memoryview(blob)
        for start, stop in runs:
            while start < stop:
                if self._fh is None:
                    name = f"{self.split}-{len(self.shards):05d}.jsonl"
                    self._fh = self._stack.enter_context(atomic_write(self.directory / name, "wb"))
                take = min(stop - start, self.size - self._rows)
                data = view[ends[start - 1] if start else 0 : ends[start + take - 1]]
                self._fh.write(data)
                self._sha.update(data)
                self._rows += take
                self._bytes += len(data)
                start += take
                if self._rows == self.size:
                    self._finish()

    def _finish(self) -> None:
        self._stack.close()  # fsync and rename into place
        name = f"{self.split}-{len(self.shards):05d}.jsonl"
        self.shards.append(FileInfo(name, self._rows, self._bytes, self._sha.hexdigest()))
        self._fh, self._rows, self._bytes, self._sha = None, 0, 0, hashlib.sha256()

    def close(self) -> SplitInfo:
        if self._fh is not None:
            self._finish()
        return SplitInfo(sum(s.rows for s in self.shards), tuple(self.shards))

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed)."""
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def write_prepared(
    source: InputFile, config: PrepareConfig, out_dir: str | os.PathLike[str], progress: bool
) -> Manifest:
    """Run ``config`` over ``source`` and publish the result in ``out_dir``.

    Raises:
        OutputDirError: ``out_dir`` is unusable, in use by another run, holds a prepare of
            another config/input, or could not be written (a full disk: nothing published).
        DataFormatError: The input is broken beyond single lines (e.g. a truncated gzip),
            gives no records, or has more unreadable lines than ``config.max_unreadable``.
    """
    out = Path(out_dir)
    config_dict = _jsonable(config.to_dict())
    created = _make_out_dir(out)
    with output_lock(out, "prepare"):
        try:
            previous = _check_out_dir(out, config_dict, source)
            manifest = _prepare_into(out, source, config, config_dict, previous, progress)
        except BaseException:
            if created:  # leave no empty directory behind that we made
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
    logger.info("prepared %s: %d records in %s", source.name, manifest.kept, out)
    return manifest


def _prepare_into(
    out: Path,
    source: InputFile,
    config: PrepareConfig,
    config_dict: dict[str, Any],
    previous: Manifest | None,
    progress: bool,
) -> Manifest:
    try:
        with _staging(out) as staging:
            run = Run(source, config, hash_input=True, progress=progress, spill_parent=staging)
            writers = [_ShardWriter(staging, name, config.shard_size) for name in SPLIT_NAMES]
            try:
                for kept in run:
                    for split, writer in enumerate(writers):
                        writer.write(kept.blobs[split], kept.ends[split], kept.runs(split))
                splits = {w.split: w.close() for w in writers}
            except BaseException:
                for writer in writers:
                    writer.abort()
                raise
            assert run.sha256 is not None
            if previous is not None and previous.input.sha256 != run.sha256:
                raise OutputDirError(_other_input(out, previous.input, None, run.sha256))
            _check_yield(source, config, run)
            manifest = Manifest(
                input=InputInfo(
                    source.name,
                    run.input_bytes,
                    run.sha256,
                    source.compression,
                    None if source.format == "jsonl" else source.format,
                    source.split,
                ),
                config=config_dict,
                lines=run.lines,
                kept=run.kept,
                dropped=dict(sorted(run.dropped.items())),
                splits=splits,
                rejects=_write_rejects(staging, run.rejects()),
                productdesc_version=__version__,
            )
            manifest.save(staging)
            os.replace(staging, out / PUBLISHING_NAME)  # the commit
    except OSError as exc:
        raise _write_error(out, exc, f"{out} is as it was") from None
    _finish_publish(out)
    return manifest


def _write_error(out: Path, exc: OSError, state: str) -> OutputDirError:
    """One line for a failed write (a full disk, in this process or a worker)."""
    where = f": {exc.filename}" if exc.filename else ""
    cure = _CURES.get(exc.errno, "fix that")  # type: ignore[arg-type]
    return OutputDirError(
        f"prepare into {out} failed ({exc.strerror or exc}{where}); {state}: {cure} and run "
        f"it again"
    )


def _check_yield(source: InputFile, config: PrepareConfig, run: Run) -> None:
    """Fail a run whose input is not ``trn.json`` after all (every line unreadable or dropped)."""
    counts = ", ".join(f"{reason} {n:,}" for reason, n in run.dropped.most_common())
    if run.kept == 0:
        dropped = f", all dropped ({counts})" if counts else ""
        raise DataFormatError(
            f"{source.path} gave no records: {run.lines:,} lines read{dropped}; nothing was written"
        )
    unreadable = sum(run.dropped[reason] for reason in UNREADABLE_REASONS)
    if unreadable > config.max_unreadable * run.lines:
        first = next(r for r in run.rejects() if r["reason"] in UNREADABLE_REASONS)
        raise DataFormatError(
            f"{source.path}: {unreadable:,} of {run.lines:,} lines are not trn.json records "
            f"({counts}), more than max_unreadable={config.max_unreadable:g}; the first is "
            f"line {first['line']:,} ({first['reason']}: {first['detail']}); nothing was written"
        )


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    # The form it has after a round trip through manifest.json, so that comparisons hold.
    return orjson.loads(orjson.dumps(data))


def _write_rejects(staging: Path, rejects: list[dict[str, Any]]) -> FileInfo | None:
    if not rejects:
        return None
    data = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rejects)
    with atomic_write(staging / REJECTS_NAME, "wb") as fh:
        fh.write(data)
    return FileInfo(REJECTS_NAME, len(rejects), len(data), hashlib.sha256(data).hexdigest())


def _other_input(out: Path, old: InputInfo, size: int | None, sha256: str | None) -> str:
    if sha256 is None:
        differs = f"{old.size:,} bytes, not {size:,}"
    else:
        differs = f"sha256 {old.sha256[:12]}..., not {sha256[:12]}..."
    return (
        f"{out} holds a prepare of another input ({old.name}: {differs}): choose another "
        f"--out, or empty it"
    )


def _make_out_dir(out: Path) -> bool:
    """Make sure ``out`` is a writable directory; whether this call created it."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path exists and is not a directory: {out}")
    try:
        out.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise OutputDirError(f"cannot create output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory is not writable: {out}")
    return created


def _check_out_dir(out: Path, config_dict: dict[str, Any], source: InputFile) -> Manifest | None:
    """The previous manifest when ``out`` holds a prepare of the same config, else ``None``.

    Called with the lock held: a publish or staging directory found is a killed run's.
    """
    _finish_publish(out)
    for path in out.glob(f"{_STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    if not any(out.iterdir()):
        return None
    if not (out / MANIFEST_NAME).is_file():
        raise OutputDirError(
            f"output directory {out} is not empty and holds no prepared data "
            f"(no {MANIFEST_NAME}): choose an empty or new directory"
        )
    previous = _load(out)
    if previous.config != config_dict:
        differ = sorted(
            k
            for k in previous.config.keys() | config_dict.keys()
            if previous.config.get(k) != config_dict.get(k)
        )
        raise OutputDirError(
            f"output directory {out} holds a prepare of another config (differs in: "
            f"{', '.join(differ)}): choose another --out, or empty it"
        )
    if source.size is not None and previous.input.size != source.size:
        raise OutputDirError(_other_input(out, previous.input, source.size, None))
    return previous


def _load(directory: Path) -> Manifest:
    try:
        return Manifest.load(directory)
    except UserError as exc:
        raise OutputDirError(f"output directory {directory}: {exc}") from None


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _finish_publish(out: Path) -> None:
    """Move a committed run's files from ``.publishing`` into ``out``, if there is one.

    Each step can be repeated after a kill: the new manifest moves last, so while it is in
    ``.publishing`` a manifest in ``out`` is the old one, whose files go before it does
    (files of both are replaced by the move).
    """
    publishing = out / PUBLISHING_NAME
    if not publishing.is_dir():
        return
    try:
        if (publishing / MANIFEST_NAME).is_file():
            new = _file_names(_load(publishing))
            if (out / MANIFEST_NAME).is_file():
                for name in set(_file_names(_load(out))) - set(new):
                    with contextlib.suppress(FileNotFoundError):
                        (out / name).unlink()
                (out / MANIFEST_NAME).unlink()
            for name in new:
                with contextlib.suppress(FileNotFoundError):  # moved before a kill
                    os.replace(publishing / name, out / name)
            os.replace(publishing / MANIFEST_NAME, out / MANIFEST_NAME)
        shutil.rmtree(publishing)
    except OSError as exc:
        raise _write_error(out, exc, "its new files wait in .publishing") from None


def _file_names(manifest: Manifest) -> list[str]:
    names = [shard.name for split in manifest.splits.values() for shard in split.shards]
    if manifest.rejects is not None:
        names.append(manifest.rejects.name)
    return names
