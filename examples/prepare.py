"""Clean, split and shard ``trn.json`` with :class:`productdesc.AmazonTitlesDataset`.

python examples/prepare.py                                   # the sample bundled in the package
python examples/prepare.py trn.json.gz --out data/ --split 98/1/1 --keep-chars "-'&%/"
python examples/prepare.py --steps html_unescape,normalize_unicode,strip_boilerplate,keep_chars,drop_short,dedupe
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from productdesc import AmazonTitlesDataset, PrepareConfig
from productdesc.errors import UserError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "input", nargs="?", type=Path, help="trn.json(.gz) (default: the bundled sample)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("example-out/data"),
        help="output directory (default: %(default)s)",
    )
    # The bundled sample is small (89 records kept): 80/10/10 keeps a few for validation and
    # evaluation.
    parser.add_argument(
        "--split", default="80/10/10", help="train/validation/test shares (default: %(default)s)"
    )
    parser.add_argument(
        "--keep-chars",
        default="",
        help="characters kept besides letters, digits, spaces, ',' and '.'",
    )
    parser.add_argument(
        "--steps",
        help="comma-separated registered cleaning steps replacing the default pipeline "
        "(see `productdesc plugins --group cleaners`)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="cleaning processes (default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = {"split": args.split, "workers": args.workers}
        if args.steps:
            options["steps"] = tuple(s.strip() for s in args.steps.split(",") if s.strip())
        else:
            options["keep_chars"] = args.keep_chars
        config = PrepareConfig(**options)
        dataset = (
            AmazonTitlesDataset.sample(config)
            if args.input is None
            else AmazonTitlesDataset(args.input, config)
        )
        manifest = dataset.prepare(args.out)
    except (UserError, ValueError, TypeError) as exc:  # attrs validators raise the last two
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2

    print(f"read {manifest.lines} lines of {dataset.path}: kept {manifest.kept}")
    for reason, count in sorted(manifest.dropped.items()):
        print(f"  dropped {count:>7}  {reason}")
    prepared = AmazonTitlesDataset.from_prepared(args.out)
    print("splits: " + ", ".join(f"{name} {rows}" for name, rows in prepared.splits.items()))
    first = next(prepared.iter_split("train"), None)
    if first is not None:
        print(f"first train record: {first['title']!r} -> {first['content'][:70]!r}...")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
