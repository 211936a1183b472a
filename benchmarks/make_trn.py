"""Write a synthetic full-size ``trn.json`` (2,248,619 lines) for the prepare benchmark.

    python benchmarks/make_trn.py --out /tmp/trn.json            # about 1.4 GB, ~1 minute
    python benchmarks/make_trn.py --out /tmp/trn.json.gz --lines 300000

Deterministic (same seed, same bytes on every machine); the shape is documented in
:mod:`productdesc.data.synthetic`. Prints the file's statistics as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import orjson

from productdesc.data.synthetic import FULL_SIZE, write_trn


def describe(path: Path, sample_every: int = 50) -> dict:
    """Line count and length statistics (of every ``sample_every``-th record), and the hash."""
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 24):
            sha.update(block)
    if path.suffix == ".gz":
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha.hexdigest()}
    lines = 0
    content, title, empty, entities = [], [], 0, 0
    with path.open("rb") as fh:
        for i, line in enumerate(fh):
            lines += 1
            if i % sample_every:
                continue
            record = orjson.loads(line)
            title.append(len(record["title"]))
            if record["content"]:
                content.append(len(record["content"]))
            else:
                empty += 1
            entities += "&" in record["title"] + record["content"]
    sampled = len(title)
    deciles = statistics.quantiles(content, n=10)
    return {
        "path": str(path),
        "lines": lines,
        "bytes": path.stat().st_size,
        "sha256": sha.hexdigest(),
        f"sampled_every_{sample_every}": sampled,
        "empty_content_share": round(empty / sampled, 4),
        "with_entities_share": round(entities / sampled, 4),
        "content_chars_median": statistics.median(content),
        "content_chars_p90": round(deciles[-1]),
        "content_chars_max_sampled": max(content),
        "title_chars_median": statistics.median(title),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="file to write (.gz: gzip)")
    parser.add_argument("--lines", type=int, default=FULL_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    write_trn(args.out, n=args.lines, seed=args.seed, progress=True)
    stats = {"seconds": round(time.perf_counter() - start, 1), **describe(args.out)}
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
