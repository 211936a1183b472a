"""Tuned + context on 600 real AmazonTitles records: reproduces ``docs/results/context-600/``.

    HF_HUB_OFFLINE=1 python docs/results/context-600/run.py --limit 64 --no-base  # train, pilot
    HF_HUB_OFFLINE=1 python docs/results/context-600/run.py --skip-train \
        --reuse docs/results/smollm2-600/results.json                        # the report here

Same data, split and recipe as ``benchmarks/real_result.py`` (``docs/results/smollm2-600``),
except the prompt template, the row length it needs, and a shorter run (see
:func:`train_config`):

1. prepare the sample (``--data``) with the library's deterministic 80/0/20 split into
   ``--work``/data (outside the repository: the records never enter it), and index its train
   split (``productdesc index``: ``--work``/data/retrieval);
2. fine-tune SmolLM2-135M with the ``"context"`` template into ``--work``/run: each training
   record sees its 3 nearest train products (never itself: leave-one-out by uid, normalised
   title and description);
3. evaluate on the test split: the retrieval baseline, the base model, the model tuned without
   context (``--tuned``, the other run's directory, when given) and tuned + context, all with
   the same decoding; the context comes from the train-split index, so a test record's own
   description is never in it. Writes ``report.md``, ``report.html``, ``results.json``,
   ``loss.png`` and ``run.json`` here.

``--reuse RESULTS_JSON`` takes the retrieval, base and tuned answers from the run without
context (``docs/results/smollm2-600/results.json``: the same test records, checked, and the same
decoding, copied) and generates only tuned + context, saving the CPU time of two generation
passes; the scores and intervals are then computed over all four systems together.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach a hub

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "amazontitles-sample.jsonl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--data", type=Path, default=DEFAULT_DATA, help="trn.json-style JSONL (%(default)s)")
    add("--work", type=Path, default=Path("/tmp/ctx600"), help="data + run dir (%(default)s)")
    add("--out", type=Path, default=HERE, help="report directory (%(default)s)")
    add("--tuned", type=Path, help="a run tuned without context on the same split (optional)")
    add("--max-steps", type=int, default=40, help="optimizer steps (%(default)s)")
    add("--lr", type=float, default=1e-3, help="peak learning rate (%(default)s)")
    add("--max-seq-length", type=int, default=640, help="tokens a packed row (%(default)s)")
    add("--batch", type=int, default=2, help="packed rows a step (%(default)s)")
    add("--max-new-tokens", type=int, default=128, help="answer cap, all systems (%(default)s)")
    add("--limit", type=int, help="evaluate only the first N test records")
    add("--no-base", action="store_true", help="skip the base model (saves a generation pass)")
    add("--measure", type=int, metavar="N", help="only time N training steps, then exit")
    add("--skip-train", action="store_true", help="evaluate the existing WORK/run")
    add("--reuse", type=Path, metavar="RESULTS_JSON", help="answers of the run without context")
    add(
        "--keep-same-description",
        action="store_true",
        help="train with other listings' identical descriptions left in the context "
        "(the 'context-same-description' template: leave_out_same_description=False)",
    )
    return parser.parse_args(argv)


def train_config(args: argparse.Namespace, max_steps: int):
    """benchmarks/real_result.py's recipe with the context template; why, in the comments."""
    from productdesc import FineTuneConfig

    return FineTuneConfig.from_dict(
        {
            "backend": "transformers",  # as the run without context
            # k=3 neighbours, 1200 characters of their descriptions
            "template": "context-same-description" if args.keep_same_description else "context",
            "question_share": 0.0,  # the evaluation asks the fixed instruction only
            "model": {
                "model_name": "smollm2-135m",
                # The context makes prompts about 300 tokens longer (median prompt 352 tokens
                # with SmolLM2's tokenizer, against 56): 640 holds prompt and answer for 91% of
                # the train records (the run without context: 384 for 95%).
                "max_seq_length": args.max_seq_length,
                "load_in_4bit": False,
                "dtype": "float32",
            },
            "lora": {"r": 16, "lora_alpha": 32, "use_gradient_checkpointing": False},
            "training": {
                # 2 packed rows of 640 tokens, 40 steps (0.24 epoch): what the shared 2-core CPU
                # ran in 47 minutes (70 s a step under load). The run without context: 36 steps
                # of 8 rows of 384 tokens (0.63 epoch). A higher peak rate for the shorter run.
                "per_device_train_batch_size": args.batch,
                "gradient_accumulation_steps": 1,
                "max_steps": max_steps,
                "warmup_steps": max(3, max_steps // 20),
                "learning_rate": args.lr,
                "lr_scheduler_type": "cosine",
                "optim": "adamw_torch",
                "logging_steps": 1,
                "save_steps": 50,  # a killed run resumes instead of restarting
                "save_total_limit": 1,
                "seed": 3407,
            },
        }
    )


def prepare(args: argparse.Namespace) -> Path:
    from productdesc import AmazonTitlesDataset, PrepareConfig
    from productdesc.retrieval.store import INDEX_DIR, build_index

    data_dir = args.work / "data"
    if not (data_dir / "manifest.json").is_file():
        AmazonTitlesDataset(args.data, PrepareConfig(split="80/0/20")).prepare(data_dir)
    if not (data_dir / INDEX_DIR / "index.json").is_file():
        build_index(data_dir)  # the train split only
    return data_dir


def train(args: argparse.Namespace, data_dir: Path, out: Path, max_steps: int):
    from productdesc import LoraFineTuner

    resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    tuner = LoraFineTuner(train_config(args, max_steps))  # context: data_dir/retrieval
    return tuner.train(data_dir, output_dir=out, resume_from_checkpoint=resume or None)


def register_same_description_template() -> None:
    """Register ``"context-same-description"``: the context template keeping, in training
    pairs, other listings whose description is the record's own (an experiment's variant;
    registered in every process that trains or loads such a run)."""
    from attrs import field, frozen

    from productdesc.prompts import ContextTemplate, templates

    @frozen(kw_only=True)
    class SameDescriptionContext(ContextTemplate):
        name = "context-same-description"
        leave_out_same_description: bool = field(default=False)

    if "context-same-description" not in templates:
        templates.register("context-same-description", SameDescriptionContext)


def _history_summary(run_dir: Path) -> str | None:
    path = run_dir / "loss_history.json"
    if not path.is_file():
        return None
    losses = [(h["step"], h["loss"]) for h in json.loads(path.read_text()) if "loss" in h]
    return f"{losses[-1][0]} steps, training loss {losses[0][1]:.4f} -> {losses[-1][1]:.4f}"


def _real_result():
    """benchmarks/real_result.py as a module: its subset scores, redaction and report title."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_result", REPO / "benchmarks/real_result.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reuse_and_evaluate(args: argparse.Namespace, data_dir: Path, run_dir: Path):
    """Score the earlier run's answers with tuned + context's, generated here on the same records."""
    from productdesc import AmazonTitlesDataset, Describer, GenerationConfig
    from productdesc.evaluate import SystemRun, read_loss_history, score_runs, write_report
    from productdesc.evaluate.runner import LABELS
    from productdesc.retrieval.store import INDEX_DIR, open_index

    previous = json.loads(args.reuse.read_text(encoding="utf-8"))
    earlier = previous["records"]  # redacted: row i is the test split's i-th record
    records = list(AmazonTitlesDataset.from_prepared(data_dir).iter_split("test"))[: len(earlier)]
    if [r["uid"] for r in records] != [r["uid"] for r in earlier] or len(records) != len(earlier):
        raise SystemExit(f"{args.reuse} answered other records: prepare with the same split")
    titles = [r["title"] for r in records]
    index = open_index(data_dir / INDEX_DIR)
    runs = [
        SystemRun(
            "retrieval",
            LABELS["retrieval"],
            index.answer(titles),  # redacted there (train records): the same search again
            source=str(data_dir / INDEX_DIR),
        )
    ]
    for name in ("base", "tuned"):
        rows = [r["systems"][name] for r in earlier]
        runs.append(
            SystemRun(
                name,
                previous["systems"][name]["label"],
                [row["text"] for row in rows],
                stopped_at_eos=[row["stopped_at_eos"] for row in rows],
                new_tokens=[row["new_tokens"] for row in rows],
                seconds=previous["systems"][name]["seconds"],
                source=previous["systems"][name]["source"],
            )
        )
    generation = GenerationConfig(**previous["meta"]["generation"])  # the same decoding
    describer = Describer.from_pretrained(
        run_dir, retriever=index, generation=generation, backend="transformers"
    )
    start = time.perf_counter()
    details = describer.describe_batch(titles, progress=True, return_details=True)
    runs.append(
        SystemRun(
            "context",
            LABELS["context"],
            [d.text for d in details],
            stopped_at_eos=[d.stopped_at_eos for d in details],
            new_tokens=[d.new_tokens for d in details],
            seconds=time.perf_counter() - start,
            source=str(run_dir),
        )
    )
    meta = {
        key: previous["meta"][key]
        for key in ("model_dir", "split", "limit", "generation", "productdesc_version")
    }
    meta.update(
        data_dir=str(data_dir),
        context_dir=str(run_dir),
        index=str(data_dir / INDEX_DIR),
        run_config=(run_dir / "productdesc_config.toml").read_text(encoding="utf-8"),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        samples=previous["meta"]["samples"],
        reused_from=f"{args.reuse} (base and tuned answers)",
    )
    result = score_runs(records, runs, n_resamples=previous["meta"]["n_resamples"],
                        seed=previous["meta"]["seed"], meta=meta,
                        loss_history=read_loss_history(run_dir))  # fmt: skip
    write_report(result, args.out)
    rr = _real_result()
    references = [{"title": r["title"], "reference": r["content"]} for r in records]
    outputs = {run.name: (run.outputs, run.stopped_at_eos) for run in runs}
    rr.write_subsets(args.out, rr.subset_scores(data_dir, references, outputs))
    rr.redact(args.out)
    title = "SmolLM2-135M with context from the train split: 600 real records"
    if args.keep_same_description:
        title += " (other listings' identical descriptions kept in the training context)"
    rr.retitle(args.out, title)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    register_same_description_template()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    times: dict[str, float] = {}
    start = time.perf_counter()
    data_dir = prepare(args)
    times["prepare_and_index_s"] = time.perf_counter() - start

    if args.measure:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="measure-", dir=args.work) as scratch:
            result = train(args, data_dir, Path(scratch) / "run", args.measure)
        print(
            f"{args.measure} steps: {result.runtime_s / args.measure:.2f} s a step; "
            f"{result.train_examples} examples; loss {result.first_loss} -> {result.train_loss}"
        )
        return 0

    run_dir = args.work / "run"
    summary = _history_summary(run_dir)  # of the run evaluated, also when it was trained before
    if not args.skip_train:
        start = time.perf_counter()
        summary = train(args, data_dir, run_dir, args.max_steps).summary()
        times["train_s"] = time.perf_counter() - start
        print(summary)

    from productdesc import AmazonTitlesDataset, GenerationConfig
    from productdesc.evaluate import evaluate

    generation = GenerationConfig(max_new_tokens=args.max_new_tokens)
    baselines = ("retrieval",) if args.no_base else ("base", "retrieval")
    start = time.perf_counter()
    if args.reuse is not None:
        result = reuse_and_evaluate(args, data_dir, run_dir)
    elif args.tuned is not None:  # rows: retrieval, base, tuned, tuned + context
        result = evaluate(args.tuned, data_dir, context_model=run_dir, limit=args.limit,
                          baselines=baselines, out_dir=args.out, generation=generation)  # fmt: skip
    else:  # no run without context: retrieval and tuned + context (and base with context)
        result = evaluate(run_dir, data_dir, limit=args.limit, baselines=baselines,
                          out_dir=args.out, generation=generation)  # fmt: skip
    times["evaluate_s"] = time.perf_counter() - start
    times.update({f"generate_{n}_s": run.seconds for n, run in result.runs.items()})

    import torch

    run = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_cores": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_at_end": os.getloadavg(),
        },
        "split_rows": AmazonTitlesDataset.from_prepared(data_dir).splits,
        "training_summary": summary,
        "wall_times": {k: round(v, 1) for k, v in times.items()},
    }
    (args.out / "run.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    for name, metrics in result.intervals.items():
        cells = "  ".join(
            f"{m}={metrics[m].value:.3f} [{metrics[m].low:.3f}, {metrics[m].high:.3f}]"
            for m in ("rougeL", "bleu", "chrf", "eos")
            if m in metrics
        )
        print(f"{name:<10} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
