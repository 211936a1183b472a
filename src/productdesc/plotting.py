"""The loss curve of a training run as a PNG, shared by the run's own plot and the evaluation report."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

__all__ = ["plot_loss"]


def plot_loss(history: Sequence[dict[str, Any]]) -> bytes | None:
    """Training and validation loss against optimizer step, as PNG bytes.

    Args:
        history: A run's ``loss_history.json`` rows (``step`` with ``loss`` and/or
            ``eval_loss``).

    Returns:
        The PNG, or ``None`` when no row has a loss to plot.

    Raises:
        ImportError: matplotlib is not installed.
    """
    train = [(r["step"], r["loss"]) for r in history if _is_number(r.get("loss"))]
    evals = [(r["step"], r["eval_loss"]) for r in history if _is_number(r.get("eval_loss"))]
    if not train and not evals:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure with an Agg canvas: no pyplot global state, no display, safe in threads.
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="#1f77b4", linewidth=1.2)
    if evals:
        ax.plot(
            *zip(*evals, strict=True), "o-", label="validation loss", color="#d62728", markersize=4
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
