"""What an evaluation hands back: each system's answers and the scored result.

Below both :mod:`~productdesc.evaluate.runner`, which produces an :class:`EvalResult`, and
:mod:`~productdesc.evaluate.report`, which writes one, so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from attrs import frozen

from productdesc.evaluate.metrics import Interval, SystemScores

__all__ = ["EvalResult", "SystemRun"]


@frozen
class SystemRun:
    """One system's answers, aligned with the evaluated records.

    Attributes:
        name: ``"retrieval"``, ``"base"``, ``"tuned"``, ``"context"`` or ``"compare"``.
        label: Human-readable name for reports.
        outputs: One answer per record.
        stopped_at_eos: Whether each answer ended at EOS (``None`` for retrieval).
        new_tokens: Generated tokens per answer (``None`` for retrieval).
        seconds: Wall time to produce all answers (loading excluded).
        source: Where the system came from (a model directory, the index).
    """

    name: str
    label: str
    outputs: list[str]
    stopped_at_eos: list[bool] | None = None
    new_tokens: list[int] | None = None
    seconds: float = 0.0
    source: str = ""


@frozen
class EvalResult:
    """Everything an evaluation produced; :meth:`to_dict` is what ``results.json`` holds.

    Attributes:
        records: The evaluated records (``uid``, ``title``, ``reference``), in order.
        runs: ``system name -> SystemRun``, in report order.
        scores: ``system name -> SystemScores`` (per-record statistics).
        intervals: ``system name -> metric -> Interval`` (bootstrap over records).
        differences: ``"tuned - base"`` and the like ``-> metric -> Interval`` (paired
            bootstrap: the same resamples for both systems).
        meta: Settings and provenance: directories, split, generation settings, seed, versions.
        loss_history: The training run's ``loss_history.json`` rows, or ``None``.
    """

    records: list[dict[str, Any]]
    runs: dict[str, SystemRun]
    scores: dict[str, SystemScores]
    intervals: dict[str, dict[str, Interval]]
    differences: dict[str, dict[str, Interval]]
    meta: dict[str, Any]
    loss_history: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (NaN becomes ``null`` when written with orjson)."""

        def intervals(table: Mapping[str, Interval]) -> dict[str, dict[str, float]]:
            return {name: iv._asdict() for name, iv in table.items()}

        per_record = {name: scores.per_record() for name, scores in self.scores.items()}
        records = []
        for i, record in enumerate(self.records):
            systems = {}
            for name, run in self.runs.items():
                entry: dict[str, Any] = {"text": run.outputs[i]}
                if run.stopped_at_eos is not None:
                    entry["stopped_at_eos"] = run.stopped_at_eos[i]
                if run.new_tokens is not None:
                    entry["new_tokens"] = run.new_tokens[i]
                entry.update({metric: values[i] for metric, values in per_record[name].items()})
                systems[name] = entry
            records.append({**record, "systems": systems})
        return {
            "meta": self.meta,
            "systems": {
                name: {
                    "label": run.label,
                    "source": run.source,
                    "seconds": run.seconds,
                    "metrics": intervals(self.intervals[name]),
                }
                for name, run in self.runs.items()
            },
            "differences": {pair: intervals(table) for pair, table in self.differences.items()},
            "loss_history": self.loss_history,
            "records": records,
        }

    def to_json(self) -> bytes:
        """:meth:`to_dict` as indented JSON bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
