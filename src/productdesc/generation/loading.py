"""Loading what a :class:`~productdesc.generation.describer.Describer` answers with, from a
training run or a model directory: the model, its tokenizer, the run's template and backend, and
the retrieval index a context template needs (checked before the model loads)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from productdesc.backends import backends, get_backend
from productdesc.errors import UserError
from productdesc.prompts import get_template
from productdesc.prompts.context import check_retriever
from productdesc.retrieval.store import open_index
from productdesc.rundir import read_config

__all__ = ["load_for_describer"]

logger = logging.getLogger(__name__)


def load_for_describer(
    path: str | os.PathLike[str],
    *,
    backend: str,
    base_only: bool,
    load_in_4bit: bool,
    dtype: str,
    merge_lora: bool | None,
    template: Any,
    retriever: Any,
) -> tuple[Any, Any, dict[str, Any]]:
    """The model, its tokenizer and the ``template``, ``backend`` and ``retriever`` keywords of a
    :class:`~productdesc.generation.describer.Describer` for them; the arguments are
    :meth:`~productdesc.generation.describer.Describer.from_pretrained`'s."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model directory not found: {path}")
    if merge_lora and load_in_4bit:
        raise UserError("merge_lora needs a 16- or 32-bit base; drop load_in_4bit or merge_lora")
    run_config = read_config(path)
    template_options: dict[str, Any] = {}
    if run_config is not None:
        if backend == "auto":
            backend = _recorded_backend(run_config.backend)
        if template is None:
            template = run_config.template
            template_options = run_config.template_options
    if template is None and retriever is not None:
        template = "context"

    # A missing or needless index, or a bad directory, fails before the model loads.
    check_retriever(template if template is not None else "alpaca", retriever)
    if retriever is not None:
        retriever = open_index(retriever)

    backend_obj = get_backend(backend)
    model, tokenizer = backend_obj.load_for_inference(
        path, load_in_4bit=load_in_4bit, dtype=dtype, adapter=not base_only
    )
    if template_options:
        template = get_template(template, tokenizer=tokenizer, **template_options)
    if merge_lora is None:
        merge_lora = not load_in_4bit and model.device.type == "cuda"
    if merge_lora:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        else:
            logger.info("%s has no LoRA adapter loaded; merge_lora has nothing to merge", path)
    return model, tokenizer, {"template": template, "backend": backend_obj, "retriever": retriever}


def _recorded_backend(name: str) -> str:
    """The backend a run recorded, where it is installed here; else ``"auto"``, so that a run
    trained with Unsloth on a GPU machine still loads (with transformers) on a laptop."""

    if name == "auto" or (name in backends and backends.get(name).is_available()):
        return name
    logger.info("the run trained with the %s backend, which is not installed here", name)
    return "auto"
