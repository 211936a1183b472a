"""``productdesc train`` killed with SIGKILL at every kind of point, then resumed.

On the bundled sample (prepared) and the tiny random Llama. One driver process imports torch,
transformers and TRL once and forks a child for every run, so that a run costs its training,
not an interpreter start. In a child, an audit hook (``sys.addaudithook``) and wrappers of
``torch.save`` and safetensors' ``serialize_file`` (which write from C, unseen by the hook)
count the run's changes below ``--out``: folders made, files opened for writing or saved,
renamed, removed. The child kills itself with SIGKILL just before its k-th change, or, for a
"torn" kill, right after the k-th file was created empty (the bytes not yet written). Then
``productdesc train --resume`` runs to the end (or, killed before its first checkpoint, the
first command again with ``--overwrite``, as the resume's error says). Each time the adapter
must be tensor-for-tensor equal (``torch.equal``) to an uninterrupted run's, the losses equal,
and the folder must hold what an uninterrupted run's holds and load for ``describe``.

Exact equality, not a tolerance: every run trains in a child of the same process, with the
same single thread, and a resume restores the weights, optimizer, scheduler and RNG states
bit for bit, so the same float operations run in the same order.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_finetune import RECORDS, tiny_config

STEPS, SAVE_EVERY, KEEP = 6, 2, 2  # checkpoints 2, 4, 6; the oldest one rotated out
PLAIN_KILLS, TORN_KILLS, CHAINS = 20, 3, 2  # seeded; and torn at each trainer_state.json
WRITES = {"open", "save", "serialize_file"}  # the changes that write a file

# argv: the train command without --out, as JSON. Reads one JSON list of jobs a line from
# stdin, runs them two at a time, writes "done" a line. A job {"out", "kills": [[k, torn], ...]}
# runs in a forked child, which runs each of its steps in a forked grandchild: the command into
# out, killed at change k (0: never); after the first step each is a resume, or when that
# finds nothing to resume (exit 2), the first command again with --overwrite. The child
# writes what each step did to OUT.json; a step that ran to the end, its changes to OUT.changes.
DRIVER = r"""
import json, os, signal, sys, traceback

import datasets, peft, safetensors.torch, torch, transformers, trl  # once, before any fork
import productdesc.backends._sft, productdesc.backends.transformers, productdesc.finetune
from productdesc.cli import main

torch.set_num_threads(1)  # every run alike, whatever the machine
EVENTS = {"open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree",
          "tempfile.mkstemp", "tempfile.mkdtemp"}
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT
COMMAND = json.loads(sys.argv[1])


def train(out, argv, kill_at, torn, err):
    # In a grandchild: the command, killed at its kill_at-th change below out.
    changes = []
    busy = False

    def change(event, path, write):
        nonlocal busy
        path = os.path.abspath(os.fsdecode(path))
        if busy or (path != out and not path.startswith(out + os.sep)):
            return
        if event == "os.mkdir" and os.path.isdir(path):
            return  # makedirs(exist_ok=True) of a folder there already changes nothing
        changes.append(f"{event} {os.path.relpath(path, out)}")
        if len(changes) == kill_at:
            busy = True
            if torn and write:  # created or truncated, and killed before a byte is written
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.kill(os.getpid(), signal.SIGKILL)

    def hook(event, args):
        if event not in EVENTS or isinstance(args[0], int):
            return
        if event == "open" and not (set(args[1] or "") & set("wax+") or (args[2] or 0) & WRITE):
            return
        change(event, args[0], event == "open")

    def counted(save):
        def wrapper(obj, target, *args, **kwargs):
            if isinstance(target, (str, os.PathLike)):
                change(save.__name__, target, True)
            return save(obj, target, *args, **kwargs)
        return wrapper

    torch.save = counted(torch.save)
    safetensors.torch.serialize_file = counted(safetensors.torch.serialize_file)
    sys.addaudithook(hook)
    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    code = main(argv)
    with open(out + ".changes", "w") as fh:
        json.dump(changes, fh)
    return code


