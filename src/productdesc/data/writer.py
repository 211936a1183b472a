"""Writing a prepared directory: shards, rejects and manifest, never a half-done mixture.

Everything is first written (atomically, file by file) into a hidden staging directory inside
the output directory. Only when the whole run succeeded is the old manifest removed, the new
files renamed into place and the new manifest written, last. A failed run removes its staging
directory and leaves what was there before untouched.
"""

from __future__ import annotations

import contextlib
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
from productdesc._version import __version__
from productdesc.data.config import PrepareConfig
from productdesc.data.manifest import MANIFEST_NAME, FileInfo, InputInfo, Manifest, SplitInfo
from productdesc.data.reader import InputFile
from productdesc.data.runner import Run
from productdesc.data.split import SPLIT_NAMES
from productdesc.errors import OutputDirError, UserError

__all__ = ["REJECTS_NAME", "write_prepared"]

logger = logging.getLogger(__name__)

REJECTS_NAME = "rejects.jsonl"
_STAGING_PREFIX = ".prepare-"


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
        OutputDirError: ``out_dir`` is unusable, or holds a prepare of another config/input.
        DataFormatError: The input is broken beyond single lines (e.g. a truncated gzip).
    """
    out = Path(out_dir)
    config_dict = _jsonable(config.to_dict())
    created = not out.exists()
    previous = _check_out_dir(out, config_dict, source)
    try:
        manifest = _prepare_into(out, source, config, config_dict, previous, progress)
    except BaseException:
        if created:  # leave no empty directory behind that we made
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    logger.info("prepared %s: %d records in %s", source.path.name, manifest.kept, out)
    return manifest


def _prepare_into(
    out: Path,
    source: InputFile,
    config: PrepareConfig,
    config_dict: dict[str, Any],
    previous: Manifest | None,
    progress: bool,
) -> Manifest:
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
            raise OutputDirError(_other_input(out, previous.input, run.sha256))
        manifest = Manifest(
            input=InputInfo(source.path.name, source.size, run.sha256, source.compression),
            config=config_dict,
            lines=run.lines,
            kept=run.kept,
            dropped=dict(sorted(run.dropped.items())),
            splits=splits,
            rejects=_write_rejects(staging, run.rejects()),
            productdesc_version=__version__,
        )
        _publish(out, staging, manifest, previous)
    return manifest


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


def _other_input(out: Path, old: InputInfo, sha256: str) -> str:
    return (
        f"{out} holds a prepare of another input ({old.name}, {old.size:,} bytes, sha256 "
        f"{old.sha256[:12]}..., not {sha256[:12]}...): choose another --out, or empty it"
    )


def _check_out_dir(out: Path, config_dict: dict[str, Any], source: InputFile) -> Manifest | None:
    """The previous manifest when ``out`` holds a prepare of the same config, else ``None``."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path exists and is not a directory: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory is not writable: {out}")
    _remove_stale_staging(out)
    if not any(p for p in out.iterdir() if not p.name.startswith(_STAGING_PREFIX)):
        return None
    if not (out / MANIFEST_NAME).is_file():
        raise OutputDirError(
            f"output directory {out} is not empty and holds no prepared data "
            f"(no {MANIFEST_NAME}): choose an empty or new directory"
        )
    try:
        previous = Manifest.load(out)
    except UserError as exc:
        raise OutputDirError(f"output directory {out}: {exc}") from None
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
    if previous.input.size != source.size:
        raise OutputDirError(_other_input(out, previous.input, "(another size)"))
    return previous


def _remove_stale_staging(out: Path) -> None:
    """Remove staging directories left by prepare runs that were killed."""
    for path in out.glob(f"{_STAGING_PREFIX}*"):
        pid = path.name[len(_STAGING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=out))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _publish(out: Path, staging: Path, manifest: Manifest, previous: Manifest | None) -> None:
    # Manifest first out, last in: in between the directory does not claim to be complete.
    with contextlib.suppress(FileNotFoundError):
        (out / MANIFEST_NAME).unlink()
    if previous is not None:
        for name in _file_names(previous):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    for name in _file_names(manifest):
        os.replace(staging / name, out / name)
    manifest.save(out)


def _file_names(manifest: Manifest) -> list[str]:
    names = [shard.name for split in manifest.splits.values() for shard in split.shards]
    if manifest.rejects is not None:
        names.append(manifest.rejects.name)
    return names
