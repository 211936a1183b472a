"""Run every system on the same held-out records, score them, and keep every number.

Usage::

    from productdesc.evaluate import evaluate

    result = evaluate("runs/smollm2-lora", "data/prepared", limit=200, out_dir="runs/eval")
    result.intervals["tuned"]["rougeL"]   # Interval(value=..., low=..., high=...)

Systems, all answering the same records, the generating ones with the same decoding settings:

* ``retrieval``: the description of the nearest train title (:mod:`productdesc.retrieval`);
* ``base``: the foundation model with the run's prompt and no adapter (zero-shot);
* ``tuned``: the fine-tuned model;
* ``context``: optionally, a model fine-tuned with the ``"context"`` template, answering from
  the nearest train products (reported as "tuned + context");
* ``compare``: optionally, a second fine-tuned model, for A/B;
* ``hybrid``: optionally, the nearest train title's description where its retrieval score
  reaches a threshold (given, or ``"auto"``: fitted on the validation split with the tuned
  model), else the tuned model's answer; see :mod:`productdesc.generation.hybrid`.

With ``questions=True`` every generating system is asked a seeded paraphrase of a user's
question about each title (:func:`~productdesc.prompts.seeded_question`) instead of the
template's instruction.

The retrieval baseline and every model that shows context use one index: the train split's,
so a test record's own description is never in its context.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from productdesc._version import __version__
from productdesc.errors import UserError
from productdesc.evaluate.config import BASELINES, EvalConfig
from productdesc.evaluate.metrics import (
    bootstrap,
    bootstrap_difference,
    score_system,
)
from productdesc.evaluate.report import write_report
from productdesc.evaluate.result import EvalResult, SystemRun
from productdesc.evaluate.systems import LABELS as LABELS  # its old home; still imported
from productdesc.evaluate.systems import Systems, fit_records, load_records, template_name
from productdesc.prompts.context import uses_context
from productdesc.rundir import (
    ADAPTER_CONFIG,
    CONFIG_FILE,
    config_of,
    has_adapter,
    read_config,
    read_config_text,
    read_loss_history,
)

__all__ = ["BASELINES", "EvalResult", "SystemRun", "evaluate", "read_loss_history", "score_runs"]

logger = logging.getLogger(__name__)

ORDER = (
    "retrieval",
    "base",
    "tuned",
    "context",
    "hybrid",
    "compare",
)  # report order: baselines first
# (first, second) -> the paired difference "first - second", when both systems ran
DIFFERENCES = (
    ("tuned", "base"),
    ("tuned", "retrieval"),
    ("context", "retrieval"),
    ("context", "tuned"),
    ("hybrid", "retrieval"),
    ("hybrid", "tuned"),
    ("compare", "tuned"),
)


def score_runs(
    records: Sequence[Mapping[str, Any]],
    runs: Iterable[SystemRun],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
    loss_history: list[dict[str, Any]] | None = None,
) -> EvalResult:
    """Score systems' answers against the records' descriptions, with bootstrap intervals.

    Every system is resampled with the same record draws (seeded), so intervals are comparable
    and the differences between systems are paired.

    Args:
        records: Mappings with ``title`` and ``content`` (``uid`` optional).
        runs: One :class:`SystemRun` per system, aligned with ``records``.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling.
        meta: Provenance to keep in the result.
        loss_history: Training loss rows to keep (for the report's curve).
    """
    references = [r["content"] for r in records]
    runs = sorted(runs, key=lambda run: ORDER.index(run.name) if run.name in ORDER else len(ORDER))
    if not runs:
        raise ValueError("no system to score")
    scores, intervals = {}, {}
    for run in runs:
        if len(run.outputs) != len(references):
            raise ValueError(
                f"{run.name}: {len(run.outputs)} answers for {len(references)} records"
            )
        scores[run.name] = score_system(run.outputs, references, run.stopped_at_eos)
        intervals[run.name] = bootstrap(scores[run.name], n_resamples=n_resamples, seed=seed)
    differences = {}
    for first, second in DIFFERENCES:
        if first in scores and second in scores:
            differences[f"{first} - {second}"] = bootstrap_difference(
                scores[first], scores[second], n_resamples=n_resamples, seed=seed
            )
    return EvalResult(
        records=[
            {"uid": r.get("uid"), "title": r["title"], "reference": r["content"]} for r in records
        ],
        runs={run.name: run for run in runs},
        scores=scores,
        intervals=intervals,
        differences=differences,
        meta={**(meta or {}), "records": len(references), "n_resamples": n_resamples, "seed": seed},
        loss_history=loss_history,
    )


def evaluate(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    config: EvalConfig | None = None,
    **options: Any,
) -> EvalResult:
    """Evaluate a fine-tuned model against baselines on a prepared split; write the report.

    Args:
        model_dir: A training output directory (adapter, ``productdesc_config.toml``,
            ``loss_history.json``) or any directory
            :class:`~productdesc.generation.describer.Describer` loads.
        data_dir: A prepared data directory (``productdesc prepare``): the records come from
            the config's ``split``; the retrieval baseline and the context search its
            ``train`` split (the index saved in its ``retrieval/`` directory, when there is one).
        out_dir: Where to write ``report.md``, ``report.html``, ``results.json`` and
            ``loss.png``; ``None`` writes nothing.
        config: What to run and how (:class:`~productdesc.evaluate.config.EvalConfig`;
            ``None``: its defaults).
        **options: :class:`~productdesc.evaluate.config.EvalConfig` fields set over
            ``config``, e.g. ``evaluate(run, data, limit=200, baselines=("retrieval",))``.

    Raises:
        UserError: An unknown option, a missing directory, an unknown baseline, an empty
            split, the ``"base"`` baseline asked of a model directory without a LoRA adapter,
            or a ``context_model`` trained without the context template.
    """
    cfg = EvalConfig.of(config, **options)
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    templates, run_config_text = _check(model_dir, data_dir, cfg)
    records = load_records(data_dir, cfg.split, cfg.limit)
    logger.info("evaluating %d %s records of %s", len(records), cfg.split, data_dir)
    systems = Systems(records, data_dir, cfg, templates)
    runs = systems.run(model_dir)
    meta = _meta(model_dir, data_dir, cfg, systems, run_config_text)
    result = score_runs(
        records,
        runs,
        n_resamples=cfg.n_resamples,
        seed=cfg.seed,
        meta=meta,
        loss_history=read_loss_history(model_dir),
    )
    if out_dir is not None:
        write_report(result, out_dir)
    return result


def _meta(
    model_dir: Path, data_dir: Path, cfg: EvalConfig, systems: Systems, run_config: str | None
) -> dict[str, Any]:
    """What the results record about how they were made."""
    return {
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "compare_dir": None if cfg.compare is None else str(cfg.compare),
        "context_dir": None if cfg.context_model is None else str(cfg.context_model),
        "index": systems.index_source,
        "split": cfg.split,
        "limit": cfg.limit,
        "questions": cfg.questions,
        "hybrid_threshold": systems.copy_at,
        "hybrid_fitted_on": systems.fitted_on,
        "generation": attrs.asdict(cfg.generation),
        "run_config": run_config,
        "productdesc_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "samples": cfg.samples,
    }


def _check(model_dir: Path, data_dir: Path, cfg: EvalConfig) -> tuple[dict[Path, str], str | None]:
    """Fail before anything loads where the inputs cannot be evaluated; return the template
    name of the tuned and context runs, and the tuned run's config text.

    Each run's config is read once here: which template it shows decides the checks below and
    whether its describer gets the index; the tuned run's text goes into the results.
    """
    unknown = sorted(set(cfg.baselines) - set(BASELINES))
    if unknown:
        raise UserError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(BASELINES)}")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError(f"limit must be a positive number of records, got {cfg.limit}")
    paths = (
        ("model", model_dir),
        ("data", data_dir),
        ("compare model", cfg.compare),
        ("context model", cfg.context_model),
        ("index", cfg.index),
    )
    for what, path in paths:
        if path is not None and not Path(path).is_dir():
            raise UserError(f"{what} directory not found: {path}")
    run_config_text = read_config_text(model_dir)
    templates = {model_dir: template_name(config_of(model_dir, run_config_text))}
    if cfg.context_model is not None:
        context_dir = Path(cfg.context_model)
        templates[context_dir] = template_name(read_config(context_dir))
        if not uses_context(templates[context_dir]):
            raise UserError(
                f"context model {cfg.context_model} was not trained with a template that shows "
                f"context (its {CONFIG_FILE} says template = {templates[context_dir]!r}); "
                f"train it with template = 'context'"
            )
    if cfg.hybrid_threshold == "auto":
        fit_records(data_dir, cfg)  # its validation records exist, and are not the ones scored
    if "base" in cfg.baselines and not has_adapter(model_dir):
        # A merged or plain model has no base to fall back to: "base" would be the tuned
        # model again, and the comparison a silent tie.
        raise UserError(
            f"{model_dir} holds no LoRA adapter ({ADAPTER_CONFIG}), so the base model cannot "
            "be evaluated without it; point at the training output directory, or skip the "
            "base baseline (--no-base)"
        )
    return templates, run_config_text
