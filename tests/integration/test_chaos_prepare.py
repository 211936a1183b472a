"""``prepare --sample`` killed with SIGKILL at every change it makes to its output folder.

An audit hook (``sys.addaudithook``, nothing in the package) counts the run's changes below
``--out``: folders and temporary files made, files opened for writing, renamed, removed. The
run is killed just before the k-th, for every k of a fresh prepare and of a refresh of a
finished one, and along seeded chains of kills into one folder; then prepare runs again to
the end. Each time the folder must end byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# argv: OUT K. Kills itself (the parent, not a worker) before its K-th change below OUT
# (K = 0: never); prints the number of changes it made as its last stderr line.
DRIVER = """
import os, signal, sys
out, kill_at = os.path.abspath(sys.argv[1]), int(sys.argv[2])
parent = os.getpid()
changes = 0
EVENTS = {"open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree",
          "tempfile.mkstemp", "tempfile.mkdtemp"}
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT

def hook(event, args):
    global changes
    if event not in EVENTS or os.getpid() != parent or isinstance(args[0], int):
        return
    path = os.path.abspath(os.fsdecode(os.fspath(args[0])))
    if path != out and not path.startswith(out + os.sep):
        return
    if event == "open" and not (set(args[1] or "") & set("wax+") or args[2] & WRITE):
        return
    changes += 1
    if changes == kill_at:
        os.kill(parent, signal.SIGKILL)

sys.addaudithook(hook)
from productdesc.cli import main
code = main(["prepare", "--sample", "--out", out, "--no-progress"])
print(changes, file=sys.stderr)
sys.exit(code)
"""


def tree(directory: Path) -> dict[str, bytes]:
    """Relative path -> bytes of everything below ``directory`` (a folder: ``b"/"``)."""
    return {
        str(p.relative_to(directory)): b"/" if p.is_dir() else p.read_bytes()
        for p in sorted(directory.rglob("*"))
    }


def prepare(out: Path, kill_at: int = 0) -> tuple[int, int]:
    """Run the driver: its exit status and the changes it made (0 when killed).

    Waiting for the output pipes to close also waits for the workers of a killed parent
    (they hold the pipes; they exit when their task pipe closes), so that none is still
    writing into the folder when the next run cleans it.
    """
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), str(kill_at)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode == -signal.SIGKILL:
        return run.returncode, 0
    assert run.returncode == 0, run.stderr
    return 0, int(run.stderr.split()[-1])


def test_sigkill_at_every_change_then_rerun_gives_the_same_folder(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _, fresh_changes = prepare(reference)
    expected = tree(reference)
    _, refresh_changes = prepare(reference)
    assert tree(reference) == expected  # a refresh rewrites the same bytes
    assert fresh_changes >= 20 and refresh_changes >= 20

    def killed_then_rerun(out: Path, kills: list[int]) -> dict[str, bytes]:
        for k in kills:
            assert prepare(out, k)[0] == -signal.SIGKILL, f"no kill at change {k}"
        assert prepare(out)[0] == 0
        return tree(out)

    jobs: list[tuple[str, Path, list[int]]] = []
    for k in range(1, fresh_changes + 1):
        jobs.append((f"fresh, killed at change {k}", tmp_path / f"fresh-{k}", [k]))
    for k in range(1, refresh_changes + 1):
        out = tmp_path / f"refresh-{k}"
        shutil.copytree(reference, out)
        jobs.append((f"refresh, killed at change {k}", out, [k]))
    rng = random.Random(20)
    for chain in range(3):
        kills = [rng.randint(1, fresh_changes) for _ in range(4)]
        jobs.append(
            (f"chain {chain}, killed at changes {kills}", tmp_path / f"chain-{chain}", kills)
        )

    with ThreadPoolExecutor(2) as pool:  # two cores: the runs are mostly interpreter start-up
        results = pool.map(lambda job: (job[0], killed_then_rerun(job[1], job[2])), jobs)
        differ = [what for what, got in results if got != expected]
    assert differ == []
