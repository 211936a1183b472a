"""What a training run returns: :class:`TrainResult`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

__all__ = ["TrainResult", "fmt"]


@attrs.frozen(kw_only=True)
class TrainResult:
    """What a finished run produced and measured.

    Attributes:
        output_dir: The adapter directory (load it with ``Describer.from_pretrained``).
        merged_dir: The merged model directory, when ``merge=True``.
        backend: The backend that trained (``"unsloth"`` or ``"transformers"``).
        global_step: Optimizer steps done (including those before a resume).
        first_loss: The first logged training loss.
        train_loss: The last logged training loss.
        initial_eval_loss: The base model's validation loss (before training), or ``None``.
        eval_loss: The saved adapter's validation loss: the last one, or the best one when
            ``training.early_stopping_patience`` kept the best checkpoint; ``None`` without
            validation data.
        train_examples: Training examples (prompt-completion pairs).
        eval_examples: Validation examples.
        runtime_s: Wall time of training in this process, seconds.
        tokens_per_second: Training throughput (non-padding tokens), when logged; of all
            processes together in a data-parallel run.
        world_size: Processes that trained together (data parallel; 1 without a launcher).
        history: :func:`loss_history` of the run.
    """

    output_dir: Path
    merged_dir: Path | None
    backend: str
    global_step: int
    first_loss: float | None
    train_loss: float | None
    initial_eval_loss: float | None
    eval_loss: float | None
    train_examples: int
    eval_examples: int
    runtime_s: float
    tokens_per_second: float | None
    world_size: int
    history: tuple[dict[str, Any], ...] = attrs.field(repr=False)

    @classmethod
    def of_trainer(
        cls,
        trainer: Any,
        history: list[dict[str, Any]],
        out: Path,
        merged: Path | None,
        backend: str,
        runtime: float,
        examples: tuple[int, int],
        world_size: int,
    ) -> TrainResult:
        """The run's numbers from its (TRL) ``trainer``, its loss ``history``
        (:func:`~productdesc.finetune.loss_history`), the ``(training, validation)``
        example counts and the number of processes."""
        return cls(
            output_dir=out,
            merged_dir=merged,
            backend=backend,
            global_step=trainer.state.global_step,
            first_loss=_first(history, "loss"),
            train_loss=_last(history, "loss"),
            initial_eval_loss=next(
                (h["eval_loss"] for h in history if h["step"] == 0 and "eval_loss" in h), None
            ),
            eval_loss=_kept_eval_loss(trainer, history),
            train_examples=examples[0],
            eval_examples=examples[1],
            runtime_s=runtime,
            tokens_per_second=_last(history, "tokens_per_second"),
            world_size=world_size,
            history=tuple(history),
        )

    def summary(self) -> str:
        """One line: steps, time, first and last training loss, validation loss, tokens/s."""
        return (
            f"{self.global_step} steps in {self.runtime_s:.0f} s, training loss "
            f"{fmt(self.first_loss)} -> {fmt(self.train_loss)}, validation loss "
            f"{fmt(self.initial_eval_loss)} -> {fmt(self.eval_loss)}, "
            f"{fmt(self.tokens_per_second, '.0f')} tokens/s"
        )


def fmt(value: float | None, spec: str = ".4f") -> str:
    """``value`` in ``spec``, or ``"n/a"`` when there is none."""
    return "n/a" if value is None else format(value, spec)


def _kept_eval_loss(trainer: Any, history: list[dict[str, Any]]) -> float | None:
    # With load_best_model_at_end the adapter saved is the best checkpoint, not the last step.
    if trainer.args.load_best_model_at_end and trainer.state.best_metric is not None:
        return float(trainer.state.best_metric)
    return _last(history, "eval_loss")


def _first(history: list[dict[str, Any]], key: str) -> float | None:
    return next((h[key] for h in history if key in h), None)


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    return next((h[key] for h in reversed(history) if key in h), None)
