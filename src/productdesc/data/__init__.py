"""Reading, cleaning, splitting and sharding ``trn.json`` (no torch, no transformers).

* :class:`AmazonTitlesDataset` and :class:`PrepareConfig`: the entry points.
* :mod:`~productdesc.data.cleaning`: the steps (:class:`HtmlUnescape`, :class:`NormalizeUnicode`,
  :class:`KeepChars`, :class:`DropShort`, :class:`Dedupe`) and the step protocol.
* :mod:`~productdesc.data.reader`, :mod:`~productdesc.data.runner`,
  :mod:`~productdesc.data.writer`: reading, the parallel engine, the output directory.
* :mod:`~productdesc.data.synthetic`: a deterministic full-size synthetic ``trn.json``.
"""

from __future__ import annotations

from pathlib import Path

from productdesc.data.cleaning import (
    CleaningStepError,
    Dedupe,
    Drop,
    DropShort,
    HtmlUnescape,
    KeepChars,
    KeyedStep,
    NormalizeUnicode,
    Pipeline,
    Record,
    Step,
    TextStep,
    default_steps,
)
from productdesc.data.config import PrepareConfig
from productdesc.data.dataset import AmazonTitlesDataset, PreparedDataset
from productdesc.data.manifest import Manifest
from productdesc.data.reader import READ_REASONS
from productdesc.data.split import SPLIT_NAMES, Splitter

__all__ = [
    "READ_REASONS",
    "SPLIT_NAMES",
    "AmazonTitlesDataset",
    "CleaningStepError",
    "Dedupe",
    "Drop",
    "DropShort",
    "HtmlUnescape",
    "KeepChars",
    "KeyedStep",
    "Manifest",
    "NormalizeUnicode",
    "Pipeline",
    "PrepareConfig",
    "PreparedDataset",
    "Record",
    "Splitter",
    "Step",
    "TextStep",
    "default_steps",
    "sample_path",
]


def sample_path() -> Path:
    """The ``trn.json`` sample shipped in the package: 120 hand-written records in the
    dump's exact format, with HTML entities (some double-escaped), duplicates and empty
    descriptions, so that a prepare of it shows every cleaning step at work."""
    return Path(__file__).parent / "sample" / "trn_sample.jsonl"