def forked(run, *args):
    # run(*args) in a child; its exit status (-9: killed).
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run(*args)
        except BaseException:
            traceback.print_exc()  # into the step's .err file: its last line says what failed
        finally:
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def job(out, kills):
    out = os.path.abspath(out)
    fresh = [*COMMAND, "--out", out]
    steps = []

    def step(extra, kill_at, torn):
        err = f"{out}.{len(steps)}.err"
        code = forked(train, out, [*fresh, *extra], kill_at, torn, err)
        with open(err) as fh:
            last = (fh.read().strip().splitlines() or [""])[-1]
        steps.append({"args": extra, "kill_at": kill_at, "code": code, "last_line": last})
        return code

    for n, (kill_at, torn) in enumerate([*kills, [0, False]]):
        if n == 0:
            step([], kill_at, torn)
        elif step(["--resume"], kill_at, torn) == 2:
            step(["--overwrite"], kill_at, torn)
    with open(out + ".json", "w") as fh:
        json.dump(steps, fh)
    return 0


for line in sys.stdin:
    jobs, running = json.loads(line), set()
    for spec in jobs:
        if len(running) == 2:
            running.discard(os.wait()[0])
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = job(spec["out"], spec["kills"])
            finally:
                os._exit(code)
        running.add(pid)
    while running:
        running.discard(os.wait()[0])
    print("done", flush=True)
"""


class Driver:
    """The driver process: :meth:`run` runs jobs in forks of it (see ``DRIVER``)."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(command)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def run(self, jobs: list[tuple[Path, list[tuple[int, bool]]]]) -> list[list[dict]]:
        """Each job's steps (``args``, ``kill_at``, ``code``, ``last_line``), in job order."""
        line = json.dumps([{"out": str(out), "kills": kills} for out, kills in jobs])
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "done\n", "the driver died"
        return [json.loads(Path(f"{out}.json").read_text()) for out, _ in jobs]

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait(timeout=60)


def outcome(out: Path) -> dict:
    """What a finished run must share with the uninterrupted one."""
    from safetensors.torch import load_file

    history = json.loads((out / "loss_history.json").read_text())
    return {
        "adapter": load_file(out / "adapter_model.safetensors"),
        "adapter bytes": {
            name: (out / name).read_bytes()
            for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json")
        },
        "losses": [(h["step"], h.get("loss")) for h in history],
        "files": sorted(p.name for p in out.iterdir()),
        "checkpoints": sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")),
    }


def differences(got: dict, expected: dict) -> list[str]:
    import torch

    found = [key for key in ("adapter bytes", "losses", "files") if got[key] != expected[key]]
    a, b = got["adapter"], expected["adapter"]
    if a.keys() != b.keys() or not all(torch.equal(a[name], b[name]) for name in a):
        found.append("adapter tensors")
    # A kill while the oldest checkpoint was being deleted may leave part of it, when the run
    # it resumed saves no checkpoint after (the next save's rotation would remove it).
    if not set(expected["checkpoints"]) <= set(got["checkpoints"]):
        found.append(f"checkpoints {got['checkpoints']}")
    return found


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from productdesc.cli import main

    out = tmp_path_factory.mktemp("sample") / "data"
    assert main(["prepare", "--sample", "--out", str(out), "--no-progress"]) == 0
    return out


