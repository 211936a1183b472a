"""Does the fast path give ``generate``'s answers, no-loop guard included? Float32, one batch.

    python benchmarks/guard_identity.py --model SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data ../shared/data/amazontitles-sample.jsonl \\
        --out benchmarks/results/guard_identity.json

For each decoding (the default ``no_repeat_ngram_size=4``, the same with its length penalty
starting within the budget, a repetition penalty, no guard),
the same titles are answered twice in float32, where both paths round alike: by
:class:`productdesc.Describer` with ``fast=False`` (transformers ``generate``) and with
``fast=True`` (the static decoder; on CUDA its steps replayed as CUDA graphs, the default).
Reported: answers identical, words in common before the first difference, and the seconds of
each call after one warm-up call. On CPU the fast path is refused (it needs CUDA), so this
is a GPU benchmark; CI checks the same identity on a tiny model
(``tests/generation/test_static_decoder.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _harness import described_records, identical, loadable, run_info, save_json
from bf16_fidelity import words_in_common

DECODINGS: dict[str, dict] = {
    "nrng4 (default)": {"no_repeat_ngram_size": 4},
    # The default's length penalty starts at 256 tokens, past this benchmark's budget: here it
    # starts at 64, so that the fast path's decayed EOS logit is compared with generate's.
    "nrng4+len64": {"no_repeat_ngram_size": 4, "exponential_decay_length_penalty": (64, 1.05)},
    "rp1.2": {"no_repeat_ngram_size": 0, "repetition_penalty": 1.2},
    "greedy": {"no_repeat_ngram_size": 0},
}


def titles_from(path: str | None, n: int) -> list[str]:
    """The first ``n`` titles of a ``trn.json``-style file, or synthetic ones without one."""
    if path is None:
        return [r["title"] for r in described_records(n, seed=2)]
    titles = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            title = json.loads(line).get("title", "").strip()
            if title:
                titles.append(title)
            if len(titles) == n:
                break
    return titles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model or run directory, or a .gguf")
    parser.add_argument("--data", help="real titles from this JSONL (default: synthetic)")
    parser.add_argument("--titles", type=int, default=64, help="one batch of this many")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default="guard_identity.json")
    args = parser.parse_args()

    from productdesc.generation.describer import Describer

    titles = titles_from(args.data, args.titles)
    path = loadable(args.model)
    describers = {
        fast: Describer.from_pretrained(path, backend="transformers", dtype="float32", fast=fast)
        for fast in (False, True)
    }

    def answers(fast: bool, decoding: dict) -> tuple[list[str], float]:
        call = dict(batch_size=len(titles), max_new_tokens=args.new_tokens, **decoding)
        describers[fast].describe_batch(titles[:2], **call)  # warm-up: graphs, kernels
        started = time.perf_counter()
        out = describers[fast].describe_batch(titles, **call)
        return out, time.perf_counter() - started

    rows = []
    for name, decoding in DECODINGS.items():
        (plain, plain_s), (fast, fast_s) = answers(False, decoding), answers(True, decoding)
        rows.append(
            {
                "decoding": name,
                "settings": decoding,
                "identical": identical(plain, fast),
                "words_in_common": statistics.mean(
                    words_in_common(a, b) for a, b in zip(plain, fast, strict=True)
                ),
                "mean_words": statistics.mean(len(a.split()) for a in plain),
                "generate_s": round(plain_s, 2),
                "fast_s": round(fast_s, 2),
                # Positions, not titles: the real records' text stays out of the repository.
                "differing": [
                    {"title_index": i, "generate": a, "fast": b}
                    for i, (a, b) in enumerate(zip(plain, fast, strict=True))
                    if a != b
                ][:3],
            }
        )
        print(
            f"{name}: {rows[-1]['identical']}/{len(titles)} identical, generate {plain_s:.2f} s, "
            f"fast {fast_s:.2f} s",
            flush=True,
        )
    report = {
        **run_info("guard_identity"),
        "model": args.model,
        "titles": len(titles),
        "new_tokens": args.new_tokens,
        "dtype": "float32",
        "results": rows,
    }
    save_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
