"""The ``unsloth`` backend: Unsloth's ``FastLanguageModel`` + TRL ``SFTTrainer``.

Unsloth patches transformers, TRL and PEFT when it is imported, and must be imported before
them to do so fully. Creating :class:`UnslothBackend` imports it; in your own scripts, create
the backend (``get_backend("unsloth")``, or a :class:`~productdesc.finetune.LoraFineTuner`
with ``backend = "unsloth"`` or ``"auto"``) before importing transformers, trl or peft::

    from productdesc.backends import get_backend
    backend = get_backend("unsloth")  # imports unsloth first
    import transformers  # now patched

Importing unsloth takes 10-20 s and lasts for the whole process. On a machine without a GPU,
Unsloth trains on CPU (slowly); 4-bit is used on CUDA only, as in the transformers backend.
Under ``torchrun`` or ``accelerate launch``, Unsloth (2026.10) trains data-parallel with DDP and
loads one whole model per process onto that process's GPU, so ``"auto"`` keeps it there too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from productdesc.backends import _varlen
from productdesc.backends.base import Backend, backends

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from productdesc.config import LoraSettings

__all__ = ["UnslothBackend"]

logger = logging.getLogger(__name__)


def _import_unsloth() -> Any:
    late = [m for m in ("transformers", "trl", "peft") if m in sys.modules]
    if late and "unsloth" not in sys.modules:
        logger.warning(
            "%s imported before unsloth; Unsloth's patches may be incomplete. Create the unsloth "
            "backend (or the LoraFineTuner) before importing them",
            ", ".join(late),
        )
    # Unsloth reports usage statistics over the network unless told not to.
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth

    _varlen.install()
    return unsloth


@backends.builtin("unsloth")
class UnslothBackend(Backend):
    """Unsloth's fast LoRA path (``FastLanguageModel``); imports unsloth when created."""

    name: ClassVar[str] = "unsloth"

    def __init__(self) -> None:
        _import_unsloth()

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("unsloth") is not None

    def _load(
        self,
        path: str,
        *,
        max_seq_length: int,
        load_in_4bit: bool,
        dtype: torch.dtype,
        trust_remote_code: bool,
    ) -> tuple[Any, Any]:
        from unsloth import FastLanguageModel

        return FastLanguageModel.from_pretrained(
            model_name=path,
            max_seq_length=max_seq_length,
            dtype=dtype,
            load_in_4bit=load_in_4bit,
            trust_remote_code=trust_remote_code,
            # A local path or our own resolution: no Hub-name rewriting to unsloth/ mirrors.
            use_exact_model_name=True,
        )

    def _add_adapter(
        self, model: Any, lora: LoraSettings, *, seed: int, max_seq_length: int
    ) -> Any:
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model,
            r=lora.r,
            target_modules=list(lora.target_modules),
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            bias=lora.bias,
            use_gradient_checkpointing=lora.use_gradient_checkpointing,
            random_state=seed,
            use_rslora=lora.use_rslora,
            max_seq_length=max_seq_length,
        )

    def prepare_for_inference(self, model: Any) -> Any:
        """Unsloth's ``FastLanguageModel.for_inference`` (its faster generation path)."""
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
        model.eval()
        return model
