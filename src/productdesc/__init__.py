"""productdesc: from AmazonTitles-1.3MM ``trn.json`` to a small LLM that describes products.

The data flows one way::

    records -> cleaned shards -> prompts -> trainer -> adapter -> describer

``import productdesc`` is cheap: it imports neither torch nor transformers. Every public name
below is loaded on first use (PEP 562), so the CLI's ``--help`` and the data tools start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from productdesc._version import __version__

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "AmazonTitlesDataset": "productdesc.data.dataset",
    "PrepareConfig": "productdesc.data.dataset",
    "Manifest": "productdesc.data.manifest",
    "BaseTemplate": "productdesc.prompts",
    "PromptTemplate": "productdesc.prompts",
    "ChatTemplate": "productdesc.prompts",
    "ContextTemplate": "productdesc.prompts",
    "FineTuneConfig": "productdesc.config",
    "ModelConfig": "productdesc.config",
    "LoraSettings": "productdesc.config",
    "TrainingConfig": "productdesc.config",
    "GenerationConfig": "productdesc.config",
    "LoraFineTuner": "productdesc.finetune",
    "TrainResult": "productdesc.train_result",
    "Describer": "productdesc.generation.describer",
    "EvalConfig": "productdesc.evaluate.config",
    "Description": "productdesc.generation.describer",
    "UserError": "productdesc.errors",
}

# Spelled out, not built from _LAZY, so that tools reading the source see the public names;
# besides what users create, the types they get back (TrainResult, Description, Manifest).
__all__ = [
    "AmazonTitlesDataset",
    "BaseTemplate",
    "ChatTemplate",
    "ContextTemplate",
    "Describer",
    "Description",
    "EvalConfig",
    "FineTuneConfig",
    "GenerationConfig",
    "LoraFineTuner",
    "LoraSettings",
    "Manifest",
    "ModelConfig",
    "PrepareConfig",
    "PromptTemplate",
    "TrainResult",
    "TrainingConfig",
    "UserError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from productdesc.config import (
        FineTuneConfig,
        GenerationConfig,
        LoraSettings,
        ModelConfig,
        TrainingConfig,
    )
    from productdesc.data.dataset import AmazonTitlesDataset, PrepareConfig
    from productdesc.data.manifest import Manifest
    from productdesc.errors import UserError
    from productdesc.finetune import LoraFineTuner, TrainResult
    from productdesc.generation.describer import Describer, Description
    from productdesc.prompts import BaseTemplate, ChatTemplate, ContextTemplate, PromptTemplate


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'productdesc' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
