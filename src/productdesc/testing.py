"""Random-weight Llama models with a real BPE tokenizer, built offline in seconds.

For tests and benchmarks, where no hub is reachable: :func:`make_random_llama` trains a small
byte-level BPE tokenizer in-process on product-like text (or, on request, a SentencePiece
tokenizer like TinyLlama's and Llama 2's) and saves a ``LlamaForCausalLM`` with random weights
beside it, as a normal ``from_pretrained`` directory (safetensors).

Shapes:

* ``"tiny"``: hidden 64, 2 layers, 4 heads, 2 KV heads (a few M parameters); unit tests.
* ``"tinyllama-1.1b"``: TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads,
  vocab 32000); speed benchmarks, where speed does not depend on the weights' values.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

__all__ = ["SHAPES", "make_random_llama", "product_like_texts"]

SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "tinyllama-1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        vocab_size=32000,
    ),
}

_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]

_WORDS = (
    "soft cotton blanket for babies warm durable kitchen knife stainless steel set of six "
    "ballet tutu pink girls dance the prophet book hardcover edition wireless mouse usb "
    "rechargeable battery quality product made with care great gift for kids and adults "
    "describe what is this tell me about it size colour black white red blue small large "
    "features include easy to clean lightweight portable design perfect for travel home office"
).split()


def product_like_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` short pseudo product texts (deterministic for a seed), to train a tokenizer."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60))) for _ in range(n)]


def make_random_llama(
    path: str | os.PathLike[str],
    shape: str = "tiny",
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    texts: list[str] | None = None,
    sentencepiece: bool = False,
) -> Path:
    """Save a random-weight Llama and its tokenizer to ``path`` and return the path.

    Args:
        path: Output directory (created).
        shape: A key of :data:`SHAPES`.
        vocab_size: Tokenizer and embedding size (default: the shape's, else 1024).
        seed: Seed for the tokenizer corpus and the weights (same seed, same files).
        dtype: Weights' dtype on disk.
        device: Where to build the weights (``"cuda"`` is much faster for the 1.1B shape).
        texts: Corpus for the tokenizer (default: :func:`product_like_texts`); pass the texts a
            benchmark will train on so their tokens per character are realistic.
        sentencepiece: Train a SentencePiece BPE tokenizer with byte fallback that adds BOS
            (``tokenizer.model`` beside ``tokenizer.json``, TinyLlama's kind) instead of a
            byte-level BPE one (SmolLM2's kind). Needs the ``sentencepiece`` package.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    dims = dict(SHAPES[shape])
    vocab = vocab_size or dims.pop("vocab_size", 1024)
    dims.pop("vocab_size", None)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    corpus = texts or product_like_texts(2000, seed)
    if sentencepiece:
        tokenizer = _sentencepiece_tokenizer(path, corpus, vocab)
    else:
        bpe = Tokenizer(models.BPE(unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab if texts else min(vocab, 4000),  # a tiny corpus fills no more
            special_tokens=_SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        bpe.train_from_iterator(corpus, trainer)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
        )
    tokenizer.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        **dims,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    return path


def _sentencepiece_tokenizer(path: Path, corpus: list[str], vocab: int) -> Any:
    """A Llama tokenizer loaded from a SentencePiece model trained on ``corpus``, whose
    ``tokenizer.model`` is left in ``path``; special tokens keep :data:`_SPECIAL`'s ids."""
    import io
    import json

    import sentencepiece
    from transformers import AutoTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab,
        hard_vocab_limit=False,  # a small corpus has fewer pieces than the embedding has rows
        byte_fallback=True,
        character_coverage=1.0,
        **{f"{name}_id": i for i, name in enumerate(("unk", "bos", "eos", "pad"))},
        minloglevel=2,
    )
    (path / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "add_bos_token": True,
        "pad_token": "<pad>",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return AutoTokenizer.from_pretrained(path)
