"""Reading, cleaning, splitting and sharding ``trn.json`` (no torch, no transformers).

* :class:`AmazonTitlesDataset` and :class:`PrepareConfig`: the entry points.
* :mod:`~productdesc.data.cleaning`: the steps (:class:`HtmlUnescape`, :class:`NormalizeUnicode`,
  :class:`KeepChars`, :class:`DropShort`, :class:`Dedupe`) and the step protocol.
* :mod:`~productdesc.data.reader`, :mod:`~productdesc.data.runner`,
  :mod:`~productdesc.data.writer`: reading, the parallel engine, the output directory.
* :mod:`~productdesc.data.synthetic`: a deterministic full-size synthetic ``trn.json``.
"""

from __future__ import annotations

from productdesc.data.cleaning import (
    CleaningStepError,
    Dedupe,
    Drop,
    DropShort,
    HtmlUnescape,
    KeepChars,
    KeyedStep,
    NormalizeUnicode,
    Record,
    Step,
    TextStep,
    cleaners,
    default_steps,
)
from productdesc.data.config import PrepareConfig
from productdesc.data.dataset import AmazonTitlesDataset, PreparedDataset, sample_path
from productdesc.data.manifest import Manifest
from productdesc.data.pipeline import Pipeline
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
    "cleaners",
    "default_steps",
    "sample_path",
]
