"""What the accelerator offers: CUDA present, and the dtype a config's ``"auto"`` means here.

Below both :mod:`~productdesc.backends.base` and :mod:`~productdesc.backends._sft`, so that
the trainer's setup needs nothing of the backend interface (and the two never import each
other). Importing it is cheap: torch loads when a function runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["cuda_available", "resolve_dtype"]


def cuda_available() -> bool:
    """Whether a CUDA GPU is usable (imports torch)."""
    import torch

    return torch.cuda.is_available()


def resolve_dtype(dtype: str) -> torch.dtype:
    """A :class:`~productdesc.config.ModelConfig` dtype name as a torch dtype.

    ``"auto"`` is bfloat16 on a GPU that supports it, else float16 on GPU, and float32 on CPU
    (CPU 16-bit matmuls are slow and lose precision for no memory that matters at this size).
    """
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
