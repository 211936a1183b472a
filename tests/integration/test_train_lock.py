"""``LoraFineTuner.train`` locks its output directory for the run, and only for the run.

A second run into the folder meanwhile, in another process or this one, is refused at once in
one line; once ``train`` returns or raises, the folder is free again (it was held until the
tuner was garbage-collected).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from productdesc._lock import output_lock
from productdesc.errors import OutputDirError, UserError
from productdesc.finetune import LoraFineTuner
from test_finetune import RECORDS, tiny_config

IN_USE = "is in use by another train run (locked)"

# Trains slowly (a second a step) into argv[3] until killed.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from transformers import TrainerCallback
    from productdesc.config import FineTuneConfig
    from productdesc.finetune import LoraFineTuner

    config_path, records_path, out = sys.argv[1:4]

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(1.0)

    records = json.loads(open(records_path).read())
    LoraFineTuner(FineTuneConfig.from_toml(config_path)).train(
        records, output_dir=out, callbacks=[Slow()]
    )
    """
)


def _lock_is_free(directory: Path) -> bool:
    """Whether another process can take ``directory``'s lock now."""
    code = (
        "import sys\nfrom productdesc._lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(directory)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 or "is in use by another" in done.stderr, done.stderr
    return done.returncode == 0


class HeldDuringTheRun(TrainerCallback):
    """Records, at the first step, whether this process could lock the run's folder."""

    def __init__(self, out: Path) -> None:
        self.out, self.refused = out, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.refused is None:
            try:
                with output_lock(self.out, "train"):
                    self.refused = False
            except OutputDirError as exc:
                self.refused = str(exc)


class Fail(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        raise RuntimeError("the run fails at step 1")


@pytest.mark.slow
def test_a_second_train_is_refused_at_once_while_the_first_runs(
    tiny_llama: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_llama, max_steps=100_000)
    config_path, records_path = tmp_path / "run.toml", tmp_path / "records.json"
    config.to_toml(config_path)
    records_path.write_text(json.dumps(RECORDS))
    (tmp_path / "child.py").write_text(CHILD)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen(
        [sys.executable, tmp_path / "child.py", config_path, records_path, out],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        started = out / "checkpoints"  # made by the Trainer: the first run is training now
        deadline = time.monotonic() + 120
        while not started.is_dir():
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.1)
        config_before = (out / "productdesc_config.toml").read_bytes()
        for resume, overwrite in ((None, True), (True, False)):
            begun = time.monotonic()
            with pytest.raises(UserError) as refused:
                LoraFineTuner(config).train(
                    RECORDS, output_dir=out, resume_from_checkpoint=resume, overwrite=overwrite
                )
            assert time.monotonic() - begun < 5  # at once, before any model loads
            message = str(refused.value)
            assert isinstance(refused.value, OutputDirError)
            assert "\n" not in message and message.startswith(f"output directory {out} {IN_USE}")
        assert first.poll() is None  # the first run goes on, its folder untouched
        assert (out / "productdesc_config.toml").read_bytes() == config_before
        assert not _lock_is_free(out)
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    assert _lock_is_free(out)  # the kernel dropped the killed run's lock


@pytest.mark.slow
def test_the_lock_is_held_for_the_run_and_free_once_train_returns(
    tiny_llama: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_llama, max_steps=2)
    out = tmp_path / "run"
    tuner = LoraFineTuner(config)
    held = HeldDuringTheRun(out)
    result = tuner.train(RECORDS, output_dir=out, callbacks=[held])
    assert result.global_step == 2
    assert held.refused and IN_USE in held.refused  # this process too was kept out meanwhile
    # The tuner lives on, yet another process, and this one, may lock the folder now.
    assert _lock_is_free(out)
    with output_lock(out, "train"):
        pass
    # A fresh tuner in this process overwrites the run (it did not while the old one lived).
    assert LoraFineTuner(config).train(RECORDS, output_dir=out, overwrite=True).global_step == 2


@pytest.mark.slow
def test_the_lock_is_free_once_train_raises(tiny_llama: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_llama, max_steps=4)
    out = tmp_path / "run"
    tuner = LoraFineTuner(config)
    with pytest.raises(RuntimeError, match="fails at step 1"):
        tuner.train(RECORDS, output_dir=out, callbacks=[Fail()])
    assert _lock_is_free(out)
    with output_lock(out, "train"):
        pass
    # The same tuner may run again there at once.
    assert tuner.train(RECORDS, output_dir=out, overwrite=True).global_step == 4


def test_a_refused_train_leaves_the_lock_with_its_holder(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with output_lock(out, "prepare"):
        with pytest.raises(OutputDirError, match="in use by another train run"):
            LoraFineTuner(tiny_config(tiny_llama)).train(RECORDS, output_dir=out)
        assert not _lock_is_free(out)  # the holder still has it
    assert _lock_is_free(out)
    assert not any(out.iterdir())  # the refused run wrote nothing
