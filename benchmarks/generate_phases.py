"""Where a fast-path call's time goes, phase by phase, with the shared prompt start on and off.

Run on a CUDA machine, after nothing else (it builds the same model and titles as
``generate_speed.py``)::

    python benchmarks/generate_phases.py > benchmarks/results/generate_phases.txt

The decoder's phases are wrapped in timers that wait for the GPU before and after: finding the
shared start (``_split_prefix``), writing it into the cache (``_write_prefix``), the prompt's
forward (``_prefill``) and the runs of 16 decode steps (``_advance``). The waits remove the
overlap of host and GPU work, so the phases add up to a little more than a call takes
without them. Also printed: the warm-up, and whether the timed calls compiled anything.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from generate_speed import build


def main() -> int:
    import torch
    from torch._dynamo.utils import counters

    from productdesc.generation.describer import Describer

    model_dir, titles = build(Path(tempfile.gettempdir()) / "pd-gen-speed", 64, "tinyllama-1.1b")
    describer = Describer.from_pretrained(
        str(model_dir), backend="transformers", dtype="bfloat16", fast=True
    )
    fast = describer._fast
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            torch.cuda.synchronize()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
            return out

        return wrapper

    for name in ("_split_prefix", "_write_prefix", "_prefill", "_advance"):
        setattr(fast, name, timed(name, getattr(fast, name)))

    def answer(batch: list[str], n: int) -> None:
        describer.describe_batch(batch, batch_size=len(batch), max_new_tokens=n, min_new_tokens=n)

    def per_call(calls: int) -> dict[str, float]:
        return {k: round(v / calls, 4) for k, v in spent.items()}

    t0 = time.perf_counter()
    for title in titles[:3]:
        answer([title], 128)
    answer(titles[:1], 1)
    answer(titles, 128)
    print(f"warm-up {time.perf_counter() - t0:.0f} s", flush=True)
    graphs = counters["stats"]["unique_graphs"]
    for title in titles[:3]:
        answer([title], 1)
        answer([title], 128)
    print("compiled by later singles:", counters["stats"]["unique_graphs"] - graphs, flush=True)
    for share in (True, False, True):
        fast.share_prefix = share
        answer(titles, 128)  # this setting's shape seen once before timing
        spent.clear()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            answer(titles, 128)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / 3
        print(f"share_prefix={share} batch 64: {wall:.4f} s a call, phases {per_call(3)}")
        spent.clear()
        t = time.perf_counter()
        for title in titles[:3]:
            answer([title], 128)
        torch.cuda.synchronize()
        rate = 3 * 128 / (time.perf_counter() - t)
        print(f"  batch 1: {rate:.0f} tokens/s, phases {per_call(3)}", flush=True)
    print("graph breaks:", dict(counters["graph_break"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
