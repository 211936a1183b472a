"""Deterministic train/validation/test assignment by a stable hash of the normalised title.

The same normalised title always lands in the same split, on every machine and in every run,
whatever the input order or the number of workers: the same product is never in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from productdesc.data.cleaning import normalise_text, stable_hash64

__all__ = ["SPLIT_NAMES", "Splitter", "parse_split"]

SPLIT_NAMES = ("train", "validation", "test")
_SALT = b"productdesc split\x00"  # keeps split hashes independent of the dedupe hashes
_SPACE = 1 << 64


def parse_split(value: Any) -> tuple[float, float, float]:
    """Parse ``"98/1/1"``, ``"0.9,0.05,0.05"`` or three numbers into shares that sum to 1.

    Raises:
        ValueError: Not three non-negative numbers with a positive train share.
    """
    parts: Sequence[Any]
    if isinstance(value, str):
        parts = value.replace(",", "/").split("/")
    elif isinstance(value, dict):
        parts = [value.get(name, 0) for name in SPLIT_NAMES]
    else:
        parts = list(value)
    if len(parts) != 3:
        raise ValueError(f"split must be three shares train/validation/test, got {value!r}")
    try:
        weights = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(f"split shares must be numbers, got {value!r}") from None
    if any(not w >= 0 for w in weights) or weights[0] <= 0:
        raise ValueError(f"split shares must be >= 0 with a positive train share, got {value!r}")
    total = sum(weights)
    # Rounded so that "98/1/1" and "0.98/0.01/0.01" are the same config.
    return tuple(round(w / total, 12) for w in weights)  # type: ignore[return-value]


class Splitter:
    """Maps a title to a split index (0 train, 1 validation, 2 test).

    Args:
        shares: Three shares summing to 1 (see :func:`parse_split`).
    """

    def __init__(self, shares: Sequence[float]) -> None:
        cumulative = 0.0
        bounds = []
        for share in shares[:-1]:
            cumulative += share
            bounds.append(min(int(cumulative * _SPACE), _SPACE))
        bounds.append(_SPACE)
        self._bounds = tuple(bounds)

    def index(self, title: str) -> int:
        """Split index of ``title`` (compared in normalised form)."""
        h = stable_hash64(normalise_text(title), salt=_SALT)
        for i, bound in enumerate(self._bounds):
            if h < bound:
                return i
        return len(self._bounds) - 1  # pragma: no cover - h < 2**64 always

    def name(self, title: str) -> str:
        """Split name of ``title``: ``"train"``, ``"validation"`` or ``"test"``."""
        return SPLIT_NAMES[self.index(title)]
