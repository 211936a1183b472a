"""Shared by the GPU benchmarks: run one variant in a fresh Python process.

Unsloth patches transformers, TRL and PEFT when imported, so a baseline that must run on the
plain libraries can never share a process with it: every variant gets its own process, which
re-runs the benchmark script as ``script --worker SPEC_JSON OUT_JSON``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_variant(script: str, spec: dict, out: Path) -> dict:
    """The worker's result dict (plus ``wall_s``), or ``{"name", "error"}`` when it failed."""
    out.unlink(missing_ok=True)
    started = time.time()
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec), str(out)],
        text=True,
        capture_output=True,
    )
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        print(f"== {spec['name']} FAILED (rc {proc.returncode})\n{tail}", flush=True)
        return {"name": spec["name"], "error": tail[-800:]}
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.time() - started, 1)
    return result


def run_info(benchmark: str, *, device: str | None = None) -> dict:
    """The fields every result file starts with: what ran, when, on what, and the command."""
    import platform

    import torch

    if device is None:
        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if cuda else platform.processor()
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python " + " ".join(sys.argv),
    }


def described_records(n: int, seed: int) -> list[dict]:
    """The first ``n`` synthetic ``trn.json`` records that have a title and a description."""
    import itertools

    from productdesc.data.synthetic import synthetic_records

    described = (
        r for r in synthetic_records(seed=seed) if r["title"].strip() and r["content"].strip()
    )
    return list(itertools.islice(described, n))


def identical(a: list[str], b: list[str]) -> int:
    """How many of two equally long lists of answers are the same, position by position."""
    return sum(x == y for x, y in zip(a, b, strict=True))


def save_json(path: str | Path, report: dict) -> None:
    """Write a result file (its folder created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def profiler():
    """A ``torch.profiler.profile`` of CPU and CUDA activity; ``start()`` it, ``stop()`` it."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])


def profile_summary(prof, wall_s: float, *, rows: int = 25) -> dict:
    """The top kernels of a stopped profiler and how busy the GPU was over ``wall_s``.

    Busy time sums kernel and memcpy durations; where several streams overlap it is counted
    twice, so the idle share is then a lower bound.
    """
    import torch

    busy_us = sum(
        e.time_range.elapsed_us()
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    return {
        "wall_s": wall_s,
        "gpu_busy_s": busy_us / 1e6,
        "gpu_idle_share": max(0.0, 1 - busy_us / 1e6 / wall_s),
        "table": prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows),
    }


def describe_profile(prof: dict) -> str:
    """A :func:`profile_summary` as the lines a benchmark prints."""
    return (
        f"profile: {prof['wall_s']:.2f} s wall, GPU busy {prof['gpu_busy_s']:.2f} s, "
        f"idle {prof['gpu_idle_share']:.0%}\n{prof['table']}"
    )


def profile_call(run, *, rows: int = 25) -> dict:
    """:func:`profile_summary` of one ``run()``, timed from its start to a GPU sync."""
    import torch

    prof = profiler()
    torch.cuda.synchronize()
    prof.start()
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    prof.stop()
    return profile_summary(prof, wall, rows=rows)


def graph_us(fn, reps: int) -> float:
    """Microseconds one call of ``fn`` takes, recorded as one CUDA graph and replayed ``reps``
    times (after PyTorch's warm-up recipe: two eager calls on a side stream)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def loadable(model: str) -> str:
    """``model`` as ``Describer.from_pretrained`` loads it: a ``.gguf`` file converted once
    (cached by :func:`productdesc.models.resolve_model`), anything else as given."""
    if not model.endswith(".gguf"):
        return model
    from productdesc.models import resolve_model

    return str(resolve_model(model).path)
