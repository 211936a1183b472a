"""prepare and the prepared-data reader under bad input, races, kills and full disks (issue 20).

Every probe ends in one line on stderr and a non-zero exit, or a run that does what it says:
nothing outside the output folder touched, nothing lost, no traceback. docs/reliability.md
lists each probe with the test here that pins it.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from productdesc import AmazonTitlesDataset, PrepareConfig
from productdesc.cli import main
from productdesc.data import sample_path
from productdesc.data.synthetic import write_trn
from productdesc.errors import OutputDirError, UserError

PREPARE = [sys.executable, "-m", "productdesc.cli", "prepare"]


def prepare(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``productdesc prepare ARGS`` in this process: exit status and stderr."""
    code = main(["prepare", *args, "--no-progress"])
    return code, capsys.readouterr().err


def one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("productdesc prepare: error: "), err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def tree(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` by relative path (folders too, as ``b"<dir>"``)."""
    return {
        str(p.relative_to(directory)): b"<dir>" if p.is_dir() else p.read_bytes()
        for p in sorted(directory.rglob("*"))
    }


def run_cli(args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PREPARE, *args, "--no-progress"], capture_output=True, text=True, timeout=120, **kwargs
    )


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """The bundled sample, prepared."""
    out = tmp_path / "out"
    AmazonTitlesDataset(sample_path()).prepare(out, progress=False)
    return out


def edit_manifest(out: Path, name: str) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = name
    (out / "manifest.json").write_text(json.dumps(manifest))


# -- 2. shard names that lead out of the folder ------------------------------------------------
@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_rerun_never_deletes_a_file_a_manifest_names_outside_the_folder(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    victim = tmp_path / "victim.jsonl"
    victim.write_text("precious\n")
    edit_manifest(prepared, "../victim.jsonl" if kind == "dotdot" else str(victim))
    code, err = prepare(capsys, "--sample", "--out", str(prepared))
    assert code == 2
    one_line_error(err, "manifest.json", "splits.train.shards[0]", "not a file name inside")
    assert victim.read_text() == "precious\n"


def test_reader_refuses_manifest_entries_outside_the_folder(prepared: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"uid": "s", "title": "secret", "content": "not yours"}\n')
    edit_manifest(prepared, str(secret))
    with pytest.raises(UserError, match=r"manifest\.json: splits\.train\.shards\[0\] is '/"):
        AmazonTitlesDataset.from_prepared(prepared)


def test_reader_refuses_a_shard_that_is_a_symlink_out_of_the_folder(
    prepared: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.jsonl"
    shard = prepared / "train-00000.jsonl"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(UserError, match="is a symbolic link out of"):
        AmazonTitlesDataset.from_prepared(prepared)
    shard.unlink()  # a link inside the folder is fine
    (prepared / "real.jsonl").write_bytes(outside.read_bytes())
    shard.symlink_to("real.jsonl")
    AmazonTitlesDataset.from_prepared(prepared).verify()


# -- 3. one run at a time in a folder ----------------------------------------------------------
@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40,000 records (25 MB): a prepare of a second or two."""
    return write_trn(tmp_path_factory.mktemp("big") / "trn.json", n=40_000, seed=2)


def test_two_concurrent_prepares_into_one_folder_one_fails_at_once(
    big: Path, tmp_path: Path
) -> None:
    src = big
    out = tmp_path / "out"
    runs = [subprocess.Popen([*PREPARE, str(src), "--out", str(out), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(p.communicate(timeout=300)[1], p.returncode)[::-1] for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(err for code, err in results if code == 2)
    assert err == (
        f"productdesc prepare: error: output directory {out} is in use by another prepare "
        f"run (locked): wait for it to finish, or choose another output directory\n"
    )
    AmazonTitlesDataset.from_prepared(out).verify()
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "rejects.jsonl",
        "test-00000.jsonl",
        "train-00000.jsonl",
        "validation-00000.jsonl",
    ]


def test_a_held_lock_refuses_prepare_and_leaves_the_folder(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    from productdesc._lock import output_lock

    before = tree(prepared)
    with output_lock(prepared, "train"):
        code, err = prepare(capsys, "--sample", "--out", str(prepared))
    assert code == 2
    one_line_error(err, f"output directory {prepared} is in use by another prepare run")
    assert tree(prepared) == before
    assert prepare(capsys, "--sample", "--out", str(prepared))[0] == 0  # released


def test_the_lock_goes_with_the_process_that_took_it(tmp_path: Path) -> None:
    """Killed with SIGKILL, the holder leaves no stale lock; a forked child never holds it."""
    from productdesc._lock import output_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from productdesc._lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n"
            "    if os.fork() == 0:\n"  # one that outlives its parent, like a pool worker
            "        os.write(1, b'child %d\\n' % os.getpid()); time.sleep(30); os._exit(0)\n"
            "    os.write(1, b'locked %d\\n' % os.getpid()); time.sleep(30)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    # both lines: the child speaks once os.fork() has returned in it, its copy closed
    pids = dict(holder.stdout.readline().split() for _ in range(2))
    child = pids["child"]
    with (
        pytest.raises(OutputDirError, match="in use by another productdesc run"),
        output_lock(tmp_path),
    ):
        pass
    holder.kill()
    holder.wait()
    try:
        os.kill(int(child), 0)  # still running
        with output_lock(tmp_path):  # yet the lock is free
            pass
    finally:
        os.kill(int(child), signal.SIGKILL)


# -- 4. streams, and inputs that give no records -------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The shards of the sample prepared from its file."""
    out = tmp_path_factory.mktemp("ref") / "out"
    AmazonTitlesDataset(sample_path()).prepare(out, progress=False)
    return {k: v for k, v in tree(out).items() if k.endswith(".jsonl")}


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
def test_prepare_reads_dev_stdin(tmp_path: Path, reference: dict[str, bytes], packed: bool) -> None:
    data = sample_path().read_bytes()
    done = subprocess.run(
        [*PREPARE, "/dev/stdin", "--out", str(tmp_path / "o"), "--no-progress"],
        input=gzip.compress(data) if packed else data,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = tree(tmp_path / "o")
    assert {k: v for k, v in out.items() if k.endswith(".jsonl")} == reference
    manifest = json.loads(out["manifest.json"])
    assert manifest["lines"] == data.count(b"\n")
    assert manifest["input"]["compression"] == ("gzip" if packed else "none")


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip"])
def test_prepare_reads_a_process_substitution(
    tmp_path: Path, reference: dict[str, bytes], packed: bool
) -> None:
    """``prepare <(zcat trn.json.gz)``: the input is /dev/fd/N, a pipe."""
    data = sample_path().read_bytes()
    read, write = os.pipe()
    feeder = threading.Thread(target=_feed, args=(write, gzip.compress(data) if packed else data))
    feeder.start()
    try:
        done = subprocess.run(
            [*PREPARE, f"/dev/fd/{read}", "--out", str(tmp_path / "o"), "--no-progress"],
            pass_fds=(read,),
            capture_output=True,
            timeout=120,
        )
    finally:
        os.close(read)
        feeder.join()
    assert done.returncode == 0, done.stderr
    assert {k: v for k, v in tree(tmp_path / "o").items() if k.endswith(".jsonl")} == reference


def _feed(fd: int, data: bytes) -> None:
    with open(fd, "wb") as fh:
        fh.write(data)


def test_prepare_reads_a_fifo(tmp_path: Path, reference: dict[str, bytes]) -> None:
    fifo = tmp_path / "trn.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(sample_path().read_bytes()))
    writer.start()
    try:
        done = run_cli([str(fifo), "--out", str(tmp_path / "o")])
    finally:
        writer.join(timeout=5)
    assert done.returncode == 0, done.stderr
    assert {k: v for k, v in tree(tmp_path / "o").items() if k.endswith(".jsonl")} == reference


def test_a_stream_read_twice_is_a_clear_error(tmp_path: Path) -> None:
    read, write = os.pipe()
    feeder = threading.Thread(target=_feed, args=(write, sample_path().read_bytes()))
    feeder.start()
    dataset = AmazonTitlesDataset(f"/dev/fd/{read}", PrepareConfig(workers=1))
    assert len(list(dataset)) > 0
    feeder.join()
    with pytest.raises(UserError, match=r"is a stream .* and was read already"):
        dataset.prepare(tmp_path / "o", progress=False)
    os.close(read)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty: there are no records to prepare"),
        (gzip.compress(b""), "is empty (a gzip file of nothing)"),
        ('{"title": "t", "content": "c"}\n'.encode("utf-16"), "is UTF-16 text"),
        ('{"title": "t", "content": "c"}\n'.encode("utf-16-le"), "is UTF-16LE text"),
        ('{"title": "t", "content": "c"}\n'.encode("utf-32"), "is UTF-32 text"),
        (bytes(range(256)) * 8, "is a binary file, not JSON Lines text"),
        (b"uid,title,content\n1,Mug,A mug\n", "gave no records: 2 lines read, all dropped"),
        (b'{"title": "", "content": ""}\n' * 3, "all dropped (empty_title 3)"),
        (b"\n \n", "gave no records: 2 lines read, all dropped (blank_line 2)"),
    ],
    ids=[
        "empty",
        "empty-gzip",
        "utf16",
        "utf16-no-bom",
        "utf32",
        "binary",
        "csv",
        "all-empty",
        "blank",
    ],
)
def test_inputs_without_records_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes, message: str
) -> None:
    src = tmp_path / "trn.json"
    src.write_bytes(content)
    code, err = prepare(capsys, str(src), "--out", str(tmp_path / "o"))
    assert code == 2
    one_line_error(err, message)
    assert not (tmp_path / "o").exists()


def test_an_input_mostly_unreadable_fails_with_the_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "trn.json"
    good = b'{"uid": "1", "title": "Mug", "content": "A mug"}\n'
    src.write_bytes(good + b"garbage\n" * 19)
    code, err = prepare(capsys, str(src), "--out", str(tmp_path / "o"))
    assert code == 2
    one_line_error(err, "19 of 20 lines are not trn.json records (malformed_json 19)")
    assert "max_unreadable=0.9" in err and "the first is line 2 (malformed_json" in err
    assert not (tmp_path / "o").exists()
    assert prepare(capsys, str(src), "--out", str(tmp_path / "o"), "--max-unreadable", "1")[0] == 0
    with pytest.raises(ValueError, match="max_unreadable"):
        PrepareConfig(max_unreadable=1.5)


# -- 8. a kill while publishing ------------------------------------------------------------------
# Runs prepare with an audit hook that SIGKILLs it at the first change to the output folder
# after a given event: the moment, exactly, a kill -9 or a power cut may choose.
KILL_AFTER = """
import os, signal, sys
out, after = os.path.abspath(sys.argv[1]), sys.argv[2]
seen = []
def hook(event, args):
    if event not in ("os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.mkdir"):
        return
    path = os.fsdecode(os.fspath(args[0])) if not isinstance(args[0], int) else ""
    if not path.startswith(out):
        return
    if seen:
        os.kill(os.getpid(), signal.SIGKILL)
    if event == after.split(":")[0] and path.endswith(after.split(":")[1]):
        seen.append(path)
sys.addaudithook(hook)
from productdesc.cli import main
sys.exit(main(["prepare", "--sample", "--out", out, "--no-progress"]))
"""


def test_a_kill_in_the_middle_of_publishing_is_finished_by_the_next_run(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    before = tree(prepared)
    # the old manifest removed, the new shards not yet in: the next run used to refuse
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER, str(prepared), "os.remove:manifest.json"], timeout=120
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (prepared / "manifest.json").exists()
    with pytest.raises(UserError, match="interrupted while publishing; run the same"):
        AmazonTitlesDataset.from_prepared(prepared)
    assert prepare(capsys, "--sample", "--out", str(prepared))[0] == 0
    assert tree(prepared) == before


# -- 9. a full disk, Ctrl-C ------------------------------------------------------------------------
def _no_larger_files(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trn(tmp_path_factory.mktemp("syn") / "trn.json", n=3000, seed=1)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_write_that_fails_is_one_line_and_leaves_nothing(
    synthetic: Path, tmp_path: Path, workers: str
) -> None:
    """A file-size limit: the worker's (or the parent's) write fails with EFBIG."""
    out = tmp_path / "out"
    done = run_cli(
        [str(synthetic), "--out", str(out), "--workers", workers],
        preexec_fn=lambda: _no_larger_files(64 << 10),
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"productdesc prepare: error: prepare into {out} failed (File")
    assert done.stderr.count("\n") == 1 and "raise the file-size limit" in done.stderr
    assert not out.exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs root and mount rights, as on the developers' machines and CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_is_one_line_and_leaves_the_folder_as_it_was(
    synthetic: Path, small_disk: Path, workers: str
) -> None:
    out = small_disk / "out"
    out.mkdir()
    done = run_cli([str(synthetic), "--out", str(out), "--workers", workers])
    assert done.returncode == 2
    assert "No space left on device" in done.stderr and "free some space" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert list(out.iterdir()) == []


def test_ctrl_c_is_one_line_exit_130_and_no_temporary_files(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.Popen(
        [*PREPARE, str(big), "--out", str(out), "--no-progress", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As in a terminal: a test run started in the background by a shell ignores SIGINT,
        # and a child would inherit that and run to the end.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not any(out.glob(".prepare-*/.spill-*/chunk-*")) and time.monotonic() < deadline:
        time.sleep(0.002)  # until the workers are at work
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    _, err = run.communicate(timeout=60)
    assert (run.returncode, err) == (130, "productdesc prepare: interrupted\n")
    assert not out.exists()


# -- 10. messages ----------------------------------------------------------------------------------
def test_another_input_of_another_size_is_named_readably(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = tmp_path / "other.json"
    other.write_bytes(sample_path().read_bytes()[:5000].rsplit(b"\n", 1)[0] + b"\n")
    code, err = prepare(capsys, str(other), "--out", str(prepared))
    assert code == 2
    size = sample_path().stat().st_size
    one_line_error(err, f"holds a prepare of another input (trn_sample.jsonl: {size:,} bytes, not ")
    assert "siz..." not in err


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("X.jsonl", "`jq -c '.[]' X.jsonl > X.lines.jsonl`"),
        ("trn.json", "`jq -c '.[]' trn.json > trn.jsonl`"),
        ("X.jsonl.gz", "`zcat X.jsonl.gz | jq -c '.[]' > X.jsonl`"),
    ],
)
def test_the_jq_hint_never_overwrites_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, command: str
) -> None:
    body = b'[{"uid": "1", "title": "t", "content": "c"}]\n'
    (tmp_path / name).write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    code, err = prepare(capsys, str(tmp_path / name), "--out", str(tmp_path / "o"))
    assert code == 2
    one_line_error(err, "is a JSON array, not JSON Lines", command)


# -- more probes ---------------------------------------------------------------------------------
def test_a_damaged_manifest_in_the_output_folder_is_one_line(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    (prepared / "manifest.json").write_text("{not json")
    code, err = prepare(capsys, "--sample", "--out", str(prepared))
    assert code == 2
    one_line_error(err, "manifest.json is not valid JSON")


def test_a_truncated_gzip_through_a_pipe_is_one_line(tmp_path: Path) -> None:
    packed = gzip.compress(write_trn(tmp_path / "trn.json", n=3000, seed=4).read_bytes())
    done = subprocess.run(
        [*PREPARE, "/dev/stdin", "--out", str(tmp_path / "o"), "--no-progress"],
        input=packed[: len(packed) // 2],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "is a truncated or corrupt gzip file" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_an_unreadable_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    link = tmp_path / "loop.json"
    link.symlink_to(link)  # a symlink loop: exists() is False
    code, err = prepare(capsys, str(link), "--out", str(tmp_path / "o"))
    assert code == 2
    one_line_error(err, "input file not found")


def test_stale_staging_of_a_killed_run_is_removed(
    prepared: Path, capsys: pytest.CaptureFixture
) -> None:
    before = tree(prepared)
    stale = prepared / ".prepare-abc123"
    (stale / ".spill-x").mkdir(parents=True)
    (stale / ".spill-x" / "chunk-00000000").write_bytes(b"half")
    assert prepare(capsys, "--sample", "--out", str(prepared))[0] == 0
    assert tree(prepared) == before


# A worker that dies as the kernel's OOM killer would kill it, at the first task.
_KILLED_WORKER = r"""
import os, signal, sys
from productdesc.cli import main
from productdesc.data import worker

work = worker.Worker.__call__

def dies_at_the_first_task(self, seq, task):
    if seq == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return work(self, seq, task)

worker.Worker.__call__ = dies_at_the_first_task
sys.exit(main(["prepare", *sys.argv[1:]]))
"""


def test_a_worker_killed_for_memory_is_one_line_not_a_hang(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [str(synthetic), "--out", str(out), "--workers", "2", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.startswith("productdesc prepare: error: a prepare worker process was killed")
    assert done.stderr.count("\n") == 1, done.stderr
    assert not out.exists() or list(out.iterdir()) == []
    assert main(["prepare", *argv]) == 0  # the rerun finishes
