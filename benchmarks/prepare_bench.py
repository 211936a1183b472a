"""prepare speed: productdesc's ``prepare`` against the seed notebook's way, on one file.

    python benchmarks/make_trn.py --out /tmp/trn.json          # once: synthetic full size
    python benchmarks/prepare_bench.py --input /tmp/trn.json     # writes results/prepare.json

Each run is a subprocess, so that its wall time, CPU time (user + sys, workers included) and
memory are its own. Memory is sampled every 50 ms over the whole process tree: the peak of
the summed PSS (proportional set size: shared pages counted once) and the peak RSS of the
largest process. The baseline is run on the first ``--baseline-lines`` lines (it keeps every
record in memory); the library on that prefix too, for the speed-up, and on the full file.

The baseline is written as the seed notebook does it: ``json.loads`` per line,
``html.unescape``, ``re.sub`` of everything but word characters, spaces, commas and periods,
a list of dicts, a pandas DataFrame, ``drop_duplicates``, 100,000-line JSON Lines files.

Agreement: the rules differ on purpose (the library decodes double-escaped entities,
normalises Unicode and whitespace, removes ``_``, and dedupes case- and space-insensitively).
On the records where the rules agree (one ``html.unescape`` is stable and NFKC leaves the
text unchanged), both must keep the same records with the same text (whitespace collapsed);
the report counts every difference, with its cause.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# -- the two contenders (run in a child process) -------------------------------------------------
def run_library(path: str, out: str, workers: int) -> dict:
    from productdesc import AmazonTitlesDataset, PrepareConfig

    manifest = AmazonTitlesDataset(path, PrepareConfig(workers=workers)).prepare(
        out, progress=False
    )
    return {"lines": manifest.lines, "kept": manifest.kept, "dropped": manifest.dropped}


def run_baseline(path: str, out: str) -> dict:
    """The seed notebook's cleaning, as written there (plus uid, to compare records)."""
    import html
    import re

    import pandas as pd

    def clean(text: str) -> str:
        text = html.unescape(text)
        text = re.sub(r"[^\w\s,.]", "", text)
        return text.strip()

    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            rows.append(
                {
                    "uid": record["uid"],
                    "title": clean(record["title"]),
                    "content": clean(record["content"]),
                }
            )
    df = pd.DataFrame(rows)
    lines = len(df)
    df = df[(df["title"] != "") & (df["content"] != "")]
    df = df.drop_duplicates(subset=["title", "content"])
    os.makedirs(out, exist_ok=True)
    for i in range(0, len(df), 100_000):
        df.iloc[i : i + 100_000].to_json(
            f"{out}/part-{i // 100_000:05d}.jsonl", orient="records", lines=True, force_ascii=False
        )
    return {"lines": lines, "kept": len(df)}


