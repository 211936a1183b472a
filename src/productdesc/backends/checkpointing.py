"""``use_gradient_checkpointing = "auto"``: recompute activations only when memory needs it.

Checkpointing trades compute for memory: on an H200 it cost a packed TinyLlama-1.1B run 42% of
its speed (docs/benchmarks.md) while the card had 100 GB to spare. ``"auto"`` keeps every
activation when they fit in the GPU's free memory with room to spare, and checkpoints
(Unsloth's offloaded variant; plain checkpointing on the transformers backend) when they don't.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: Free memory kept back beyond the activation estimate: logits chunks, allocator slack,
#: optimizer state and gradients of the adapter.
HEADROOM = 1.25


def activation_bytes(model_config: Any, tokens: int, *, dtype_bytes: int = 2) -> int:
    """Activations a decoder stack keeps for the backward pass without recomputation.

    Per token and layer, about ten hidden-size vectors (norms, attention inputs and outputs,
    residuals) and three MLP-size ones (gate, up, their product). For TinyLlama-1.1B that is
    1.6 MB a token; Unsloth's packed step measured 1.3 MB (21.7 GB peak at 16k tokens).
    """
    config = getattr(model_config, "text_config", None) or model_config
    per_layer = 10 * config.hidden_size + 3 * config.intermediate_size
    return tokens * config.num_hidden_layers * per_layer * dtype_bytes


def choose(requested: Any, model: Any, tokens_per_micro_batch: int) -> bool | str:
    """The checkpointing setting to use: ``requested``, or for ``"auto"`` one chosen from memory.

    ``"auto"`` gives ``False`` on CPU (host memory, and recomputation only slows a CPU down)
    and on a GPU whose free memory holds the activations with :data:`HEADROOM`; else
    ``"unsloth"``.
    """
    if requested != "auto":
        return requested
    import torch

    if not torch.cuda.is_available():
        return False
    # 4-bit bases compute in 16 bits; a float32 model keeps float32 activations
    itemsize = max(2, getattr(getattr(model, "dtype", None), "itemsize", 2))
    need = activation_bytes(model.config, tokens_per_micro_batch, dtype_bytes=itemsize)
    free, _ = torch.cuda.mem_get_info()
    checkpoint = need * HEADROOM > free
    logger.info(
        "gradient checkpointing %s: activations of %d tokens need ~%.1f GB, %.1f GB free",
        "on" if checkpoint else "off",
        tokens_per_micro_batch,
        need / 1e9,
        free / 1e9,
    )
    return "unsloth" if checkpoint else False