def kill_points(changes: list[str]) -> tuple[list[int], list[int], list[list[int]]]:
    """Plain kills, torn kills and chains of kills, as change numbers (1-based) of ``changes``.

    Seeded picks, plus the points where a kill once did harm: just before the config's
    temporary file is renamed in (it stayed behind and the folder was refused), inside the
    final adapter's scratch folder and halfway through its renames (the scratch folder stayed
    behind), just after the last checkpoint (the resume trained a step more), and torn at
    each ``trainer_state.json`` (the resume picked the cut file and died in ``json.loads``).
    """

    def first(prefix: str) -> int:
        return next(k for k, c in enumerate(changes, 1) if c.startswith(prefix))

    last_state = max(k for k, c in enumerate(changes, 1) if c.endswith("/trainer_state.json"))
    renames_in = [k for k, c in enumerate(changes, 1) if c.startswith("os.rename .adapter.")]
    landmarks = {
        first("os.rename .productdesc_config.toml."),
        first("tempfile.mkdtemp .adapter.") + 1,
        renames_in[len(renames_in) // 2],
        last_state + 1,
    }
    writes = [k for k, c in enumerate(changes, 1) if c.split()[0] in WRITES]
    states = [k for k, c in enumerate(changes, 1) if c.endswith("/trainer_state.json")]
    rng = random.Random(20)
    everywhere = range(1, len(changes) + 1)
    others = sorted(set(everywhere) - landmarks)
    plain = sorted({*rng.sample(others, PLAIN_KILLS - len(landmarks)), *landmarks})
    torn = sorted({*states, *rng.sample(sorted(set(writes) - set(states)), TORN_KILLS)})
    # A resume makes fewer changes than a fresh run: later kills come earlier.
    chains = [sorted(rng.sample(everywhere, 3), reverse=True) for _ in range(CHAINS)]
    return plain, torn, chains


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_adapter(
    tiny_llama: Path, sample_data: Path, tmp_path: Path
) -> None:
    from productdesc.generation.describer import Describer

    config = tiny_config(
        tiny_llama,
        max_steps=STEPS,
        save_steps=SAVE_EVERY,
        save_total_limit=KEEP,
        learning_rate=2e-3,
        group_by_length=True,  # the default; padded rows of varied length
    )
    config.to_toml(tmp_path / "run.toml")
    driver = Driver(["train", "--config", str(tmp_path / "run.toml"), "--data", str(sample_data)])
    try:
        reference = tmp_path / "reference"
        [[straight]] = driver.run([(reference, [])])
        assert straight["code"] == 0, straight["last_line"]
        changes = json.loads(Path(f"{reference}.changes").read_text())
        expected = outcome(reference)
        assert expected["checkpoints"] == ["checkpoint-4", "checkpoint-6"]
        plain, torn, chains = kill_points(changes)
        jobs = [(tmp_path / f"kill-{k}", [(k, False)]) for k in plain]
        jobs += [(tmp_path / f"torn-{k}", [(k, True)]) for k in torn]
        jobs += [(tmp_path / f"chain-{n}", [(k, False) for k in ks]) for n, ks in enumerate(chains)]
        assert len(plain) == PLAIN_KILLS >= 20 and len(torn) == 3 + TORN_KILLS
        results = driver.run(jobs)
    finally:
        driver.close()

    answer = Describer.from_pretrained(reference).describe("soft cotton blanket", max_new_tokens=8)
    failed = []
    for (out, kills), steps in zip(jobs, results, strict=True):
        where = " then ".join(f"{changes[k - 1]!r}{' (torn)' if t else ''}" for k, t in kills)
        problems = [] if steps[0]["code"] == -signal.SIGKILL else ["the first run was not killed"]
        for s in steps[:-1]:
            # Killed; or a resume with no checkpoint yet, which says so in one line (then the
            # first command again with --overwrite); or, in a chain, a resume that ended
            # before its kill point.
            resumable = s["code"] == 2 and "to resume" in s["last_line"]
            if not (s["code"] in (-signal.SIGKILL, 0) or resumable):
                problems.append(f"{s['args']} exit {s['code']}: {s['last_line']}")
        last = steps[-1]
        if last["code"] != 0:
            problems.append(f"{last['args']} exit {last['code']}: {last['last_line']}")
        else:
            problems += differences(outcome(out), expected)
            described = Describer.from_pretrained(out).describe(
                "soft cotton blanket", max_new_tokens=8
            )
            if described != answer:
                problems.append(f"describe gives {described!r}, not {answer!r}")
        if problems:
            failed.append(f"killed before {where}: {'; '.join(problems)}")
    assert failed == []


def _fake_checkpoint(checkpoints: Path, step: int, state: str) -> Path:
    path = checkpoints / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(state)
    return path


@pytest.mark.parametrize("torn", ["", '{\n  "best_global_step": null,\n  "epoch": 0.2'])
def test_resume_passes_over_a_checkpoint_whose_trainer_state_a_kill_cut(
    tmp_path: Path, torn: str
) -> None:
    # transformers writes trainer_state.json in place: killed while writing it, the file is
    # there, empty or cut short; resume picked it and died with a JSONDecodeError traceback.
    from productdesc.errors import UserError
    from productdesc.run_output import checkpoint_of as _checkpoint

    whole = _fake_checkpoint(tmp_path / "checkpoints", 4, json.dumps({"global_step": 4}))
    cut = _fake_checkpoint(tmp_path / "checkpoints", 6, torn)
    assert _checkpoint(tmp_path, True) == whole
    with pytest.raises(UserError, match="checkpoint-6 is not a complete checkpoint"):
        _checkpoint(tmp_path, cut)
    shutil.rmtree(whole)
    with pytest.raises(UserError, match=r"no complete checkpoint .*\(CLI --overwrite\)$"):
        _checkpoint(tmp_path, True)


def test_what_a_killed_run_left_is_removed_and_a_folder_of_only_that_is_empty(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from productdesc._io import leftovers
    from productdesc.errors import OutputDirError
    from productdesc.run_output import prepare_output_dir

    # Killed before atomic_write's rename: the folder held only this, and every command
    # refused it (not empty; --overwrite: no run in it; --resume: nothing to resume).
    out = tmp_path / "run"
    out.mkdir()
    (out / ".productdesc_config.toml.k3x_9q0a.tmp").write_text("backend = ")
    (out / ".adapter.a1b2c3d4").mkdir()  # _save_adapter's scratch folder
    (out / ".adapter.a1b2c3d4" / "adapter_model.safetensors").write_bytes(b"\0")
    (out / ".merged.z9y8x7w6").mkdir()  # save_merged's, killed while merging
    (out / ".merged.z9y8x7w6" / "model.safetensors").write_bytes(b"\0")
    mine = [out / ".notes.toml.k3x_9q0a.tmp", out / ".adapter.mine", out / "x.k3x_9q0a.tmp"]
    assert {p.name for p in leftovers(out, ["productdesc_config.toml"], ["adapter"])} == {
        ".productdesc_config.toml.k3x_9q0a.tmp",
        ".adapter.a1b2c3d4",
    }
    config = tiny_config(tiny_llama)
    assert prepare_output_dir(out, None, False, config) is None
    assert list(out.iterdir()) == []
    for path in mine:  # not a run's: the folder is not empty, and they stay
        path.write_text("mine")
    with pytest.raises(OutputDirError, match="is not empty"):
        prepare_output_dir(out, None, False, config)
    assert sorted(out.iterdir()) == sorted(mine)


@pytest.mark.slow
def test_resume_from_the_checkpoint_of_the_last_step_trains_no_more(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # Killed after its last checkpoint (while writing the adapter), the resumed run trained
    # step max_steps + 1 before transformers checked max_steps: another adapter.
    import torch
    from safetensors.torch import load_file

    from productdesc.finetune import LoraFineTuner

    # 3 steps, 2 an epoch: the resume starts inside an epoch's loop, where the extra step was.
    config = tiny_config(tiny_llama, max_steps=3, save_steps=3)
    out = tmp_path / "run"
    straight = LoraFineTuner(config).train(RECORDS, output_dir=out)
    adapter = load_file(out / "adapter_model.safetensors")
    (out / "adapter_model.safetensors").unlink()  # as if killed before it was written
    resumed = LoraFineTuner(config).train(RECORDS, output_dir=out, resume_from_checkpoint=True)
    assert resumed.global_step == straight.global_step == 3
    assert [h["step"] for h in resumed.history] == [1, 2, 3]
    again = load_file(out / "adapter_model.safetensors")
    assert again.keys() == adapter.keys()
    assert all(torch.equal(again[name], adapter[name]) for name in adapter)
