"""Answer quality on held-out real records: the sweep behind the ``gpu-small`` preset, the
decoding table behind the no-loop default, and the report per system (docs/results/answer-quality).

    HF_HUB_OFFLINE=1 python benchmarks/answer_quality.py --stage sweep   # ~5 min on one H200
    HF_HUB_OFFLINE=1 python benchmarks/answer_quality.py --stage final   # ~5 min, reads the sweep

1. ``prepare``: the 600 real records of ``../shared/data`` split by title hash 65/10/25 into
   ``--work``/data (outside the repository: the records never enter it), and the train split
   indexed (``productdesc index``).
2. ``sweep``: :data:`GRID` variations of the ``gpu-small`` preset, each trained on the train
   split with validation loss every few steps and early stopping, then scored on the
   validation split (ROUGE-L of its answers with the default decoding). ``sweep.json``.
3. ``final``: the best sweep run is the tuned model. A copy-aware context model is trained with
   the same recipe (other listings of the same product stay in a record's context, the record
   itself never). Decoding variants are scored on validation and test (``decoding.json``); the
   copy threshold of the hybrid (which otherwise answers with the tuned model) is fitted on
   validation; then ``evaluate`` scores retrieval,
   base, tuned, tuned + context and the hybrid on the test split with the library's defaults
   (``report.md``, ``results.json``, ``subsets.json``), and once more with questions.

Everything is the library's public API; ``--model`` takes any model the library loads, so a CPU
smoke run works on a tiny model (``--grid smoke --limit 24``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "amazontitles-sample.jsonl"

# name -> overrides of the gpu-small preset (dotted keys)
GRID: dict[str, dict[str, dict]] = {
    "smoke": {
        "a": {"training.learning_rate": 1e-3},
        "b": {"training.learning_rate": 2e-3, "question_share": 0.0},
    },
    "gpu": {
        "lr5e-4_r16": {"training.learning_rate": 5e-4},
        "lr1e-3_r16": {"training.learning_rate": 1e-3},
        "lr2e-3_r16": {"training.learning_rate": 2e-3},
        "lr5e-4_r64": {"training.learning_rate": 5e-4, "lora.r": 64, "lora.lora_alpha": 64},
        "lr1e-3_r64": {"training.learning_rate": 1e-3, "lora.r": 64, "lora.lora_alpha": 64},
        "lr1e-3_r16_q0": {"training.learning_rate": 1e-3, "question_share": 0.0},
        "lr1e-3_r16_len512": {"training.learning_rate": 1e-3, "model.max_seq_length": 512},
    },
    # a larger base model (google/gemma-3-270m): the learning rates around SmolLM2's best
    "gpu-short": {
        "lr5e-4_r16": {"training.learning_rate": 5e-4},
        "lr1e-3_r16": {"training.learning_rate": 1e-3},
        "lr2e-3_r16": {"training.learning_rate": 2e-3},
    },
}

# name -> GenerationConfig overrides, scored on validation and test
DECODING: dict[str, dict] = {
    "greedy_128": {"no_repeat_ngram_size": 0, "max_new_tokens": 128},
    "greedy": {"no_repeat_ngram_size": 0},
    "nrng3": {"no_repeat_ngram_size": 3},
    "nrng4": {"no_repeat_ngram_size": 4},
    "rp1.1": {"no_repeat_ngram_size": 0, "repetition_penalty": 1.1},
    "rp1.2": {"no_repeat_ngram_size": 0, "repetition_penalty": 1.2},
    "nrng4_len": {"no_repeat_ngram_size": 4, "exponential_decay_length_penalty": (256, 1.05)},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", choices=["prepare", "sweep", "final", "all"], default="all")
    add("--data", type=Path, default=DEFAULT_DATA, help="trn.json-style JSONL (%(default)s)")
    add("--work", type=Path, default=Path("/tmp/answer-quality"), help="data and runs")
    add("--out", type=Path, default=HERE.parent / "docs" / "results" / "answer-quality")
    add("--model", default=None, help="model.model_name (default: the preset's)")
    add("--grid", choices=sorted(GRID), default="gpu")
    add("--split", default="65/10/25", help="train/validation/test shares (%(default)s)")
    add("--limit", type=int, default=None, help="records of each evaluated split (all)")
    add("--max-steps", type=int, default=None, help="cap every training run (smoke runs)")
    add("--batch-size", type=int, default=256, help="titles a generate call (%(default)s)")
    add("--fast", action=argparse.BooleanOptionalAction, default=False, help="fast path")
    add("--decoding", default=",".join(DECODING), help="decoding variants scored (all)")
    return parser.parse_args(argv)


def config_for(args: argparse.Namespace, overrides: dict) -> object:
    from productdesc.config import FineTuneConfig

    data = FineTuneConfig.preset("gpu-small").to_dict()
    if args.model:
        data["model"]["model_name"] = args.model
    if args.max_steps:
        data["training"]["max_steps"] = args.max_steps
    for key, value in overrides.items():
        *sections, name = key.split(".")
        target = data
        for section in sections:
            target = target[section]
        target[name] = value
    return FineTuneConfig.from_dict(data)


def prepare(args: argparse.Namespace) -> Path:
    from productdesc import AmazonTitlesDataset, PrepareConfig
    from productdesc.retrieval.store import build_index

    data_dir = args.work / "data"
    if not (data_dir / "manifest.json").is_file():
        config = PrepareConfig(split=args.split)
        AmazonTitlesDataset(args.data, config=config).prepare(data_dir, progress=False)
        build_index(data_dir, show_progress=False)
    return data_dir


def records(data_dir: Path, split: str, limit: int | None) -> list[dict]:
    from productdesc import AmazonTitlesDataset

    rows = list(AmazonTitlesDataset.from_prepared(data_dir).iter_split(split))
    return rows[:limit] if limit else rows


def answer(run_dir: Path, rows: list[dict], args, retriever=None, **generation) -> list:
    from productdesc import Describer, GenerationConfig
    from productdesc.generation.describer import evolve_generation

    gen = evolve_generation(GenerationConfig(batch_size=args.batch_size), **generation)
    extra = {} if retriever is None else {"retriever": retriever}
    describer = Describer.from_pretrained(run_dir, generation=gen, fast=args.fast, **extra)
    try:
        return describer.describe_batch([r["title"] for r in rows], return_details=True)
    finally:
        del describer


def summarise(details: list, rows: list[dict]) -> dict:
    from productdesc.evaluate.metrics import score_system

    scores = score_system(
        [d.text for d in details], [r["content"] for r in rows], [d.stopped_at_eos for d in details]
    )
    return scores.values()


def train(args, config, data_dir: Path, out: Path):
    from productdesc import LoraFineTuner

    start = time.perf_counter()
    result = LoraFineTuner(config).train(data_dir, output_dir=out, overwrite=True)
    return result, time.perf_counter() - start


def sweep(args: argparse.Namespace, data_dir: Path) -> dict:
    val = records(data_dir, "validation", args.limit)
    path = args.work / "sweep.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for name, overrides in GRID[args.grid].items():
        if name in done:
            continue
        config = config_for(args, overrides)
        result, seconds = train(args, config, data_dir, args.work / "sweep" / name)
        started = time.perf_counter()
        details = answer(result.output_dir, val, args)
        done[name] = {
            "overrides": overrides,
            "steps": result.global_step,
            "epochs": result.history[-1].get("epoch") if result.history else None,
            "initial_eval_loss": result.initial_eval_loss,
            "best_eval_loss": min(
                (h["eval_loss"] for h in result.history if "eval_loss" in h), default=None
            ),
            "train_s": round(seconds, 1),
            "generate_s": round(time.perf_counter() - started, 1),
            "validation": summarise(details, val),
        }
        path.write_text(json.dumps(done, indent=1) + "\n")
        logging.info("sweep %s: %s", name, json.dumps(done[name]))
    return done


def best_of(sweep_results: dict) -> str:
    return max(sweep_results, key=lambda n: sweep_results[n]["validation"]["rougeL"])


def final(args: argparse.Namespace, data_dir: Path) -> None:
    from real_result import code_source, machine, redact, subset_scores, write_subsets

    from productdesc import GenerationConfig
    from productdesc.evaluate import evaluate

    args.out.mkdir(parents=True, exist_ok=True)
    swept = json.loads((args.work / "sweep.json").read_text())
    best = best_of(swept)
    times: dict[str, float] = {}
    tuned = args.work / "sweep" / best
    if not (tuned / "adapter_config.json").is_file():  # a fresh machine: train the winner again
        result, times["train_tuned_s"] = train(
            args, config_for(args, swept[best]["overrides"]), data_dir, tuned
        )
        logging.info("tuned model (%s): %s", best, result.summary())
    val = records(data_dir, "validation", args.limit)
    test = records(data_dir, "test", args.limit)

    context = args.work / "context"
    if not (context / "adapter_config.json").is_file():
        import attrs

        config = attrs.evolve(
            config_for(args, swept[best]["overrides"]),
            template="context",
            template_options={"leave_out_same_description": False},
        )
        result, times["train_context_s"] = train(args, config, data_dir, context)
        logging.info("context model: %s", result.summary())

    table_path = args.out / "decoding.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {}
    for name in args.decoding.split(","):
        overrides = DECODING[name]
        if name in table:  # a call cut short resumes where it stopped
            continue
        started = time.perf_counter()
        details = answer(tuned, val + test, args, **overrides)
        table[name] = {
            "generation": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
            "validation": summarise(details[: len(val)], val),
            "test": summarise(details[len(val) :], test),
            "seconds": round(time.perf_counter() - started, 1),
        }
        logging.info("decoding %s: %s", name, json.dumps(table[name]))
        table_path.write_text(json.dumps(table, indent=1) + "\n")

    reports, thresholds = {}, {}
    for label, questions in (("", False), ("-questions", True)):
        out = Path(f"{args.out}{label}")
        started = time.perf_counter()
        result = evaluate(
            tuned,
            data_dir,
            limit=args.limit,
            out_dir=out,
            context_model=context,
            # fitted on validation, against the tuned model's answers there
            hybrid_threshold="auto",
            generation=GenerationConfig(batch_size=args.batch_size),
            questions=questions,
            fast=args.fast,
            progress=False,
        )
        times[f"evaluate{label}_s"] = time.perf_counter() - started
        thresholds[label or "describe"] = result.meta["hybrid_threshold"]
        outputs = {n: (r.outputs, r.stopped_at_eos) for n, r in result.runs.items()}
        write_subsets(out, subset_scores(data_dir, result.records, outputs))
        redact(out)
        reports[label or "describe"] = {
            n: {m: iv.value for m, iv in result.intervals[n].items()} for n in result.runs
        }
    run = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code": code_source(),
        "machine": machine(),
        "tuned": best,
        "sweep": swept,
        "copy_threshold": thresholds,
        "wall_times": {k: round(v, 1) for k, v in times.items()},
        "summary": reports,
    }
    (args.out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(json.dumps(reports, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data_dir = prepare(args)
    if args.stage in ("sweep", "all"):
        print(json.dumps(sweep(args, data_dir), indent=1))
    if args.stage in ("final", "all"):
        final(args, data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
