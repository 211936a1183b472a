"""Score a fine-tuned model against the base model and a retrieval baseline.

python examples/evaluate.py                                  # example-out/run on example-out/data
python examples/evaluate.py --model example-out/run --data example-out/data --limit 200

Writes report.md, report.html, results.json and loss.png to --out and prints the metrics with
their 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from productdesc.errors import UserError

SHOWN = ("rougeL", "bleu", "chrf", "words", "eos")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("example-out/run"),
        help="training output (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("example-out/data"),
        help="prepared data (default: %(default)s)",
    )
    parser.add_argument("--split", default="test", help="split to answer (default: %(default)s)")
    parser.add_argument(
        "--limit", type=int, default=20, help="records to answer (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, help="report directory (default: MODEL/evaluation)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="answer length cap (default: %(default)s)"
    )
    parser.add_argument("--no-base", action="store_true", help="skip the base-model baseline")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.model / "evaluation"
    try:
        from productdesc import GenerationConfig
        from productdesc.evaluate import evaluate

        result = evaluate(
            args.model,
            args.data,
            split=args.split,
            limit=args.limit,
            out_dir=out,
            baselines=("retrieval",) if args.no_base else ("retrieval", "base"),
            generation=GenerationConfig(max_new_tokens=args.max_new_tokens),
        )
    except UserError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(result.records)} {args.split} records; value [95% interval]")
    print(f"{'system':<10}" + "".join(f"  {m:>22}" for m in SHOWN))
    for system, metrics in result.intervals.items():
        cells = [_interval(metrics.get(m)) for m in SHOWN]
        print(f"{system:<10}" + "".join(f"  {c:>22}" for c in cells))
    print(f"report: {out / 'report.md'}")
    return 0


def _interval(iv: Any) -> str:
    return "-" if iv is None else f"{iv.value:.3g} [{iv.low:.3g}, {iv.high:.3g}]"


if __name__ == "__main__":
    sys.exit(main())
