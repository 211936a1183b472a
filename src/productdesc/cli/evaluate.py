"""``productdesc evaluate``: score a fine-tuned model against baselines and write a report.

productdesc evaluate --model runs/smollm2-lora --data data/prepared --limit 200
productdesc evaluate --model runs/a --compare runs/b --data data/prepared --out runs/a-vs-b
productdesc evaluate --model runs/plain --context runs/with-context --data data/prepared
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from productdesc.cli._options import (
    add_backend_option,
    add_fast_option,
    add_generation_options,
    generation_from_args,
)
from productdesc.rundir import PLOT_FILE


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a fine-tuned model against the base model and retrieval",
        description=(
            "Answer a prepared split with the tuned model, the base model (same prompt, no "
            "adapter) and the retrieval baseline (the nearest train title's description); score "
            "each against the real descriptions (ROUGE, BLEU, chrF, length, EOS, repetition) "
            f"with bootstrap intervals; write report.md, report.html, results.json, {PLOT_FILE}."
        ),
    )
    parser.add_argument(
        "--model", required=True, type=Path, metavar="DIR", help="training output directory"
    )
    parser.add_argument(
        "--data", required=True, type=Path, metavar="DIR", help="prepared data directory"
    )
    parser.add_argument("--split", default="test", help="split to answer (default: test)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the split's first N records")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="report directory (default: MODEL/evaluation-SPLIT)"
    )
    parser.add_argument("--no-base", action="store_true", help="skip the base-model baseline")
    parser.add_argument("--no-retrieval", action="store_true", help="skip the retrieval baseline")
    parser.add_argument(
        "--compare", type=Path, metavar="DIR", help="a second training output to compare (A/B)"
    )
    parser.add_argument(
        "--context",
        type=Path,
        metavar="DIR",
        help="a training output made with the 'context' template, reported as 'tuned + context'",
    )
    parser.add_argument(
        "--index",
        type=Path,
        metavar="DIR",
        help="retrieval index for the baseline and the context (default: DATA/retrieval, else "
        "the train split indexed in memory); it must not hold the evaluated split",
    )
    parser.add_argument(
        "--questions",
        action="store_true",
        help="ask each title a seeded question ('What is TITLE?', ...) instead of the instruction",
    )
    parser.add_argument(
        "--hybrid",
        type=_score_or_auto,
        metavar="SCORE",
        help="also evaluate copying the nearest train title's description where its BM25 score "
        "is at least SCORE, and the tuned model's answer otherwise; 'auto' fits SCORE on the "
        "validation split (the report names it; pass it to `describe --hybrid`)",
    )
    add_fast_option(parser)
    add_generation_options(
        parser,
        "batch_size",
        "max_new_tokens",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "exponential_decay_length_penalty",
    )
    parser.add_argument(
        "--samples", type=int, default=10, help="records shown in the report (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and sample seed (default 0)")
    add_backend_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from productdesc.cli._options import EVAL_MODULES, require_extra

    # Metrics and the retrieval index: missing, they would fail after every answer is generated.
    require_extra("eval", EVAL_MODULES)
    from productdesc.evaluate import evaluate
    from productdesc.evaluate.metrics import METRICS
    from productdesc.evaluate.report import format_interval

    generation = generation_from_args(args)
    baselines = [
        name
        for name, skip in (("base", args.no_base), ("retrieval", args.no_retrieval))
        if not skip
    ]
    out = args.out if args.out is not None else args.model / f"evaluation-{args.split}"
    # What libraries print while the models load (Unsloth's banners) goes to stderr: stdout
    # holds the results table alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = evaluate(
            args.model,
            args.data,
            split=args.split,
            limit=args.limit,
            out_dir=out,
            baselines=baselines,
            compare=args.compare,
            context_model=args.context,
            index=args.index,
            generation=generation,
            seed=args.seed,
            samples=args.samples,
            backend=args.backend,
            questions=args.questions,
            hybrid_threshold=args.hybrid,
            fast=args.fast,
        )
    shown = [m for m in METRICS if m.name in ("rougeL", "bleu", "chrf", "words", "eos")]
    width = max(len(name) for name in result.runs)
    print(f"{len(result.records)} {args.split} records; 95% bootstrap intervals in brackets")
    print(f"{'system':<{width}}  " + "  ".join(f"{m.label:>20}" for m in shown))
    for name in result.runs:
        cells = [format_interval(m.name, result.intervals[name].get(m.name)) for m in shown]
        print(f"{name:<{width}}  " + "  ".join(f"{c:>20}" for c in cells))
    print(f"report: {out / 'report.html'} (also report.md, results.json)", file=sys.stderr)
    return 0


def _score_or_auto(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
