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
  reaches a threshold, else the tuned model's answer; see
  :mod:`productdesc.generation.hybrid`.

With ``questions=True`` every generating system is asked a seeded paraphrase of a user's
question about each title (:func:`~productdesc.prompts.seeded_question`) instead of the
template's instruction.

The retrieval baseline and every model that shows context use one index: the train split's,
so a test record's own description is never in its context.
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from productdesc._version import __version__
from productdesc.config import FineTuneConfig, GenerationConfig
from productdesc.data.dataset import AmazonTitlesDataset
from productdesc.errors import UserError
from productdesc.evaluate.config import BASELINES, EvalConfig
from productdesc.evaluate.metrics import (
    bootstrap,
    bootstrap_difference,
    score_system,
)
from productdesc.evaluate.report import write_report
from productdesc.evaluate.result import EvalResult, SystemRun
from productdesc.generation.describer import Describer
from productdesc.generation.hybrid import sure_copies
from productdesc.prompts import seeded_question
from productdesc.prompts.context import uses_context
from productdesc.retrieval.store import INDEX_DIR, open_index
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
LABELS = {
    "retrieval": "retrieval (nearest train title)",
    "base": "base model (no adapter)",
    "tuned": "tuned",
    "context": "tuned + context",
    "compare": "tuned B",
    "hybrid": "hybrid (copy when retrieval is sure)",
}
CONTEXT_SUFFIX = " + context"  # a label's ending when that system's prompt shows context
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
    records = _load_records(data_dir, cfg.split, cfg.limit)
    logger.info("evaluating %d %s records of %s", len(records), cfg.split, data_dir)
    systems = _Systems(records, data_dir, cfg, templates)
    runs = systems.run(model_dir)
    meta = _meta(model_dir, data_dir, cfg, systems.index_source, run_config_text)
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
    model_dir: Path, data_dir: Path, cfg: EvalConfig, index: str | None, run_config: str | None
) -> dict[str, Any]:
    """What the results record about how they were made."""
    return {
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "compare_dir": None if cfg.compare is None else str(cfg.compare),
        "context_dir": None if cfg.context_model is None else str(cfg.context_model),
        "index": index,
        "split": cfg.split,
        "limit": cfg.limit,
        "questions": cfg.questions,
        "hybrid_threshold": cfg.hybrid_threshold,
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
    templates = {model_dir: _template_name(config_of(model_dir, run_config_text))}
    if cfg.context_model is not None:
        context_dir = Path(cfg.context_model)
        templates[context_dir] = _template_name(read_config(context_dir))
        if not uses_context(templates[context_dir]):
            raise UserError(
                f"context model {cfg.context_model} was not trained with a template that shows "
                f"context (its {CONFIG_FILE} says template = {templates[context_dir]!r}); "
                f"train it with template = 'context'"
            )
    if "base" in cfg.baselines and not has_adapter(model_dir):
        # A merged or plain model has no base to fall back to: "base" would be the tuned
        # model again, and the comparison a silent tie.
        raise UserError(
            f"{model_dir} holds no LoRA adapter ({ADAPTER_CONFIG}), so the base model cannot "
            "be evaluated without it; point at the training output directory, or skip the "
            "base baseline (--no-base)"
        )
    return templates, run_config_text


class _Systems:
    """Runs every system of one evaluation on the same records; the index is opened once,
    when a system first needs it."""

    def __init__(
        self, records: list[dict[str, Any]], data_dir: Path, cfg: EvalConfig, templates: dict
    ) -> None:
        self.titles = [r["title"] for r in records]
        self.asked = (
            [seeded_question(r["title"], r["content"], seed=cfg.seed) for r in records]
            if cfg.questions
            else None
        )
        self.data_dir, self.cfg, self.templates = data_dir, cfg, templates
        self._index: tuple[Any, str] | None = None

    @property
    def index_source(self) -> str | None:
        """Where the index came from, if one was opened."""
        return None if self._index is None else self._index[1]

    def retriever(self) -> Any:
        if self._index is None:
            self._index = _open_index(self.data_dir, self.cfg.index, self.cfg.progress)
        return self._index[0]

    def run(self, model_dir: Path) -> list[SystemRun]:
        """Every system the config asks for, in the report's order."""
        cfg, runs = self.cfg, []
        context_dir = None if cfg.context_model is None else Path(cfg.context_model)
        if "retrieval" in cfg.baselines:
            self.retriever()
            runs.append(_run_retrieval(*self._index, self.titles))
        if "base" in cfg.baselines:
            runs.append(self.model("base", model_dir, base_only=True))
        tuned = self.model("tuned", model_dir)
        runs.append(tuned)
        if context_dir is not None:
            runs.append(self.model("context", context_dir))
        if cfg.hybrid_threshold is not None:
            runs.append(self.hybrid(tuned, cfg.hybrid_threshold))
        if cfg.compare is not None:
            runs.append(self.model("compare", Path(cfg.compare)))
        return runs

    def hybrid(self, writer: SystemRun, threshold: float) -> SystemRun:
        """The hybrid system: the nearest train title's description where retrieval is sure,
        ``writer``'s answer elsewhere.

        The tuned model writes what is not copied (those titles' neighbours are other products,
        and beside them the context model wrote worse on held-out records,
        docs/results/answer-quality), and it has answered every title already: its answers are
        taken, not generated again, so the hybrid differs from it only where it copies.
        """
        start = time.perf_counter()
        copies = sure_copies(self.retriever(), self.titles, threshold)
        searched = time.perf_counter() - start
        assert writer.stopped_at_eos is not None and writer.new_tokens is not None
        logger.info(
            "hybrid: %d of %d answers copied", sum(c is not None for c in copies), len(copies)
        )
        return SystemRun(
            "hybrid",
            f"hybrid (copy at BM25 >= {threshold:g}, else {writer.label})",
            [w if c is None else c.text for c, w in zip(copies, writer.outputs, strict=True)],
            stopped_at_eos=[
                w if c is None else True for c, w in zip(copies, writer.stopped_at_eos, strict=True)
            ],
            new_tokens=[
                w if c is None else 0 for c, w in zip(copies, writer.new_tokens, strict=True)
            ],
            # what its answers cost here: the search, and the writer's whole run
            seconds=searched + writer.seconds,
            source=f"{writer.source}, copies from {self.index_source}",
        )

    def model(self, name: str, path: Path, base_only: bool = False):
        if path not in self.templates:  # the compare model, read where it is first needed
            self.templates[path] = _template_name(read_config(path))
        shown = self.retriever() if uses_context(self.templates[path]) else None
        cfg = self.cfg
        return _run_model(
            name,
            path,
            self.titles,
            self.asked,
            cfg.generation,
            cfg.backend,
            cfg.progress,
            base_only=base_only,
            retriever=shown,
            fast=cfg.fast,
        )


def _load_records(data_dir: Path, split: str, limit: int | None) -> list[dict[str, Any]]:

    dataset = AmazonTitlesDataset.from_prepared(data_dir)
    records, skipped = [], 0
    for record in dataset.iter_split(split):
        if not isinstance(record.get("title"), str) or not isinstance(record.get("content"), str):
            skipped += 1
            continue
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if skipped:
        logger.warning("skipped %d %s record(s) without a title or a description", skipped, split)
    if not records:
        raise UserError(f"the {split!r} split of {data_dir} holds no record to evaluate")
    return records


def _open_index(data_dir: Path, index: Any, progress: bool) -> tuple[Any, str]:
    """The retrieval index and a note of where it came from."""

    if index is not None:
        return open_index(index), str(index)
    saved = data_dir / INDEX_DIR
    opened = open_index(data_dir, show_progress=progress)
    if (saved / "index.json").is_file():
        return opened, str(saved)
    return opened, f"{data_dir} (train split, {len(opened)} titles)"


def _template_name(config: FineTuneConfig | None) -> str:
    """The template a training run used (``"alpaca"`` for a directory that is no run)."""
    return config.template if config is not None else "alpaca"


def _run_retrieval(index: Any, source: str, titles: list[str]) -> SystemRun:
    # The index holds train records only and splits never share a title, so a test record's
    # own description cannot be returned: no exclusion needed.
    start = time.perf_counter()
    outputs = index.answer(titles)
    return SystemRun(
        "retrieval",
        LABELS["retrieval"],
        outputs,
        seconds=time.perf_counter() - start,
        source=source,
    )


def _run_model(
    name: str,
    path: Path,
    titles: list[str],
    questions: list[str | None] | None,
    generation: GenerationConfig,
    backend: str,
    progress: bool,
    *,
    base_only: bool = False,
    retriever: Any = None,
    fast: bool | None = None,
) -> SystemRun:

    # Only a model that shows context gets the index (its prompt needs it; others refuse it).
    extra = {} if retriever is None else {"retriever": retriever}
    describer = Describer.from_pretrained(
        path, backend=backend, base_only=base_only, generation=generation, fast=fast, **extra
    )
    try:
        start = time.perf_counter()
        details = describer.describe_batch(
            titles, questions, progress=progress, return_details=True
        )
        seconds = time.perf_counter() - start
    finally:
        del describer
        _free_memory()
    tokens = [d.new_tokens for d in details]
    logger.info(
        "%s: %d answers in %.1f s (%.0f new tokens/s)",
        name,
        len(details),
        seconds,
        sum(tokens) / seconds if seconds > 0 else float("nan"),
    )
    label = LABELS[name]
    if retriever is not None and not label.endswith(CONTEXT_SUFFIX):
        label += CONTEXT_SUFFIX
    return SystemRun(
        name,
        label,
        [d.text for d in details],
        stopped_at_eos=[d.stopped_at_eos for d in details],
        new_tokens=tokens,
        seconds=seconds,
        source=str(path),
    )


def _free_memory() -> None:
    # Two models need not share the accelerator: drop one before loading the next.
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
