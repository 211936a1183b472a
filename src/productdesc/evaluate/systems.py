"""The systems of one evaluation, each answering the same records: :class:`Systems`.

Each model is loaded, asked every record in one batch, and dropped before the next loads, so
two models never share the accelerator. The hybrid loads nothing: it takes the tuned model's
answers where it does not copy. Its copy threshold is given, or fitted on the validation split
(``"auto"``) with the tuned model while it is loaded.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from productdesc.config import FineTuneConfig
from productdesc.data.dataset import AmazonTitlesDataset
from productdesc.errors import UserError
from productdesc.evaluate.config import EvalConfig
from productdesc.evaluate.metrics import score_system
from productdesc.evaluate.result import SystemRun
from productdesc.generation.describer import Describer
from productdesc.generation.hybrid import fit_copy_threshold, sure_copies
from productdesc.prompts import seeded_question
from productdesc.prompts.context import uses_context
from productdesc.retrieval.store import INDEX_DIR, open_index
from productdesc.rundir import read_config

__all__ = [
    "CONTEXT_SUFFIX",
    "FIT_SPLIT",
    "LABELS",
    "Systems",
    "fit_records",
    "load_records",
    "template_name",
]

logger = logging.getLogger(__name__)

LABELS = {
    "retrieval": "retrieval (nearest train title)",
    "base": "base model (no adapter)",
    "tuned": "tuned",
    "context": "tuned + context",
    "compare": "tuned B",
    "hybrid": "hybrid (copy when retrieval is sure)",
}
CONTEXT_SUFFIX = " + context"  # a label's ending when that system's prompt shows context
#: The split ``hybrid_threshold="auto"`` fits the copy threshold on.
FIT_SPLIT = "validation"


class Systems:
    """Runs every system of one evaluation on the same records; the index is opened once,
    when a system first needs it.

    Attributes:
        copy_at: The hybrid's copy threshold once known (given, or fitted by :meth:`run`).
        fitted_on: How many validation records it was fitted on (``None``: it was given).
    """

    def __init__(
        self, records: list[dict[str, Any]], data_dir: Path, cfg: EvalConfig, templates: dict
    ) -> None:
        self.data_dir, self.cfg, self.templates = data_dir, cfg, templates
        self.titles = [r["title"] for r in records]
        self.asked = self._questions(records)
        self._index: tuple[Any, str] | None = None
        auto = cfg.hybrid_threshold == "auto"
        self.copy_at: float | None = None if auto else cfg.hybrid_threshold
        self.fitted_on: int | None = None

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
        tuned = self.model("tuned", model_dir, fit_copy=cfg.hybrid_threshold == "auto")
        runs.append(tuned)
        if context_dir is not None:
            runs.append(self.model("context", context_dir))
        if self.copy_at is not None:
            runs.append(self.hybrid(tuned, self.copy_at))
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

    def model(
        self, name: str, path: Path, base_only: bool = False, fit_copy: bool = False
    ) -> SystemRun:
        """The model at ``path`` answering every record; with ``fit_copy`` it also answers the
        validation split, and :attr:`copy_at` is fitted on those answers."""
        if path not in self.templates:  # the compare model, read where it is first needed
            self.templates[path] = template_name(read_config(path))
        shown = self.retriever() if uses_context(self.templates[path]) else None
        cfg = self.cfg
        # Only a model that shows context gets the index (its prompt needs it; others refuse it).
        extra = {} if shown is None else {"retriever": shown}
        describer = Describer.from_pretrained(
            path,
            backend=cfg.backend,
            base_only=base_only,
            generation=cfg.generation,
            fast=cfg.fast,
            **extra,
        )
        try:
            label = LABELS[name]
            if shown is not None and not label.endswith(CONTEXT_SUFFIX):
                label += CONTEXT_SUFFIX
            run = _answers(name, label, path, describer, self.titles, self.asked, cfg.progress)
            if fit_copy:
                self.copy_at = self._fit_copy_threshold(describer)
        finally:
            del describer
            _free_memory()
        return run

    def _fit_copy_threshold(self, describer: Any) -> float:
        """The copy threshold at which the hybrid scores best on the validation split
        (:func:`~productdesc.generation.hybrid.fit_copy_threshold`, ROUGE-L)."""
        records = fit_records(self.data_dir, self.cfg)
        titles = [r["title"] for r in records]
        written = describer.describe_batch(
            titles, self._questions(records), progress=self.cfg.progress, return_details=True
        )
        hits = self.retriever().search_batch(titles, 1)
        references = [r["content"] for r in records]

        def rouge_l(texts: list[str]) -> list[float]:
            return score_system(texts, references).per_record()["rougeL"]

        threshold = fit_copy_threshold(
            [h[0].score if h else 0.0 for h in hits],
            rouge_l([h[0].content if h else "" for h in hits]),
            rouge_l([d.text for d in written]),
        )
        self.fitted_on = len(records)
        logger.info(
            "hybrid: copy threshold %g fitted on %d %s records", threshold, len(records), FIT_SPLIT
        )
        return threshold

    def _questions(self, records: list[dict[str, Any]]) -> list[str | None] | None:
        if not self.cfg.questions:
            return None
        return [seeded_question(r["title"], r["content"], seed=self.cfg.seed) for r in records]


def fit_records(data_dir: Path, cfg: EvalConfig) -> list[dict[str, Any]]:
    """The validation records ``hybrid_threshold="auto"`` fits on (the first ``cfg.limit``).

    Raises:
        UserError: The evaluated split is the validation split, or it holds no record.
    """
    if cfg.split == FIT_SPLIT:
        raise UserError(
            f"hybrid_threshold='auto' fits on the {FIT_SPLIT!r} split, which is the one "
            f"evaluated; evaluate another split, or give the threshold as a number"
        )
    try:
        return load_records(data_dir, FIT_SPLIT, cfg.limit)
    except UserError:
        raise UserError(
            f"hybrid_threshold='auto' fits on the {FIT_SPLIT!r} split of {data_dir}, which "
            f"holds no record; prepare the data with a validation share (--split 80/10/10) "
            f"or give the threshold as a number"
        ) from None


def load_records(data_dir: Path, split: str, limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` records of ``split`` with a title and a description (the others
    are counted and logged as skipped).

    Raises:
        UserError: The split holds no such record.
    """
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


def template_name(config: FineTuneConfig | None) -> str:
    """The template a training run used (``"alpaca"`` for a directory that is no run)."""
    return config.template if config is not None else "alpaca"


def _open_index(data_dir: Path, index: Any, progress: bool) -> tuple[Any, str]:
    """The retrieval index and a note of where it came from."""
    if index is not None:
        return open_index(index), str(index)
    saved = data_dir / INDEX_DIR
    opened = open_index(data_dir, show_progress=progress)
    if (saved / "index.json").is_file():
        return opened, str(saved)
    return opened, f"{data_dir} (train split, {len(opened)} titles)"


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


def _answers(
    name: str,
    label: str,
    path: Path,
    describer: Any,
    titles: list[str],
    questions: list[str | None] | None,
    progress: bool,
) -> SystemRun:
    start = time.perf_counter()
    details = describer.describe_batch(titles, questions, progress=progress, return_details=True)
    seconds = time.perf_counter() - start
    tokens = [d.new_tokens for d in details]
    logger.info(
        "%s: %d answers in %.1f s (%.0f new tokens/s)",
        name,
        len(details),
        seconds,
        sum(tokens) / seconds if seconds > 0 else float("nan"),
    )
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