# -- measuring a child ---------------------------------------------------------------------------
def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB; (0, 0) once it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def measure(args: list[str]) -> dict:
    """Run ``prepare_bench.py --child ...`` and measure it from outside."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True
    )
    peak = {"pss_sum_kb": 0, "rss_max_kb": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            sizes = [_memory_kb(pid) for pid in _tree(proc.pid)]
            peak["pss_sum_kb"] = max(peak["pss_sum_kb"], sum(p for p, _ in sizes))
            peak["rss_max_kb"] = max(peak["rss_max_kb"], max((r for _, r in sizes), default=0))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"child {args} failed with status {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = json.loads(stdout.strip().splitlines()[-1])
    return {
        **result,
        "wall_s": round(wall, 2),
        "records_per_s": round(result["lines"] / wall),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_line": round(cpu / result["lines"] * 1e6, 2),
        "peak_pss_sum_mb": round(peak["pss_sum_kb"] / 1024),
        "peak_rss_largest_process_mb": round(peak["rss_max_kb"] / 1024),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


# -- agreement -----------------------------------------------------------------------------------
def compare(source: Path, library_out: Path, baseline_out: Path) -> dict:
    """Kept records of both runs, on the records where their rules agree."""
    import html
    import unicodedata

    import orjson

    def collapse(text: str) -> str:
        return " ".join(text.split())

    def rules_agree(text: str) -> bool:
        once = html.unescape(text)
        return html.unescape(once) == once and unicodedata.normalize("NFKC", once) == once

    agree: set[str] = set()
    lines = 0
    with source.open("rb") as fh:
        for line in fh:
            lines += 1
            record = orjson.loads(line)
            if rules_agree(record["title"]) and rules_agree(record["content"]):
                agree.add(record["uid"])

    def kept(directory: Path, pattern: str) -> dict[str, tuple[str, str]]:
        found = {}
        for path in sorted(directory.glob(pattern)):
            with path.open("rb") as fh:
                for line in fh:
                    record = orjson.loads(line)
                    found[record["uid"]] = (collapse(record["title"]), collapse(record["content"]))
        return found

    library = kept(library_out, "*-0*.jsonl")
    baseline = kept(baseline_out, "part-*.jsonl")
    library_keys = {(t.casefold(), c.casefold()) for t, c in library.values()}
    counts = {
        "same_record_same_text": 0,
        "text_differs": 0,
        "baseline_only_case_or_space_duplicate": 0,
        "baseline_only_other": 0,
        "library_only": 0,
    }
    for uid in agree:
        in_library, in_baseline = uid in library, uid in baseline
        if in_library and in_baseline:
            key = "same_record_same_text" if library[uid] == baseline[uid] else "text_differs"
        elif in_baseline:
            title, content = baseline[uid]
            duplicate = (title.casefold(), content.casefold()) in library_keys
            key = "baseline_only_case_or_space_duplicate" if duplicate else "baseline_only_other"
        elif in_library:
            key = "library_only"
        else:
            continue  # dropped by both
        counts[key] += 1
    return {
        "input_lines": lines,
        "lines_where_rules_agree": len(agree),
        "kept_by_library": len(library),
        "kept_by_baseline": len(baseline),
        "on_lines_where_rules_agree": counts,
        "agree": counts["text_differs"]
        == counts["baseline_only_other"]
        == counts["library_only"]
        == 0,
    }


# -- driver --------------------------------------------------------------------------------------
def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((x.split(":", 1)[1].strip() for x in fh if x.startswith("model name")), "")
    except OSError:
        pass
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    import orjson
    import pandas

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "orjson": orjson.__version__,
        "pandas": pandas.__version__,
        "git_commit": commit,
    }


def prefix_file(source: Path, lines: int, path: Path) -> Path:
    if not path.exists():
        with source.open("rb") as src, path.open("wb") as dst:
            for i, line in enumerate(src):
                if i == lines:
                    break
                dst.write(line)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, help="trn.json (make it with make_trn.py)")
    parser.add_argument("--baseline-lines", type=int, default=300_000, help="0: the whole file")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="library runs on the full file")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pd-prepare-bench"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prepare.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, path, out, *rest = args.child
        result = (
            run_library(path, out, int(rest[0])) if kind == "library" else run_baseline(path, out)
        )
        print(json.dumps(result))
        return 0

    if args.input is None or not args.input.is_file():
        parser.error("--input: run benchmarks/make_trn.py --out FILE first")
    import shutil

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prefix = args.input
    if args.baseline_lines:
        prefix = prefix_file(args.input, args.baseline_lines, work / "prefix.json")

    def library(path: Path, name: str) -> dict:
        shutil.rmtree(work / name, ignore_errors=True)
        return measure(["library", str(path), str(work / name), str(args.workers)])

    report: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "input": {"path": str(args.input), "bytes": args.input.stat().st_size},
        "notes": (
            "Wall times depend on what else runs on the machine: the load averages are "
            "recorded with each run, and cpu_s (user + sys of all the run's processes) is "
            "the cost independent of contention."
        ),
    }
    print("baseline ...", file=sys.stderr)
    baseline = measure(["baseline", str(prefix), str(work / "baseline")])
    print("library on the same lines ...", file=sys.stderr)
    on_prefix = library(prefix, "library-prefix")
    report["same_lines"] = {
        "lines": baseline["lines"],
        "baseline": baseline,
        "library": on_prefix,
        "speedup_wall": round(baseline["wall_s"] / on_prefix["wall_s"], 1),
        "speedup_cpu": round(baseline["cpu_s"] / on_prefix["cpu_s"], 1),
        "agreement": compare(prefix, work / "library-prefix", work / "baseline"),
    }
    runs = []
    for i in range(args.repeat):
        print(f"library on the full file, run {i + 1}/{args.repeat} ...", file=sys.stderr)
        runs.append(library(args.input, "library-full"))
    best = min(runs, key=lambda r: r["wall_s"])
    report["full_file"] = {
        "lines": best["lines"],
        "best": best,
        "runs": runs,
        "goal": {"wall_s": 20, "records_per_s": 110_000, "peak_memory_mb": 400, "speedup": 10},
        "goal_met": {
            "wall_s": best["wall_s"] <= 20,
            "records_per_s": best["records_per_s"] >= 110_000,
            "peak_memory_mb": max(r["peak_pss_sum_mb"] for r in runs) <= 400,
        },
    }
    if baseline["lines"] == best["lines"]:  # the baseline ran on the whole file too
        speedup = round(baseline["wall_s"] / best["wall_s"], 1)
        report["full_file"]["speedup_wall_best_run_vs_baseline"] = speedup
        report["full_file"]["goal_met"]["speedup"] = speedup >= 10
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
