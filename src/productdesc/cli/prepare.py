"""``productdesc prepare``: clean, split and shard ``trn.json`` into a directory.

::

    productdesc prepare trn.json --out data/prepared --keep-chars "'&%/-"
    productdesc prepare --sample --out data/sample      # the sample shipped in the package
    productdesc prepare items.csv --columns title=name,content=description --out data/items
    productdesc prepare data/hf-dir --dataset-split train --out data/hf   # datasets reads it
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

# PrepareConfig fields settable here. An option not given is not passed, so the defaults are
# PrepareConfig's; the help texts repeat them (a test checks that they agree).
_OPTIONS = (
    "columns",
    "shard_size",
    "keep_chars",
    "min_length",
    "dedupe",
    "split",
    "workers",
    "rejects_per_reason",
    "max_unreadable",
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare",
        help="clean, split and shard trn.json (JSON Lines, plain or .gz; CSV, parquet, or a "
        "datasets directory or Hub id)",
        description=(
            "Clean trn.json (HTML entities, Unicode, unwanted characters, empty records, "
            "duplicates), split it train/validation/test by title and write JSON Lines shards, "
            "rejects.jsonl and manifest.json to --out."
        ),
    )
    parser.add_argument(
        "input",
        nargs="?",
        help="trn.json or trn.json.gz, a file or a stream (/dev/stdin, <(...), a FIFO); a "
        ".csv/.tsv (plain or .gz) or parquet file; a directory or Hub id that "
        "datasets.load_dataset reads; omitted: the bundled sample",
    )
    parser.add_argument(
        "--sample", action="store_true", help="prepare the sample trn.json shipped in the package"
    )
    parser.add_argument("--out", "-o", required=True, help="output directory (new or empty)")
    s = argparse.SUPPRESS
    parser.add_argument(
        "--columns",
        default=s,
        metavar="FIELD=COLUMN,...",
        help="the input's column (or JSON key) for title, content or uid, e.g. "
        "title=name,content=description (each field from the column of its name)",
    )
    parser.add_argument(
        "--dataset-split",
        default=None,
        metavar="NAME",
        help="the split of a datasets input to read (its only one)",
    )
    parser.add_argument("--shard-size", type=int, default=s, help="records a shard (100000)")
    parser.add_argument(
        "--keep-chars",
        default=s,
        metavar="CHARS",
        help="characters kept besides letters, digits, spaces, commas and periods, e.g. "
        '"\'&%%/-" (none, as the seed notebook; write --keep-chars=-... for a set that '
        "starts with -)",
    )
    parser.add_argument(
        "--min-length", type=int, default=s, help="drop titles or descriptions shorter (1)"
    )
    parser.add_argument(
        "--dedupe",
        choices=["text", "title", "uid", "off"],
        default=s,
        help="duplicates share the normalised title and content (text), the title, or the "
        "uid; off keeps them (text)",
    )
    parser.add_argument(
        "--split", default=s, metavar="T/V/T", help="train/validation/test shares (98/1/1)"
    )
    parser.add_argument("--workers", type=int, default=s, help="processes that parse and clean (2)")
    parser.add_argument(
        "--rejects-per-reason",
        type=int,
        default=s,
        metavar="N",
        help="dropped lines of each reason written to rejects.jsonl (100)",
    )
    parser.add_argument(
        "--max-unreadable",
        type=float,
        default=s,
        metavar="SHARE",
        help="fail, writing nothing, when more than this share of the lines are no record "
        "(not UTF-8, not JSON, a field missing...) (0.9); an input of no records always fails",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from productdesc.data import AmazonTitlesDataset, PrepareConfig, sample_path
    from productdesc.errors import UserError

    if args.sample and args.input:
        raise UserError("give INPUT or --sample, not both")
    options = {name: getattr(args, name) for name in _OPTIONS if hasattr(args, name)}
    try:
        config = PrepareConfig(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    path = args.input
    if path is None:
        path = sample_path()
        if not args.sample:
            print(f"no INPUT given: preparing the bundled sample ({path.name})", file=sys.stderr)
    dataset = AmazonTitlesDataset(path, config, split=args.dataset_split)
    start = time.perf_counter()
    manifest = dataset.prepare(args.out, progress=not args.no_progress)
    print(summary(manifest, time.perf_counter() - start, args.out))
    return 0


def summary(manifest: Any, seconds: float, out: str) -> str:
    """The closing report: counts by reason, splits, where the rejects are."""
    total = manifest.lines
    rate = total / seconds if seconds > 0 else float("inf")
    rows = [
        ("kept", manifest.kept),
        *sorted(manifest.dropped.items(), key=lambda kv: (-kv[1], kv[0])),
    ]
    width = max(len(name) for name, _ in [*rows, ("validation", 0)])
    lines = [
        f"Prepared {manifest.input.name} -> {out} in {seconds:.1f} s ({rate:,.0f} records/s)",
        "",
        f"  {'outcome':<{width}}  {'records':>11}  {'share':>6}",
    ]
    for name, count in rows:
        share = 100 * count / total if total else 0.0
        lines.append(f"  {name:<{width}}  {count:>11,}  {share:>5.1f}%")
    lines.append(f"  {'total lines':<{width}}  {total:>11,}  {100.0 if total else 0.0:>5.1f}%")
    lines += ["", f"  {'split':<{width}}  {'records':>11}  {'shards':>6}"]
    for name, split in manifest.splits.items():
        lines.append(f"  {name:<{width}}  {split.rows:>11,}  {len(split.shards):>6}")
    if manifest.rejects is not None:
        lines += [
            "",
            f"First dropped lines of each reason: {out}/{manifest.rejects.name} "
            f"({manifest.rejects.rows:,} lines)",
        ]
    return "\n".join(lines)
