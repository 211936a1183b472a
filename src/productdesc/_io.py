"""Safe output: atomic file writes (a reader never sees a half-written file under its final
name), and the temporary files a killed writer leaves behind (:func:`leftovers`). The lock
on an output directory is :func:`productdesc._lock.output_lock`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic on
    POSIX and Windows. On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
        # "\n" everywhere so outputs are byte-identical across platforms.
        open_kwargs.setdefault("newline", "\n")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would (umask applied).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# tempfile's random part of a name: 8 characters of this set (tempfile._RandomNameSequence).
_RANDOM = "[a-z0-9_]{8}"


def leftovers(
    directory: str | os.PathLike[str], names: Iterable[str], scratch: Iterable[str] = ()
) -> list[Path]:
    """What writers killed in ``directory`` left there: :func:`atomic_write`'s temporary files
    for the files ``names`` (``.NAME.XXXXXXXX.tmp``) and the folders of
    ``tempfile.mkdtemp(prefix=".S.")`` for each ``S`` in ``scratch``.

    A ``finally`` removes them, but a process killed (SIGKILL, a power cut) between creating
    one and its rename never runs it. Only names a writer of ``names`` and ``scratch`` makes
    are matched, so that a user's file is never taken for one; only a process that holds the
    directory's :func:`output_lock` may remove them (:func:`remove_leftovers`), for then no
    writer is at work there.
    """
    files = "|".join(re.escape(f".{name}.") + _RANDOM + r"\.tmp" for name in names)
    folders = "|".join(re.escape(f".{prefix}.") + _RANDOM for prefix in scratch)
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                pattern = folders
            elif entry.is_file(follow_symlinks=False):
                pattern = files
            else:
                continue
            if pattern and re.fullmatch(pattern, entry.name):
                found.append(Path(entry.path))
    return sorted(found)


def remove_leftovers(paths: Iterable[Path]) -> None:
    """Remove :func:`leftovers` (under the directory's lock)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8, ``\\n`` line ends)."""
    with atomic_write(path) as fh:
        fh.write(text)
