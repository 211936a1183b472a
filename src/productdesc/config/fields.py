"""The validators and converters the config classes' fields share, and their value sets."""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
from attrs import validators as v

from productdesc.errors import UserError

__all__ = ["ALL_PROJECTIONS", "DTYPES", "OFF", "Dtype", "evolve_checked"]


Dtype = Literal["auto", "bfloat16", "float16", "float32"]
DTYPES = ("auto", "bfloat16", "float16", "float32")
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _positive(cls_field_type: type = int):
    return [v.instance_of(cls_field_type), v.gt(0)]


def _non_negative(cls_field_type: type = int):
    return [v.instance_of(cls_field_type), v.ge(0)]


def _to_float(value: Any) -> Any:
    # TOML and CLIs give "2e-4" or 1 where a float is meant; leave other types for the validator.
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


OFF = "off"  # how an optional field set to None is spelled in TOML, which has no null


def _off_to_none(value: Any) -> Any:
    return None if value == OFF else value


def _optional_positive() -> Any:
    return {"converter": _off_to_none, "validator": v.optional(_positive())}


def _gradient_checkpointing(value: Any) -> Any:
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    return value


def _length_penalty(value: Any) -> Any:
    value = _off_to_none(value)
    if isinstance(value, list):  # TOML and JSON have no tuples
        value = tuple(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        value = (value[0], float(value[1]))
    return value


def _is_length_penalty(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and value[0] >= 0
        and isinstance(value[1], float)
        and value[1] >= 1.0
    )
    if not ok:
        raise ValueError(
            f"'{attribute.name}' must be (start, factor): a token count >= 0 and a factor "
            f">= 1.0, got {value!r}"
        )


def _not_bool(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    # instance_of(int) passes True and False (bool is an int): `max_steps = true` trained 1 step.
    if isinstance(value, bool):
        raise TypeError(
            f"'{attribute.name}' must be an integer, not {value!r}", attribute, int, value
        )


def _report_to(value: Any) -> Any:
    # "tensorboard", "tensorboard,wandb" (a CLI flag), or a TOML list; a list stays a tuple.
    if isinstance(value, str) and "," in value:
        return tuple(part.strip() for part in value.split(","))
    if isinstance(value, list):
        return tuple(value)
    return value.strip() if isinstance(value, str) else value


def _is_report_to(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    names = (value,) if isinstance(value, str) else value
    ok = (
        isinstance(names, tuple)
        and names
        and all(isinstance(n, str) and n.replace("_", "").isalnum() for n in names)
    )
    if not ok:
        raise ValueError(
            f'\'{attribute.name}\' must be a tracker\'s name ("tensorboard", "wandb", '
            f'"mlflow", "trackio", ...), a list of them, "all" or "none"; got {value!r}'
        )
    if len(names) > 1 and {"none", "all"} & set(names):
        raise ValueError(f'\'{attribute.name}\': "none" and "all" stand alone; got {value!r}')


def _finite(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number, got {value!r}")


def evolve_checked(base: Any, what: str, **overrides: Any) -> Any:
    """``base`` (an attrs instance) with ``overrides`` applied and validated; an unknown key
    or a bad value is a :class:`~productdesc.errors.UserError` naming the field, its message
    starting with ``what`` (``"generation"``, ``"evaluation"``)."""
    if not overrides:
        return base
    known = attrs.fields_dict(type(base))
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UserError(f"unknown {what} option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        return attrs.evolve(base, **overrides)
    except (TypeError, ValueError) as exc:
        # attrs' messages start with the field's name, e.g. "'max_new_tokens' must be > 0: 0".
        raise UserError(f"{what} option: {exc}") from exc
