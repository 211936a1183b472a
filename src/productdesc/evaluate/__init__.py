"""Did fine-tuning help? Score a tuned model against baselines on held-out records.

:func:`evaluate` answers a prepared split with the tuned model, the base model (same prompt, no
adapter) and the retrieval baseline (the nearest train title's description), scores every answer
against the real description (:mod:`~productdesc.evaluate.metrics`), and writes a report
(:mod:`~productdesc.evaluate.report`). Importing this package does not import torch.
"""

from __future__ import annotations

from productdesc.evaluate.config import BASELINES, EvalConfig
from productdesc.evaluate.metrics import (
    METRICS,
    Interval,
    SystemScores,
    bootstrap,
    bootstrap_difference,
    repetition_rate,
    score_system,
)
from productdesc.evaluate.report import write_report
from productdesc.evaluate.runner import (
    EvalResult,
    SystemRun,
    evaluate,
    read_loss_history,
    score_runs,
)

__all__ = [
    "BASELINES",
    "METRICS",
    "EvalConfig",
    "EvalResult",
    "Interval",
    "SystemRun",
    "SystemScores",
    "bootstrap",
    "bootstrap_difference",
    "evaluate",
    "read_loss_history",
    "repetition_rate",
    "score_runs",
    "score_system",
    "write_report",
]
