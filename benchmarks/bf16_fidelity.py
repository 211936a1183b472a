"""How close bf16 answers come to float32's: transformers ``generate`` against the fast path.

    python benchmarks/bf16_fidelity.py --model SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out benchmarks/results/bf16_fidelity.json

In 16 bits no two differently built computations round alike, so greedy text that matches
``generate``'s exactly is out of reach for any path with other kernels: ``generate`` itself
changes its text when the same batch runs as two halves (``generate_speed.py`` counts that).
This asks the question that is left: does the fast path stray further from the exact
(float32) answer than ``generate`` does? Both answer the same titles in bf16, stopped at EOS,
in one batch, and each is compared with float32 ``generate``: answers identical, and words
in common before the first difference. Runs on CPU (the fast path eager, as
:class:`productdesc.Describer` runs it there) or on a CUDA machine (compiled, CUDA graphs).
"""

from __future__ import annotations

import argparse
import statistics
import time

from _harness import described_records, identical, run_info, save_json


def words_in_common(a: str, b: str) -> int:
    """Words the two answers share before their first difference."""
    n = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model directory or .gguf file")
    parser.add_argument("--titles", type=int, default=64, help="one batch of this many")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=2, help="of the synthetic titles")
    parser.add_argument("--out", default="bf16_fidelity.json")
    args = parser.parse_args()

    from productdesc.generation.describer import Describer
    from productdesc.models import resolve_model

    titles = [r["title"] for r in described_records(args.titles, seed=args.seed)]
    path = resolve_model(args.model).path

    def answers(dtype: str, fast: bool) -> tuple[list[str], float]:
        describer = Describer.from_pretrained(path, backend="transformers", dtype=dtype, fast=fast)
        started = time.perf_counter()
        out = describer.describe_batch(
            titles, batch_size=len(titles), max_new_tokens=args.new_tokens
        )
        return out, time.perf_counter() - started

    exact, _ = answers("float32", False)
    rows, texts = [], {}
    for name, fast in (("generate_bf16", False), ("describer_fast_bf16", True)):
        texts[name], seconds = answers("bfloat16", fast)
        rows.append(
            {
                "name": name,
                "same_as_float32": identical(exact, texts[name]),
                "words_in_common_with_float32": statistics.mean(
                    words_in_common(a, b) for a, b in zip(exact, texts[name], strict=True)
                ),
                "mean_words": statistics.mean(len(a.split()) for a in texts[name]),
                "seconds": seconds,
            }
        )
        print(rows[-1], flush=True)
    report = {
        **run_info("bf16_fidelity"),
        "titles": len(titles),
        "new_tokens": args.new_tokens,
        "float32_mean_words": statistics.mean(len(a.split()) for a in exact),
        "fast_same_as_generate_bf16": identical(
            texts["generate_bf16"], texts["describer_fast_bf16"]
        ),
        "results": rows,
    }
    print(f"fast path = generate, both bf16: {report['fast_same_as_generate_bf16']}/{len(titles)}")
    save_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
