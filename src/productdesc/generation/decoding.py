"""What a decoding call is told: a call's options over the defaults, the ids that end an answer,
a pad distinct from them, transformers' ``GenerationConfig``; and which of a model's own settings
rule the fast path out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from productdesc.config import GenerationConfig
from productdesc.config.fields import evolve_checked
from productdesc.errors import UserError
from productdesc.tokenizers import ensure_distinct_pad

__all__ = [
    "MODEL_PROCESSORS",
    "evolve_generation",
    "hf_generation_config",
    "length_penalty",
    "model_processors",
    "stop_and_pad_ids",
]


#: Fields of a model's own ``generation_config`` that change greedy choices and that a
#: :class:`GenerationConfig` leaves unset: ``generate`` applies them, the fast path cannot.
MODEL_PROCESSORS = (
    "suppress_tokens",
    "begin_suppress_tokens",
    "bad_words_ids",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
)


def model_processors(model: Any) -> list[str]:
    """The fields of :data:`MODEL_PROCESSORS` that ``model``'s generation_config sets."""
    config = getattr(model, "generation_config", None)
    return [name for name in MODEL_PROCESSORS if getattr(config, name, None) is not None]


def stop_and_pad_ids(model: Any, tokenizer: Any) -> tuple[tuple[int, ...], int]:
    """The ids generation stops at, and a distinct pad id (set on the tokenizer if needed).

    The tokenizer's EOS comes first: the prompt templates end training text with it. The
    end tokens of the model's own ``generation_config`` (Llama 3's ``<|eot_id|>`` beside
    ``<|end_of_text|>``) stop an answer too, so a base model prompted directly also ends.
    """
    if tokenizer.eos_token_id is None:
        raise UserError(
            "the tokenizer has no EOS token, so generation would never stop; "
            "set tokenizer.eos_token to the token the model was trained to end answers with"
        )
    # A pad equal to EOS would make a row padded after its answer look like one cut short.
    ensure_distinct_pad(tokenizer, model)
    stops = [tokenizer.eos_token_id]
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in declared if isinstance(declared, list) else [declared]:
        if isinstance(token, int) and token not in stops and token != tokenizer.pad_token_id:
            stops.append(token)
    return tuple(stops), tokenizer.pad_token_id


def length_penalty(gen: GenerationConfig) -> tuple[int, float] | None:
    """``gen``'s ``exponential_decay_length_penalty``, its start moved to where
    ``min_new_tokens`` lets EOS through if that is later.

    transformers adds ``|score| * (factor ** k - 1)`` to EOS's score, which is -inf while
    ``min_new_tokens`` holds EOS back: -inf + inf is NaN, the NaN wins the argmax, and the
    answer ends before ``min_new_tokens``. Both of the describer's paths get this start.
    """
    decay = gen.exponential_decay_length_penalty
    if decay is None or decay[0] >= gen.min_new_tokens - 1:
        return decay
    return gen.min_new_tokens - 1, decay[1]


def hf_generation_config(gen: GenerationConfig, stop_ids: Sequence[int], pad_id: int) -> Any:
    """transformers' ``GenerationConfig`` for ``gen``, ending at ``stop_ids``, padding with
    ``pad_id``."""
    from transformers import GenerationConfig as HFGenerationConfig

    # Every field is set explicitly so a model's own generation_config.json (which may
    # turn sampling on) never changes what a GenerationConfig asks for.
    return HFGenerationConfig(
        max_new_tokens=gen.max_new_tokens,
        min_new_tokens=gen.min_new_tokens,
        do_sample=gen.do_sample,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        repetition_penalty=gen.repetition_penalty,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        exponential_decay_length_penalty=length_penalty(gen),
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )


def evolve_generation(base: GenerationConfig, **overrides: Any) -> GenerationConfig:
    """``base`` with ``overrides`` applied and validated; a bad key or value names the field.

    Raises:
        UserError: An unknown option, or a value the :class:`GenerationConfig` field rejects.
    """
    return evolve_checked(base, "generation", **overrides)
