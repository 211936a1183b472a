"""What an evaluation runs and how: :class:`EvalConfig` (the directories are
:func:`~productdesc.evaluate.runner.evaluate`'s arguments)."""

from __future__ import annotations

import os
from typing import Any, Literal

from attrs import field, frozen
from attrs import validators as v

from productdesc.config import GenerationConfig
from productdesc.config.fields import evolve_checked

__all__ = ["BASELINES", "EvalConfig"]

#: The baselines :class:`EvalConfig` knows.
BASELINES = ("base", "retrieval")

_PATH = v.optional(v.instance_of((str, os.PathLike)))


@frozen(kw_only=True)
class EvalConfig:
    """The systems an evaluation runs beside the tuned model, and how it scores them.

    Attributes:
        split: The split to answer.
        limit: Evaluate only the split's first ``limit`` records.
        baselines: Any of ``"base"`` and ``"retrieval"``.
        compare: A second model directory, evaluated as ``compare`` (A/B).
        context_model: A model directory trained with the ``"context"`` template, evaluated as
            ``context`` ("tuned + context") with context from the index. The tuned model may
            also be such a model: every model whose template shows context gets the index.
        index: A retrieval index directory to use instead of the data directory's; it must
            hold no record of ``split``, or answers may quote the reference.
        generation: Decoding settings for every generating system (``None``: greedy, 128 new
            tokens, as :class:`~productdesc.config.GenerationConfig`).
        seed: Seed of the bootstrap and of the report's sample of records.
        n_resamples: Bootstrap resamples.
        samples: Records shown side by side in the report.
        backend: Backend the models load with (``"auto"``: the one each run was trained with).
        progress: Show tqdm bars.
        questions: Ask each record a seeded question about its title instead of the
            template's instruction (the same question for every system).
        hybrid_threshold: Also evaluate ``hybrid``: copy the nearest train title's
            description where its retrieval score is at least this, else answer with the
            tuned model. ``"auto"`` fits it on the validation split (its first ``limit``
            records): the score at which the hybrid's ROUGE-L is highest there, with the
            tuned model's answers (the results' ``meta`` keeps the fitted value).
        fast: The describers' fast path (see :class:`~productdesc.generation.describer.Describer`).
    """

    split: str = field(default="test", validator=v.instance_of(str))
    limit: int | None = field(default=None, validator=v.optional(v.instance_of(int)))
    baselines: tuple[str, ...] = field(default=BASELINES, converter=tuple)
    compare: str | os.PathLike[str] | None = field(default=None, validator=_PATH)
    context_model: str | os.PathLike[str] | None = field(default=None, validator=_PATH)
    index: str | os.PathLike[str] | None = field(default=None, validator=_PATH)
    generation: GenerationConfig = field(
        default=None,
        converter=lambda g: GenerationConfig() if g is None else g,
        validator=v.instance_of(GenerationConfig),
    )
    seed: int = field(default=0, validator=v.instance_of(int))
    n_resamples: int = field(default=1000, validator=v.instance_of(int))
    samples: int = field(default=10, validator=v.instance_of(int))
    backend: str = field(default="auto", validator=v.instance_of(str))
    progress: bool = True
    questions: bool = False
    hybrid_threshold: float | Literal["auto"] | None = field(default=None)
    fast: bool | None = None

    @hybrid_threshold.validator
    def _threshold(self, attribute: Any, value: Any) -> None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and value != "auto" and not number:
            raise TypeError(f"hybrid_threshold must be a number, 'auto' or None, got {value!r}")

    @classmethod
    def of(cls, config: EvalConfig | None = None, **options: Any) -> EvalConfig:
        """``config`` (or the defaults) with ``options`` set; an unknown or bad option is a
        :class:`~productdesc.errors.UserError` naming it.
        """
        return evolve_checked(config if config is not None else cls(), "evaluation", **options)
