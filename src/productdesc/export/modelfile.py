"""The Ollama ``Modelfile`` beside an exported file: ``FROM`` it, the run's prompt as
``TEMPLATE``, a ``stop`` for each end token, and the describer's decoding defaults."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from productdesc._version import __version__
from productdesc.config import GenerationConfig
from productdesc.prompts import get_template
from productdesc.rundir import read_config

if TYPE_CHECKING:  # pragma: no cover
    from productdesc.config import GenerationConfig


__all__ = ["MODELFILE", "modelfile"]

logger = logging.getLogger(__name__)

MODELFILE = "Modelfile"


def modelfile(
    gguf_file: str | os.PathLike[str],
    *,
    template: str | None,
    stops: Sequence[str],
    generation: GenerationConfig | None = None,
) -> str:
    """An Ollama Modelfile's text for ``gguf_file``, to be written in the file's directory.

    Args:
        gguf_file: The GGUF file; ``FROM`` names it relative to its directory.
        template: The ``TEMPLATE`` (a Go template); ``None`` writes none, so Ollama takes the
            chat template in the GGUF file.
        stops: The end tokens' texts, one ``PARAMETER stop`` each.
        generation: The decoding settings (``None``: the describer's defaults). Ollama has no
            ``no_repeat_ngram_size``, ``min_new_tokens`` or length penalty: a comment says so.
    """

    gen = generation if generation is not None else GenerationConfig()
    lines = [
        f"# Written by productdesc {__version__} export: ollama create NAME -f {MODELFILE}",
        f"FROM ./{Path(gguf_file).name}",
    ]
    if template is None:
        lines.append("# no TEMPLATE: Ollama uses the chat template in the GGUF file")
    else:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    lines.append(f"PARAMETER num_predict {gen.max_new_tokens}")
    if gen.do_sample:
        lines += [
            f"PARAMETER temperature {gen.temperature:g}",
            f"PARAMETER top_k {gen.top_k}",
            f"PARAMETER top_p {gen.top_p:g}",
        ]
    else:
        lines.append("PARAMETER temperature 0")  # greedy, as the describer decodes
    # Ollama's default penalty is 1.1; the describer's is written even when it is none (1).
    lines.append(f"PARAMETER repeat_penalty {gen.repetition_penalty:g}")
    if gen.repetition_penalty != 1.0:
        lines.append("PARAMETER repeat_last_n -1")  # transformers penalises the whole sequence
    unsupported = [
        f"{name} {value}"
        for name, value in (
            ("no_repeat_ngram_size", gen.no_repeat_ngram_size or None),
            ("min_new_tokens", gen.min_new_tokens or None),
            ("exponential_decay_length_penalty", gen.exponential_decay_length_penalty),
        )
        if value is not None
    ]
    if unsupported:
        lines.append(
            f"# productdesc also decodes with {', '.join(unsupported)}, which Ollama has no "
            f"setting for"
        )
    return "\n".join(lines) + "\n"


def modelfile_for(model_dir: Path, out: Path, run: Path | None) -> str:
    """The Modelfile for ``model_dir`` written as ``out``: the run's template, if a run."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = None
    if run is not None:
        config = read_config(run)
        prompt = get_template(config.template, tokenizer=tokenizer, **config.template_options)
        template = prompt.ollama_template()
    return modelfile(out, template=template, stops=_stops(model_dir, tokenizer))


def _stops(model_dir: Path, tokenizer: Any) -> list[str]:
    """The texts of the tokens generation ends at: the tokenizer's EOS, then the end tokens the
    model's ``generation_config.json`` declares (as the describer stops), pad left out."""
    ids = [tokenizer.eos_token_id]
    config = model_dir / "generation_config.json"
    declared = (
        json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        if config.is_file()
        else None
    )
    for token in declared if isinstance(declared, list) else [declared]:
        if isinstance(token, int) and token not in ids and token != tokenizer.pad_token_id:
            ids.append(token)
    return [tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None]
