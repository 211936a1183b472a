"""The ``transformers`` backend: ``AutoModelForCausalLM`` + PEFT LoRA + TRL ``SFTTrainer``.

Works everywhere transformers does. 4-bit NF4 loading (QLoRA) uses bitsandbytes and only
happens on a CUDA GPU; on CPU a 4-bit request loads the model unquantized, with a warning.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, ClassVar

from productdesc.backends.base import Backend, backends

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from productdesc.config import LoraSettings

__all__ = ["TransformersBackend"]


@backends.builtin("transformers")
class TransformersBackend(Backend):
    """Plain Hugging Face: transformers, PEFT, TRL (and bitsandbytes for 4-bit on GPU)."""

    name: ClassVar[str] = "transformers"
    requires: ClassVar[tuple[str, ...]] = ("transformers", "peft", "trl")

    @classmethod
    def is_available(cls) -> bool:
        return all(importlib.util.find_spec(m) for m in cls.requires)

    def _load(
        self,
        path: str,
        *,
        max_seq_length: int,
        load_in_4bit: bool,
        dtype: torch.dtype,
        trust_remote_code: bool,
    ) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
        if torch.cuda.is_available():
            # This process's GPU: under a launch, load_model made it cuda:LOCAL_RANK.
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        return model, tokenizer

    def _add_adapter(
        self, model: Any, lora: LoraSettings, *, seed: int, max_seq_length: int
    ) -> Any:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import set_seed

        checkpointing = bool(lora.use_gradient_checkpointing)  # "unsloth" means plain here
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
        elif checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.enable_input_require_grads()  # frozen embeddings: the checkpointed input needs grad
        set_seed(seed)  # LoRA's A matrices are drawn from torch's generator
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=list(lora.target_modules),
            bias=lora.bias,
            use_rslora=lora.use_rslora,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)
