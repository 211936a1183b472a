"""The cleaning pipeline: steps in order, split into a pure half that workers run and the
keyed half that the parent process checks in input order (see :mod:`productdesc.data.cleaning`
for the steps themselves)."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

import attrs

from productdesc.data.cleaning import CleaningStepError, Drop, Record, TextStep, cleaners

__all__ = ["Pipeline", "is_keyed", "step_name", "step_options"]


def is_keyed(step: Any) -> bool:
    """Whether the runner must treat ``step`` as a :class:`KeyedStep`."""
    return callable(getattr(step, "key", None)) and isinstance(getattr(step, "reason", None), str)


def step_name(step: Any) -> str:
    """The registry name of ``step``'s class, else ``"module:QualName"`` (of a function too)."""
    for info in cleaners.infos():
        if info.obj is type(step):
            return info.name
    named = step if hasattr(step, "__qualname__") else type(step)
    return f"{named.__module__}:{named.__qualname__}"


def step_options(step: Any) -> dict[str, Any]:
    """``step``'s options, recorded in the manifest: the fields of an attrs class or a
    dataclass (given at construction); other steps record none."""
    if attrs.has(type(step)):
        return attrs.asdict(step, filter=lambda a, _: a.init)
    if dataclasses.is_dataclass(step) and not isinstance(step, type):
        return {f.name: getattr(step, f.name) for f in dataclasses.fields(step) if f.init}
    return {}


class _TextRun:
    """Consecutive :class:`TextStep` s on the same fields, applied field by field.

    The same result as calling them one after the other, with one dict copy instead of one
    per step (a fifth of the cleaning time on real-sized records).
    """

    def __init__(self, steps: Sequence[TextStep]) -> None:
        self.steps = tuple(steps)
        self.fields = self.steps[0].fields
        self.transforms = tuple(step.transform for step in self.steps)

    def __call__(self, record: Record) -> Record:
        changed = None
        for name in self.fields:
            old = text = record[name]
            if not text:
                continue
            for transform in self.transforms:
                text = transform(text)
            if text != old:
                if changed is None:
                    changed = dict(record)
                changed[name] = text
        return record if changed is None else changed

    def blame(self, record: Record) -> tuple[TextStep, Exception]:
        """The step that raises on ``record``, and its exception (after a failed call)."""
        for step in self.steps:
            try:
                record = step(record)  # type: ignore[assignment]
            except Exception as exc:
                return step, exc
        raise AssertionError("no step raised again")  # pragma: no cover - impure step


def _fusable(step: Any) -> bool:
    return isinstance(step, TextStep) and type(step).__call__ is TextStep.__call__


class Pipeline:
    """An ordered tuple of steps, run in two halves so that it can be spread over processes.

    :meth:`process` runs the per-record steps and computes the keys of the keyed steps it
    reaches (pure: any worker can do it); :meth:`admit` checks those keys against the run's
    memory, in input order (one process). :meth:`apply` does both, for use in one process.

    Args:
        steps: Step instances, in order (see :func:`default_steps`).
    """

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = tuple(steps)
        self._keyed = tuple(step for step in self.steps if is_keyed(step))
        plan: list[tuple[Any, bool]] = []
        run: list[TextStep] = []
        for step in (*self.steps, None):
            if _fusable(step) and (not run or step.fields == run[0].fields):
                run.append(step)
                continue
            if run:
                plan.append((_TextRun(run), False))
                run = [step] if _fusable(step) else []
            if step is not None and not run:
                plan.append((step, is_keyed(step)))
        self._plan = tuple(plan)

    def process(self, record: Record) -> tuple[tuple[Hashable | None, ...], Record | Drop]:
        """Run the per-record steps; returns the keys met on the way and the result.

        Raises:
            CleaningStepError: A step raised or returned something else than a record or a
                :class:`Drop`; the message names it.
        """
        keys: list[Hashable | None] = []
        for step, keyed in self._plan:
            try:
                if keyed:
                    keys.append(step.key(record))
                    continue
                result = step(record)
            except Exception as exc:
                culprit, error = step.blame(record) if isinstance(step, _TextRun) else (step, exc)
                raise CleaningStepError(
                    f"cleaning step {step_name(culprit)} raised {type(error).__name__}: {error}"
                ) from exc
            if type(result) is not dict:
                if type(result) is Drop:
                    return tuple(keys), result
                raise CleaningStepError(
                    f"cleaning step {step_name(step)} returned {type(result).__name__}, "
                    f"not a record dict or a Drop"
                )
            record = result
        return tuple(keys), record

    def new_memory(self) -> list[set[Hashable]]:
        """Empty key memory for one run."""
        return [set() for _ in self._keyed]

    def admit(self, keys: Sequence[Hashable | None], memory: list[set[Hashable]]) -> Drop | None:
        """The first keyed step that has seen its key already drops the record."""
        # `keys` stops at the step that dropped the record in `process`, hence not strict.
        for step, key, seen in zip(self._keyed, keys, memory, strict=False):
            if key is None:
                continue
            if key in seen:
                return Drop(step.reason, getattr(step, "detail", ""))
            seen.add(key)
        return None

    @property
    def single_keyed(self) -> bool:
        """Exactly one keyed step: :meth:`admit_all` then takes bare keys, not tuples."""
        return len(self._keyed) == 1

    def admit_all(self, keys: Sequence[Any], memory: list[set[Hashable]]) -> list[tuple[int, Drop]]:
        """:meth:`admit` for many records in input order; returns ``(index, Drop)`` of each
        record dropped. With :attr:`single_keyed`, ``keys`` holds bare keys, not tuples."""
        if self.single_keyed:
            step = self._keyed[0]
            drop = Drop(step.reason, getattr(step, "detail", ""))
            seen = memory[0]
            add = seen.add  # returns None: `k in seen or add(k)` is true only for a repeat
            return [
                (i, drop) for i, k in enumerate(keys) if k is not None and (k in seen or add(k))
            ]
        admitted = ((i, self.admit(k, memory)) for i, k in enumerate(keys))
        return [(i, drop) for i, drop in admitted if drop is not None]

    def apply(self, records: Iterable[Record]) -> Iterator[Record | Drop]:
        """Each record's result, in order; keyed steps remember keys for this call only."""
        memory = self.new_memory()
        for record in records:
            keys, result = self.process(record)
            yield self.admit(keys, memory) or result
