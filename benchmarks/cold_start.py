"""First-call cost of the fast path: warm-up in a cold and in a cached process, and end to end.

Run on a CUDA machine::

    python benchmarks/cold_start.py --model run/ --data amazontitles-sample.jsonl \
        --out benchmarks/results/cold_start.json

Each variant is its own process, run one after another with one fresh torch compile cache
(``TORCHINDUCTOR_CACHE_DIR``, which holds inductor's FX graphs and Triton's kernels, and
``TRITON_CACHE_DIR``, for the fused decode kernel):

* ``plain``: ``Describer(fast=False)``, ``generate`` only (the baseline);
* ``graphs_cold``: ``Describer(fast=True)``, the fast path's steps run eagerly and recorded as
  CUDA graphs (no ``torch.compile``), :meth:`~productdesc.Describer.warm_up` on the empty cache;
* ``graphs_cached``: the same in a second process, the first one's cache kept;
* ``auto``: ``Describer()``, the defaults, deciding per call, no warm-up;
* ``compiled_cold``: ``Describer(fast=True, torch_compile=True)``, warm-up on an empty cache
  (the cache is emptied before it);
* ``compiled_cached``: the same in a second process, the first one's cache kept.

Each process answers 1, then 64, then 400 titles (``batch_size`` 64, the library's decoding
defaults but ``max_new_tokens``), timed from the process's start: ``e2e_s`` is process start
to that call's last answer, so it includes imports, loading, warm-up and the calls before it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _harness import described_records, loadable, run_info, run_variant, save_json

HERE = Path(__file__).resolve().parent
#: name: (fast, torch_compile, warm_up, empty the cache first)
VARIANTS = {
    "plain": (False, False, False, False),
    "graphs_cold": (True, False, True, True),
    "graphs_cached": (True, False, True, False),
    "auto": (None, False, False, False),
    "compiled_cold": (True, True, True, True),
    "compiled_cached": (True, True, True, False),
}
SIZES = (1, 64, 400)


def _titles(data: str | None, n: int) -> list[str]:
    if data:
        with open(data, encoding="utf-8") as lines:
            titles = [json.loads(line)["title"] for line in lines if line.strip()]
    else:
        titles = [r["title"] for r in described_records(n, seed=0)]
    return [titles[i % len(titles)] for i in range(n)]


def worker(spec: dict, out: Path) -> None:
    start = spec["started"]
    from productdesc import Describer

    imported = time.time() - start
    describer = Describer.from_pretrained(
        spec["model"],
        backend="transformers",
        dtype="bfloat16",
        fast=spec["fast"],
        torch_compile=spec["torch_compile"],
    )
    loaded = time.time() - start
    warm = None
    if spec["warm_up"]:
        t = time.time()
        describer.warm_up()
        warm = time.time() - t
    calls = []
    titles = _titles(spec["data"], max(SIZES))
    for n in SIZES:
        t = time.time()
        details = describer.describe_batch(
            titles[:n],
            batch_size=64,
            max_new_tokens=spec["new_tokens"],
            return_details=True,
        )
        now = time.time()
        new_tokens = sum(d.new_tokens for d in details)
        calls.append(
            {
                "titles": n,
                "call_s": round(now - t, 2),
                "e2e_s": round(now - start, 2),
                "new_tokens": new_tokens,
                "new_tokens_per_s": round(new_tokens / (now - t), 1),
                "fast_path": describer._fast is not None and describer._fast_always,
            }
        )
    result = {
        "name": spec["name"],
        "import_s": round(imported, 2),
        "load_s": round(loaded, 2),
        "warm_up_s": None if warm is None else round(warm, 2),
        "calls": calls,
    }
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="a model or training run directory (what Describer.from_pretrained loads), or "
        "a .gguf (converted once, before the timed processes)",
    )
    parser.add_argument("--data", help="a .jsonl of records whose titles are asked")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(HERE / "results" / "cold_start.json"))
    args = parser.parse_args()
    report = run_info("cold_start")
    model = loadable(args.model)
    report["results"] = []
    with tempfile.TemporaryDirectory(prefix="pd-cold-start-") as scratch:
        cache = Path(scratch) / "cache"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
        for name in args.variants.split(","):
            fast, torch_compile, warm_up, empty = VARIANTS[name]
            if empty:
                shutil.rmtree(cache, ignore_errors=True)
            spec = {
                "name": name,
                "model": model,
                "data": args.data,
                "fast": fast,
                "torch_compile": torch_compile,
                "warm_up": warm_up,
                "new_tokens": args.new_tokens,
                "started": time.time(),
            }
            result = run_variant(__file__, spec, Path(scratch) / f"{name}.json")
            print(json.dumps(result), flush=True)
            report["results"].append(result)
            save_json(args.out, report)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
