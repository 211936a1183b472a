"""A training run killed with SIGKILL resumes from its last checkpoint to the same adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from productdesc.finetune import LoraFineTuner

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import RECORDS, tiny_config

STEPS, SAVE_EVERY = 12, 4

# The child trains normally; once its first checkpoint is complete it slows each step down, so
# the parent's kill lands mid-run rather than after the last step.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from transformers import TrainerCallback
    from productdesc.config import FineTuneConfig
    from productdesc.finetune import LoraFineTuner

    config_path, records_path, out, slow_from = sys.argv[1:5]

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= int(slow_from):
                time.sleep(1.0)

    records = json.loads(open(records_path).read())
    tuner = LoraFineTuner(FineTuneConfig.from_toml(config_path))
    tuner.train(records, output_dir=out, callbacks=[Slow()])
    """
)


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    config = tiny_config(tiny_llama, max_steps=STEPS, save_steps=SAVE_EVERY, learning_rate=2e-3)
    config_path, records_path = tmp_path / "run.toml", tmp_path / "records.json"
    config.to_toml(config_path)
    records_path.write_text(json.dumps(RECORDS))
    (tmp_path / "child.py").write_text(CHILD)

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, tmp_path / "child.py", config_path, records_path, killed, str(SAVE_EVERY)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = killed / "checkpoints" / f"checkpoint-{SAVE_EVERY}" / "trainer_state.json"
    try:
        while not first.is_file():
            assert child.poll() is None, child.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "adapter_model.safetensors").exists()  # it never finished

    resumed = LoraFineTuner(config).train(RECORDS, output_dir=killed, resume_from_checkpoint=True)
    straight = LoraFineTuner(config).train(RECORDS, output_dir=tmp_path / "straight")

    assert resumed.global_step == straight.global_step == STEPS
    assert [h["step"] for h in resumed.history] == list(range(1, STEPS + 1))
    resumed_losses = [h["loss"] for h in resumed.history]
    assert resumed_losses == pytest.approx([h["loss"] for h in straight.history], rel=1e-4)
    a, b = _adapter(killed), _adapter(tmp_path / "straight")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
