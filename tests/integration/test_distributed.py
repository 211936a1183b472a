"""Data-parallel training: two CPU processes (gloo) on the tiny Llama, under torchrun and --nproc.

The same code path as N GPUs with NCCL, except for the collective backend: the Trainer's DDP,
accelerate's batch sharding, and productdesc's rank-0-only outputs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import test_finetune
from productdesc.cli import build_parser, main
from productdesc.cli.train import _child_argv
from productdesc.config import FineTuneConfig
from productdesc.finetune import CARD_FILE, CONFIG_FILE, HISTORY_FILE, PLOT_FILE, LoraFineTuner
from test_finetune import RECORDS, tiny_config

prepared_dir = test_finetune.prepared  # the fixture (RECORDS, prepared), under this name here

# 12 records with distinct titles; 2 ranks x 2 rows a step: one epoch is 3 steps.
TWELVE = [
    {**r, "uid": f"{r['uid']}-{i}", "title": f"{r['title']} {i}"} for i in range(2) for r in RECORDS
]
STEPS, SAVE_EVERY = 6, 3

# Each rank records the rows it trained on, and the file-system changes it made under the
# output directory that Python's audit events see: opening for writing (atomic_write's temporary
# files included), rename, mkdir, delete; not writes made in C++ or Rust (safetensors, torch.save).
CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from productdesc import distributed
    from productdesc.config import FineTuneConfig
    from productdesc.finetune import LoraFineTuner

    config_path, records_path, out, report_dir = sys.argv[1:5]
    out_prefix = os.path.abspath(out)
    writes = []
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            if not (any(c in (mode or "") for c in "wax+") or (flags or 0) & WRITE_FLAGS):
                return
        elif event not in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            return
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(out_prefix):
            writes.append([event, os.fsdecode(path)])

    sys.addaudithook(audit)
    tuner = LoraFineTuner(FineTuneConfig.from_toml(config_path))

    from transformers import TrainerCallback

    class Rows(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
            def record(module, positional, kwargs):
                if module.training:
                    for ids in kwargs["input_ids"]:
                        self.rows.append(processing_class.decode(ids, skip_special_tokens=True))

            model.register_forward_pre_hook(record, with_kwargs=True)

    rows = Rows()
    result = tuner.train(json.loads(Path(records_path).read_text()), output_dir=out, callbacks=[rows])
    report = {
        "rows": rows.rows,
        "writes": writes,
        "world_size": result.world_size,
        "global_step": result.global_step,
        "train_loss": result.train_loss,
        "outputs_complete_on_return": (Path(out) / "README.md").is_file(),
    }
    Path(report_dir, f"rank{distributed.rank()}.json").write_text(json.dumps(report))
    """
)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a fresh launch, whatever launched pytest
    return env


