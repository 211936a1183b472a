"""Answer about product titles with a fine-tuned model, using :class:`productdesc.Describer`.

python examples/describe.py                                  # the run examples/finetune.py wrote
python examples/describe.py --model example-out/run "Nice for Mice" --question "Is it for kids?"
python examples/describe.py --model example-out/run "Nice for Mice" "The Prophet" "Ballet Tutu"

One title is streamed as it is generated; several are answered in batches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from productdesc.errors import UserError

DEFAULT_TITLES = ("Nice for Mice", "Girls Ballet Tutu Neon Pink")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("titles", nargs="*", default=DEFAULT_TITLES, help="product titles")
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("example-out/run"),
        help="training output or model directory (default: %(default)s)",
    )
    parser.add_argument("--question", help="a question about the product(s)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="answer length cap (default: %(default)s)"
    )
    parser.add_argument(
        "--backend", default="auto", help="backend to load with (default: the run's)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from productdesc import Describer, GenerationConfig

        describer = Describer.from_pretrained(
            args.model,
            backend=args.backend,
            generation=GenerationConfig(max_new_tokens=args.max_new_tokens, repetition_penalty=1.1),
        )
        if len(args.titles) == 1:
            for piece in describer.stream(args.titles[0], args.question):
                print(piece, end="", flush=True)
            print()
            return 0
        questions = [args.question] * len(args.titles)
        details = describer.describe_batch(args.titles, questions, return_details=True)
    except UserError as exc:
        print(f"describe: error: {exc}", file=sys.stderr)
        return 2
    for title, answer in zip(args.titles, details, strict=True):
        ending = "stopped at EOS" if answer.stopped_at_eos else "cut at --max-new-tokens"
        print(f"== {title}  ({answer.new_tokens} tokens, {ending})\n{answer.text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
