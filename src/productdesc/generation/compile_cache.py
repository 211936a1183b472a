"""Where torch keeps what the fast path compiles, so that a later process reuses it, and which
compiled code a decoder shares with others (:func:`own_code`).

torch's inductor caches compiled graphs, Triton kernels and the shapes that turned out to vary
(its profile-guided dynamic shapes) on disk, by default under the system's temporary folder,
which is emptied on reboot on many systems and is per machine image in containers. productdesc
points it at a folder of its own in the user's cache instead, unless the user chose one:

1. ``TORCHINDUCTOR_CACHE_DIR``, torch's own setting, wins where it names another folder than
   torch's default (torch writes its default there itself, on importing some of its modules);
2. else ``PRODUCTDESC_COMPILE_CACHE``;
3. else ``$XDG_CACHE_HOME/productdesc/torch-compile`` (``~/.cache/productdesc/torch-compile``).

What a kept cache saves, in a cold and a cached process, is measured by
``benchmarks/cold_start.py`` (:doc:`/benchmarks`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TORCH_SETTING = "TORCHINDUCTOR_CACHE_DIR"
SETTING = "PRODUCTDESC_COMPILE_CACHE"


def compile_cache_dir() -> Path:
    """The folder torch's compile caches go to (see the module's docs for the order)."""
    torchs = os.environ.get(TORCH_SETTING)
    if torchs and os.path.abspath(torchs) == _torch_default():
        torchs = None
    chosen = torchs or os.environ.get(SETTING)
    if chosen:
        return Path(chosen).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "productdesc" / "torch-compile"


def _torch_default() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch: its default stays in use only if the user set it
        return None
    return os.path.abspath(default_cache_dir())


def use_compile_cache() -> Path:
    """Point torch's compile caches at :func:`compile_cache_dir` before the first compilation.

    torch's caches read ``TORCHINDUCTOR_CACHE_DIR`` when they are first used, so setting it
    here, before the process's first compilation, moves every cache (FX graphs, AOTAutograd,
    Triton kernels, dynamic-shape profiles); in a process that compiled something before,
    some of them stay where they were.
    """
    folder = compile_cache_dir()
    if os.environ.get(TORCH_SETTING) != str(folder):
        os.environ[TORCH_SETTING] = str(folder)
        logger.info("torch compile cache: %s (later processes reuse what compiles here)", folder)
    return folder


_CODES: dict[tuple, Any] = {}


def own_code(method: Any, key: tuple) -> Any:
    """``method`` with the code object kept for ``key``, for ``torch.compile``.

    torch keeps compiled code, and counts recompilations against its limit of 8, per code
    object. Sharing one between the one-token step (static shapes) and the prompt's forward
    (symbolic sizes), or between the decoders of models of different sizes or dtypes in one
    process, fills one list: a fourth such model stopped the step (``fullgraph=True``) with
    ``FailOnRecompileLimitHit``. Decoders of models of one kind (:func:`model_kind`) still share,
    so a base model and its fine-tuned copy compile once.
    """
    import types

    fn = method.__func__
    code = _CODES.setdefault((fn.__qualname__, *key), fn.__code__.replace())  # a new object
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


def model_kind(model: Any) -> tuple:
    """The model's class and its parameters' shapes and dtypes: what compiled code depends on."""
    params = tuple((tuple(p.shape), p.dtype) for p in model.parameters())
    return (type(model).__qualname__, params)
