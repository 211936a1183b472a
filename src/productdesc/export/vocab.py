"""The tokenizer in a GGUF file: its tokens, scores and types, merges, special tokens, chat
template and pre-tokenizer name, found as llama.cpp's converter finds them."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from productdesc.errors import UserError
from productdesc.tokenizers import tokenizer_adds_bos

__all__ = ["UNSUPPORTED", "add_vocab"]

logger = logging.getLogger(__name__)

#: The error for what this exporter cannot write, pointing at llama.cpp's converter.
UNSUPPORTED = (
    "{what}. productdesc writes GGUF for the Llama architecture only; for others, convert "
    "the merged model (`productdesc train --merge` writes OUT/merged) with "
    "convert_hf_to_gguf.py from a local llama.cpp checkout"
)


def _vocab(
    model_dir: Path, n_vocab: int, tokenizer: Any
) -> tuple[str, str | None, list, list, list]:
    """``(tokenizer model, pre-tokenizer, tokens, scores, token types)``, one per embedding row,
    for ``model_dir``, whose transformers tokenizer is ``tokenizer``."""
    import gguf

    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        spec = json.loads(tokenizer_json.read_bytes())
        if _byte_level(spec):
            pre = _bpe_pre(spec, model_dir, tokenizer)
            return ("gpt2", pre, *_byte_level_vocab(tokenizer, n_vocab))
    from gguf.vocab import LlamaHfVocab, SentencePieceVocab

    # tokenizer.model first: its scores are SentencePiece's merge priorities, which llama.cpp
    # merges by. LlamaHfVocab (tokenizer.json only) scores every token -1000.
    errors = []
    for cls in (SentencePieceVocab, LlamaHfVocab):
        try:
            vocab = cls(model_dir)
            break
        except (FileNotFoundError, TypeError, ImportError, RuntimeError) as exc:
            errors.append(f"{cls.name}: {exc}")
    else:
        raise UserError(
            UNSUPPORTED.format(what=f"no supported tokenizer in {model_dir} ({'; '.join(errors)})")
        )
    tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens(), strict=True))
    if isinstance(vocab, LlamaHfVocab):
        # A tokenizer.json converted from SentencePiece keeps its pieces in score order, so
        # the id ranks them as SentencePiece did.
        scores = [
            -float(i) if kind == gguf.TokenType.NORMAL else score
            for i, (score, kind) in enumerate(zip(scores, types, strict=True))
        ]
        logger.info("no tokenizer.model in %s: merge priorities taken from token ids", model_dir)
    if len(tokens) > n_vocab:
        logger.warning(
            "%d tokens beyond the %d embedding rows are left out", len(tokens) - n_vocab, n_vocab
        )
        del tokens[n_vocab:], scores[n_vocab:], types[n_vocab:]
    for i in range(len(tokens), n_vocab):  # the embedding may have rows beyond the tokenizer
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return vocab.tokenizer_model, None, tokens, scores, types


def _byte_level(tokenizer_json: dict[str, Any]) -> bool:
    """Whether a ``tokenizer.json`` is GPT-2-style byte-level BPE (SmolLM2, Llama 3)."""
    parts = []
    for key in ("pre_tokenizer", "decoder"):
        node = tokenizer_json.get(key) or {}
        parts += [node, *node.get("pretokenizers", []), *node.get("decoders", [])]
    return tokenizer_json.get("model", {}).get("type") == "BPE" and any(
        part.get("type") == "ByteLevel" for part in parts
    )


# Llama 3's pre-tokenizer split (tokenizer.json "Split" pattern).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# The text llama.cpp's convert_hf_to_gguf.py (get_vocab_base_pre) encodes to tell
# pre-tokenizers apart, and the sha256 of str(token ids) it names for the vocabularies of
# Llama-architecture models, with the model each hash was taken from.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_BY_HASH = {
    # meta-llama/Meta-Llama-3-8B
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    # HuggingFaceTB/SmolLM-135M (SmolLM2's vocabulary too)
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    # openai-community/gpt2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


def _bpe_pre(tokenizer_json: dict[str, Any], model_dir: Path, tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (how text is split before BPE).

    A known vocabulary gets the name llama.cpp's converter gives it, from the hash of
    :data:`_CHKTXT`'s token ids: SmolLM2 read from its GGUF file has only the byte-level split
    in its ``tokenizer.json`` (transformers' GGUF reader drops the digit split) yet tokenizes
    as ``smollm``. Another is named by its ``tokenizer.json`` split. llama.cpp applies the split
    the name says, not the one in tokenizer.json, so a wrong name would tokenize prompts
    differently from training: an unknown split is refused.
    """
    ids = tokenizer.encode(_CHKTXT)  # with the special tokens it adds, as llama.cpp hashes
    known = _PRE_BY_HASH.get(hashlib.sha256(str(ids).encode()).hexdigest())
    if known is not None:
        return known
    node = tokenizer_json.get("pre_tokenizer") or {}
    parts = node.get("pretokenizers", []) if node.get("type") == "Sequence" else [node]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and parts[1].get("use_regex", True)
    ):
        return "smollm"
    if (
        kinds == ["Split", "ByteLevel"]
        and parts[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT
        and not parts[1].get("use_regex", True)
    ):
        return "llama-bpe"
    raise UserError(
        UNSUPPORTED.format(what=f"{model_dir}: pre-tokenizer {kinds} is not one it knows")
    )


def _byte_level_vocab(tokenizer: Any, n_vocab: int) -> tuple[list[bytes], list[float], list[Any]]:
    """Tokens in id order, as llama.cpp's converter reads them from the transformers tokenizer:
    special added tokens are control tokens, other added ones user-defined."""
    import gguf

    by_id = {i: text for text, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    dropped = sorted(i for i in by_id if i >= n_vocab)
    if dropped:
        logger.warning(
            "%d token ids beyond the %d embedding rows are left out", len(dropped), n_vocab
        )
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i].encode("utf-8"))
        if i in added:
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, [0.0] * n_vocab, types


def add_vocab(writer: Any, model_dir: Path, n_vocab: int) -> None:
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model, pre, tokens, scores, types = _vocab(model_dir, n_vocab, tokenizer)
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=model == "gpt2", n_vocab=len(tokens))
    # SpecialVocab, as llama.cpp's converter runs it, takes add_bos/add_eos from
    # tokenizer_config.json or a simple post-processor, and the converter then turns BOS off
    # for a 49152-token vocabulary (SmolLM's). transformers 5's generic tokenizer ignores
    # tokenizer_config's flags, so they can claim what training never saw (an EOS after every
    # prompt); the values are what the tokenizer does. add_bos is always written: unset,
    # llama.cpp would go by the pre-tokenizer's default (on for llama-bpe).
    special.add_special_token["bos"] = tokenizer_adds_bos(tokenizer)
    if "eos" in special.add_special_token:
        special.add_special_token["eos"] = tokenizer("a").input_ids[-1:] == [tokenizer.eos_token_id]
    special.add_to_gguf(writer, quiet=True)
