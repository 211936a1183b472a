"""What a tokenizer does at the edges of a text: BOS before it, a pad distinct from EOS, and
a GGUF vocabulary read the way it was trained.

Model loading (:mod:`productdesc.models`), the chat template, decoding and GGUF export all
ask these questions; this module answers them and knows nothing of where a model comes from.
It imports ``tokenizers`` and ``transformers`` inside its functions only.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections import Counter
from typing import Any

__all__ = [
    "add_bos_on_encoding",
    "bpe_from_ranked_unigram",
    "ensure_distinct_pad",
    "tokenizer_adds_bos",
]

logger = logging.getLogger(__name__)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts its BOS token before the text it encodes."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]


def add_bos_on_encoding(tokenizer: Any) -> None:
    """Make a fast tokenizer put BOS before every sequence it encodes, as llama.cpp does."""
    from tokenizers import processors

    if tokenizer_adds_bos(tokenizer):
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        logger.warning(
            "the GGUF file asks for BOS before each text, but %s cannot be made to add it; "
            "prompts will be encoded without it",
            type(tokenizer).__name__,
        )
        return
    bos = tokenizer.bos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0",
        pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, tokenizer.bos_token_id)],
    )


def bpe_from_ranked_unigram(tokenizer: Any) -> bool:
    """Rebuild a SentencePiece-BPE vocabulary that transformers read as Unigram (Gemma's).

    A GGUF file stores a SentencePiece BPE model's merge order as scores (the negative rank of
    each piece). transformers' reader for Gemma treats them as Unigram log-probabilities, which
    splits "world" into "w", "or", "ld", and once saved the tokenizer reloads as a BPE without
    merges, one character a token: text the model never saw in pretraining. This derives the
    merges from the ranks, as transformers does for Llama's GGUF vocabularies. Returns whether
    the tokenizer was rebuilt.
    """
    from tokenizers import AddedToken, models

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.Unigram):
        return False
    from transformers.convert_slow_tokenizer import generate_merges

    pieces = json.loads(backend.to_str())["model"]["vocab"]
    # Ranks are whole numbers falling with the id over the ordinary pieces; control and byte
    # pieces share a score. Unigram log-probabilities fall too, but are not whole numbers.
    shared = {score for score, n in Counter(score for _, score in pieces).items() if n > 1}
    ranks = [score for _, score in pieces if score not in shared]
    falling = all(a > b for a, b in itertools.pairwise(ranks))
    if len(ranks) < 2 or not falling or any(score != int(score) for score in ranks):
        return False
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = generate_merges(vocab, dict(pieces))
    unk = tokenizer.unk_token if tokenizer.unk_token in vocab else None
    backend.model = models.BPE(vocab, merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    # Control pieces (<start_of_turn>, ...) share the control score and have no merges: as
    # special tokens they stay whole, as SentencePiece keeps them.
    control = pieces[0][1]
    backend.add_special_tokens(
        [
            AddedToken(piece, special=True, normalized=False)
            for piece, score in pieces
            if score == control and re.fullmatch(r"<[^<>\s]+>", piece)
        ]
    )
    logger.info("rebuilt the GGUF's SentencePiece vocabulary as BPE (%d merges)", len(merges))
    return True


def ensure_distinct_pad(
    tokenizer: Any, model: Any = None, *, preferred_ids: list[int] | None = None
) -> None:
    """Give ``tokenizer`` a pad token that is not its EOS token, and tell ``model`` about it.

    With pad == EOS, padding-aware label masking would hide the EOS label and the model would
    never learn to stop. The pad is the first of ``preferred_ids``, then the unknown token, that
    differs from EOS; failing those a new ``<|pad|>`` token is added (and ``model``'s embeddings
    grown to match).
    """
    eos_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos_id:
        candidates = [*(preferred_ids or []), tokenizer.unk_token_id]
        pad_id = next((i for i in candidates if i is not None and i != eos_id), None)
        if pad_id is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            logger.warning("tokenizer had no usable pad token; added <|pad|>")
        else:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
            logger.info(
                "pad token set to %r (id %d), distinct from EOS", tokenizer.pad_token, pad_id
            )
    if model is None:
        return
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is None:
            continue
        config.pad_token_id = tokenizer.pad_token_id
        # Keep a list of stop ids (Llama 3 style) when it already holds the tokenizer's EOS.
        eos = config.eos_token_id
        if not (isinstance(eos, (list, tuple)) and eos_id in eos):
            config.eos_token_id = eos_id
