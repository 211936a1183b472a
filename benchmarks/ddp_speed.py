"""Data-parallel training speed: the same LoraFineTuner run on 1 and on 2 GPUs, in one run.

On a machine with 2 GPUs (no downloads: a TinyLlama-1.1B-shaped model with random weights, and a
tokenizer trained in-process on the benchmark's texts, as in ``train_speed.py``)::

    NCCL_NVLS_ENABLE=0 python benchmarks/ddp_speed.py --out benchmarks/results/ddp_speed.json

CPU smoke run of the same code path (gloo; its times mean nothing)::

    python benchmarks/ddp_speed.py --shape tiny --backend transformers --variants 1x2,2x2,2x1 \
        --steps 6 --warmup 2 --examples 400 --out /tmp/ddp_speed.json

Variants (``--variants``, comma-separated ``GPUSxROWS``: processes x packed rows per process):

* ``1x8``: one GPU, productdesc's default step (8 packed rows of 2,048 tokens); the baseline.
* ``2x8``: two GPUs, 8 rows each, so a step takes twice the rows (throughput; what
  ``productdesc train --nproc 2`` does with the default config).
* ``2x4``: two GPUs, 4 rows each: the baseline's step split in two. The optimisation is the
  baseline's, so its loss per token must match the baseline's.

Every variant, the 1-GPU one too, runs ``LoraFineTuner`` with ``FineTuneConfig()`` (only the model
path, step count and rows changed) under ``python -m torch.distributed.run --standalone``, with
NVLink multicast off (``NCCL_NVLS_ENABLE=0``). Rank 0 times each optimizer step (CUDA
synchronised) and reads the Trainer's count of real (non-pad) tokens, which sums all ranks.
Reported per variant: tokens/s over the steps after ``--warmup``, seconds a step, speed-up over
the ``1x`` variant and its efficiency (speed-up / GPUs), peak GPU memory of rank 0, and the loss
at token counts every variant reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import run_info, save_json
from train_speed import build_texts, loss_at

HERE = Path(__file__).resolve().parent

# Kept off on every launch: NVLink multicast has taken shared hosts' GPUs out of service.
NO_MULTICAST = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def parse_variant(name: str) -> tuple[int, int]:
    """``"2x4"`` -> ``(2, 4)``: processes, packed rows per process and step."""
    gpus, rows = name.lower().split("x")
    return int(gpus), int(rows)


# --------------------------------------------------------------------------------------------
# parent: texts and model once, then each variant through torchrun
# --------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="1x8,2x8,2x4")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--examples", type=int, default=12_000)
    parser.add_argument("--backend", default="auto", help="FineTuneConfig.backend")
    parser.add_argument("--shape", default="tinyllama-1.1b", help="'tiny' for a CPU smoke run")
    parser.add_argument("--out", default=str(HERE / "results" / "ddp_speed.json"))
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "pd-ddp-speed"))
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        raise SystemExit("--warmup must be at least 1 and below --steps")
    import torch

    variants = [(name, *parse_variant(name)) for name in args.variants.split(",")]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and max(g for _, g, _ in variants) > gpus:
        raise SystemExit(f"--variants need {max(g for _, g, _ in variants)} GPUs; {gpus} here")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    texts = work / "pairs.jsonl"
    text_stats = build_texts(args.examples, 0, texts)
    model_dir = work / args.shape
    if not (model_dir / "config.json").exists():
        from productdesc.testing import make_random_llama

        corpus = [json.loads(line) for line in texts.read_text("utf-8").splitlines()]
        make_random_llama(
            model_dir,
            args.shape,
            dtype="bfloat16" if gpus else "float32",
            device="cuda" if gpus else "cpu",
            texts=[p["prompt"] + p["completion"] for p in corpus[:4000]],
        )
        torch.cuda.empty_cache()

    env = {**os.environ, **NO_MULTICAST}
    results = []
    for name, processes, rows in variants:
        spec = {"name": name, "rows": rows, "model_dir": str(model_dir), "texts": str(texts)}
        spec |= {k: getattr(args, k) for k in ("steps", "warmup", "backend", "workdir")}
        out = work / f"{name}.json"
        out.unlink(missing_ok=True)
        started = time.time()
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, f"--nproc-per-node={processes}", __file__, "--worker"]
        proc = subprocess.run(
            [*command, json.dumps(spec), str(out)], env=env, text=True, capture_output=True
        )
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            print(f"== {name} FAILED (rc {proc.returncode})\n{tail}", flush=True)
            results.append({"name": name, "error": tail[-800:]})
            continue
        res = json.loads(out.read_text())
        res["wall_s"] = round(time.time() - started, 1)
        results.append(res)
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(results))
        print(f"== {name}: {res['tokens_per_s']:,.0f} tok/s, {res['s_per_step']:.3f} s/step")

    summarise(results, text_stats, args)
    return 0


def summarise(results: list[dict], text_stats: dict, args: argparse.Namespace) -> None:
    import torch

    ok = [r for r in results if "error" not in r]
    base = next((r for r in ok if r["processes"] == 1), None)
    for r in ok:
        r["speedup_vs_1_gpu"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        r["efficiency"] = r["speedup_vs_1_gpu"] / r["processes"] if base else None
    # Loss at token counts every variant reached: a quarter, half and all of the smallest.
    common = min((r["curve"][-1][0] for r in ok), default=0)
    marks = [round(common * f) for f in (0.25, 0.5, 1.0)]
    for r in ok:
        r["loss_at_tokens"] = {str(t): loss_at(r["curve"], t) for t in marks}
    report = {
        **run_info("ddp_speed", device=None if torch.cuda.is_available() else "cpu (gloo)"),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "launch_env": NO_MULTICAST,
        "texts": text_stats,
        "results": results,
    }
    save_json(args.out, report)
    print(
        f"\n{'variant':8} {'tok/s':>9} {'s/step':>7} {'x 1 GPU':>7} {'eff.':>5} {'peak GB':>7}  loss@T"
    )
    for r in results:
        if "error" in r:
            print(f"{r['name']:8} failed")
            continue
        losses = " ".join("-" if v is None else f"{v:.3f}" for v in r["loss_at_tokens"].values())
        speedup = r["speedup_vs_1_gpu"] or 0.0
        print(
            f"{r['name']:8} {r['tokens_per_s']:9,.0f} {r['s_per_step']:7.3f} {speedup:7.2f} "
            f"{(r['efficiency'] or 0.0):5.0%} {r['peak_gb']:7.1f}  {losses}"
        )
    print(f"loss@T: mean logged loss near {', '.join(f'{t:,}' for t in marks)} real tokens")


# --------------------------------------------------------------------------------------------
# worker: one rank of one variant (torchrun starts one per GPU)
# --------------------------------------------------------------------------------------------
def worker(spec: dict, out_path: str) -> None:
    import attrs

    from productdesc import distributed
    from productdesc.config import FineTuneConfig
    from productdesc.finetune import LoraFineTuner

    config = FineTuneConfig(backend=spec["backend"])
    config = attrs.evolve(
        config,
        model=attrs.evolve(config.model, model_name=spec["model_dir"]),
        training=attrs.evolve(
            config.training,
            per_device_train_batch_size=spec["rows"],
            max_steps=spec["steps"],
            logging_steps=1,
            save_steps=None,
        ),
    )
    tuner = LoraFineTuner(config)  # before transformers: the unsloth backend patches it
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Timer(TrainerCallback):
        """At each optimizer step's end: the time and the real tokens seen by all ranks."""

        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []
            self.curve: list[list[float]] = []

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # averaged over the ranks by the Trainer
                self.curve.append([state.num_input_tokens_seen, float(logs["loss"])])

    timer = Timer()
    pairs = [json.loads(line) for line in Path(spec["texts"]).read_text("utf-8").splitlines()]
    records = [{"title": p["title"], "content": p["content"]} for p in pairs]
    out_dir = Path(spec["workdir"]) / f"run-{spec['name']}"
    result = tuner.train(records, output_dir=out_dir, overwrite=True, callbacks=[timer])
    if not distributed.is_main_process():
        return
    (t0, n0), (t1, n1) = timer.marks[spec["warmup"] - 1], timer.marks[-1]
    timed_steps = len(timer.marks) - spec["warmup"]
    report = {
        "name": spec["name"],
        "processes": result.world_size,
        "rows_per_process": spec["rows"],
        "rows_per_step": result.world_size * spec["rows"],
        "backend": result.backend,
        "steps": result.global_step,
        "timed_steps": timed_steps,
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "s_per_step": (t1 - t0) / timed_steps,
        "tokens_per_step": (n1 - n0) / timed_steps,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0,
        "final_loss": result.train_loss,
        "curve": timer.curve,
    }
    Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