def _uid_of(row: str) -> str:
    found = [r["uid"] for r in TWELVE if f"{r['title']}\n" in row]
    assert len(found) == 1, row
    return found[0]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def torchrun_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 2-process run through torchrun: (config, output dir, report of each rank)."""
    work = tmp_path_factory.mktemp("torchrun")
    config = tiny_config(
        tiny_llama, per_device_train_batch_size=2, max_steps=STEPS, save_steps=SAVE_EVERY
    )
    config.to_toml(work / "run.toml")
    (work / "records.json").write_text(json.dumps(TWELVE))
    (work / "child.py").write_text(CHILD)
    out, reports = work / "out", work / "reports"
    reports.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    args = [work / "child.py", work / "run.toml", work / "records.json", out, reports]
    proc = subprocess.run(
        [*command, *map(str, args)], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    by_rank = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    return config, out, by_rank


@pytest.mark.slow
def test_each_rank_trains_on_its_own_half_of_every_epoch(torchrun_run) -> None:
    _, _, (rank0, rank1) = torchrun_run
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert len(rank0["rows"]) == len(rank1["rows"]) == STEPS * 2  # its 2 rows a step
    epoch = len(TWELVE) // 2  # rows of one epoch on one rank
    for start in (0, epoch):  # the first and the second epoch
        mine = [_uid_of(row) for row in rank0["rows"][start : start + epoch]]
        theirs = [_uid_of(row) for row in rank1["rows"][start : start + epoch]]
        assert not set(mine) & set(theirs)
        assert sorted(mine + theirs) == sorted(r["uid"] for r in TWELVE)


@pytest.mark.slow
def test_rank_0_alone_writes_one_complete_set_of_outputs(torchrun_run) -> None:
    config, out, (rank0, rank1) = torchrun_run
    # Rank 1's only writes: the Trainer saves each rank's random state in a checkpoint
    # (rng_state_1.pth, by torch.save's C++ writer, which audit events do not see), creating
    # the checkpoint's directory if rank 0 has not yet.
    assert all(
        event == "os.mkdir" and Path(path).parent == out / "checkpoints"
        for event, path in rank1["writes"]
    ), rank1["writes"]
    assert any(path.endswith("adapter_model.safetensors") for _, path in rank0["writes"])
    assert rank0["outputs_complete_on_return"] and rank1["outputs_complete_on_return"]
    names = {p.name for p in out.iterdir()}
    assert names == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",  # the training prompt as the model's chat template
        CONFIG_FILE,
        HISTORY_FILE,
        PLOT_FILE,
        CARD_FILE,
        "checkpoints",
    }
    assert FineTuneConfig.from_toml(out / CONFIG_FILE) == config
    assert "| processes (data parallel) | 2 |" in (out / CARD_FILE).read_text()
    assert "2 processes x 2 rows x 1 accumulation = 4 rows a step" in (out / CARD_FILE).read_text()
    # one checkpoint a save, with the random state of each of the two ranks
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-3", "checkpoint-6"]
    for checkpoint in checkpoints:
        assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {
            p.name for p in checkpoint.iterdir()
        }
    # the adapter written is the trained one: the last checkpoint's
    final, last = _tensors(out), _tensors(checkpoints[-1])
    assert final.keys() == last.keys()
    assert all((final[k] == last[k]).all() for k in final)


@pytest.mark.slow
def test_ranks_agree_on_a_finite_loss_and_the_adapter_loads(torchrun_run) -> None:
    from productdesc.generation.describer import Describer

    _, out, (rank0, rank1) = torchrun_run
    assert rank0["global_step"] == rank1["global_step"] == STEPS
    assert rank0["train_loss"] == rank1["train_loss"]
    assert math.isfinite(rank0["train_loss"])
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert all(math.isfinite(h["loss"]) for h in history)
    describer = Describer.from_pretrained(out, backend="transformers")
    assert isinstance(describer.describe("travel mug 0", max_new_tokens=4), str)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(torchrun_run, tmp_path: Path) -> None:
    config, out, _ = torchrun_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    result = LoraFineTuner(config).train(
        TWELVE,
        output_dir=resumed,
        resume_from_checkpoint=resumed / "checkpoints" / f"checkpoint-{SAVE_EVERY}",
    )
    assert result.world_size == 1 and result.global_step == STEPS
    before = json.loads((out / HISTORY_FILE).read_text())
    # steps 1-3 come from the 2-process run's checkpoint, 4-6 were trained here
    assert result.history[:SAVE_EVERY] == tuple(before[:SAVE_EVERY])
    assert [h["step"] for h in result.history] == list(range(1, STEPS + 1))
    assert math.isfinite(result.train_loss)


@pytest.mark.slow
def test_cli_gpus_2_trains_in_two_processes_and_reports_once(
    tiny_llama: Path, prepared_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_llama, per_device_train_batch_size=2, max_steps=4, eval_steps=2)
    config.to_toml(tmp_path / "run.toml")
    out = tmp_path / "out"
    command = ["train", "--data", str(prepared_dir), "--out", str(out), "--config"]
    proc = subprocess.run(
        [sys.executable, "-m", "productdesc.cli", *command, str(tmp_path / "run.toml"), "--gpus=2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "no CUDA GPU: training in 2 CPU processes (gloo)" in proc.stderr
    assert proc.stdout.count("with the transformers backend") == 1
    assert proc.stdout.count("done: 4 steps") == 1
    assert "| processes (data parallel) | 2 |" in (out / CARD_FILE).read_text()
    history = json.loads((out / HISTORY_FILE).read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [0, 2, 4]
    assert all(math.isfinite(h.get("loss", 0.0)) for h in history)


def test_launched_processes_get_the_same_options_less_nproc() -> None:
    parser = build_parser()
    argv = ["-vv", "train", "--data", "d", "--out", "o", "--config", "c.toml", "--model", "m"]
    argv += ["--max-steps", "5", "--backend", "transformers", "--resume", "--merge", "--gpus", "2"]
    args = parser.parse_args(argv)
    child = _child_argv(args)
    assert "--nproc" not in child and "--gpus" not in child
    again = parser.parse_args(child)
    skip = {"nproc", "func", "train_parser"}
    assert {k: v for k, v in vars(again).items() if k not in skip} == {
        k: v for k, v in vars(args).items() if k not in skip
    }
    assert again.nproc is None


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--nproc", "0"], {}, "--nproc 0: must be 1 or more"),
        (["--nproc", "2"], {"WORLD_SIZE": "2", "RANK": "1"}, "leave it out under torchrun"),
    ],
)
def test_bad_nproc_is_a_clear_error(tmp_path, capsys, monkeypatch, extra, env, message) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
