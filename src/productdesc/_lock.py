"""An exclusive lock on an output directory, that goes with the process that took it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from productdesc.errors import OutputDirError

__all__ = ["output_lock"]

# Descriptors of the locks this process holds. A forked child (a worker of a multiprocessing
# pool) closes its copies, so that a lock goes with the process that took it: a worker left
# behind by a killed parent does not keep the directory locked.
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike[str], what: str = "productdesc") -> Iterator[Path]:
    """Hold an exclusive lock on an existing ``directory`` for the block; yields its path.

    Two processes that write one output directory (``prepare --out``, ``train --out``) would
    mix their results: the second to ask for the lock fails at once instead of waiting. The
    lock is ``flock`` on the directory itself, so no lock file is left in it, and the kernel
    releases it when the process ends, however it ends (``kill -9`` included): there is never
    a stale lock to remove. It is advisory (only processes that take it are kept out) and
    POSIX (``fcntl``).
    Processes forked while it is held (pool workers) do not hold it.

    Args:
        directory: The output directory (it must exist).
        what: The command that locks, named in the error (``"prepare"``).

    Raises:
        OutputDirError: Another process holds the lock, or the directory cannot be opened.
    """
    import fcntl

    path = Path(directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputDirError(f"cannot open output directory {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise OutputDirError(
                f"output directory {path} is in use by another {what} run (locked): "
                f"wait for it to finish, or choose another output directory"
            ) from None
        raise OutputDirError(f"cannot lock output directory {path}: {exc.strerror}") from None
    _HELD_LOCKS.add(fd)
    try:
        yield path
    finally:
        if fd in _HELD_LOCKS:  # else this is a forked child, which closed it already
            _HELD_LOCKS.discard(fd)
            os.close(fd)  # releases the lock
