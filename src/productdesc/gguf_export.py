"""Export a model as one GGUF file (llama.cpp, Ollama, LM Studio), offline and only on request.

Unsloth's ``save_pretrained_gguf`` clones and builds llama.cpp, installing system packages
with it, so productdesc never calls it. This module writes the file itself with the ``gguf``
package (llama.cpp's own Python library: its writer, its tensor-name map and its tokenizer
readers), for the Llama architecture that TinyLlama, SmolLM2 and Llama 2/3 share:

* the weights of a merged or plain model directory (safetensors), with q/k rows reordered
  for llama.cpp's rotary layout, as llama.cpp's ``convert_hf_to_gguf.py`` does;
* the hyperparameters from ``config.json``;
* the tokenizer (GPT-2-style BPE, Llama's byte-fallback BPE, or SentencePiece), its special
  tokens, merges and chat template.

A training output with only an adapter is merged into its base first. Any other architecture
gets a clear error that points to llama.cpp's converter, run from a local checkout.

>>> from productdesc.gguf_export import export_gguf  # doctest: +SKIP
>>> export_gguf("run/", "run/model-f16.gguf")         # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from productdesc.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["OUTTYPES", "export_gguf"]

logger = logging.getLogger(__name__)

#: Weight types a file can be written in. Norms and other 1-D tensors stay float32, as
#: llama.cpp's converter keeps them.
OUTTYPES = ("f32", "f16", "bf16", "q8_0")

_UNSUPPORTED = (
    "{what}. productdesc writes GGUF for the Llama architecture only; for others, convert "
    "the merged model (`productdesc train --merge` writes OUT/merged) with "
    "convert_hf_to_gguf.py from a local llama.cpp checkout"
)


def export_gguf(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: str = "f16",
) -> Path:
    """Write ``source`` as the GGUF file ``out`` (atomically); returns its path.

    Args:
        source: A training output directory (its ``merged/`` when present, else the adapter
            merged into its base on the fly), or a merged or plain model directory.
        out: The ``.gguf`` file to write.
        outtype: One of :data:`OUTTYPES` for the 2-D weights.

    Raises:
        UserError: An unknown ``outtype``, a missing directory, or a model or tokenizer this
            writer does not handle (the message says what to use instead).
    """
    if outtype not in OUTTYPES:
        raise UserError(f"outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"model directory not found: {source}")
    out = Path(out)
    if (source / "merged" / "config.json").is_file():
        source = source / "merged"
    if (source / "config.json").is_file():
        return _write(source, out, outtype)
    if not (source / "adapter_config.json").is_file():
        raise UserError(f"{source} holds neither a model (config.json) nor a LoRA adapter")
    from productdesc.backends import get_backend

    # The adapter has to be merged into unquantized weights first; the merge lives in a
    # temporary folder beside the output and goes when the file is written.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        merged = get_backend("transformers").save_merged(source, Path(tmp) / "merged")
        return _write(merged, out, outtype)


def _write(model_dir: Path, out: Path, outtype: str) -> Path:
    try:
        import gguf
    except ImportError:
        raise UserError(
            "GGUF export needs the gguf package: pip install 'productdesc[gguf]'"
        ) from None

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    _check_architecture(config)
    n_layers = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads", n_head)
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_name(model_dir.name)
        writer.add_context_length(config.get("max_position_embeddings", 2048))
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_rope_dimension_count(head_dim)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_file_type(_FILE_TYPES[outtype](gguf))
        _add_vocab(writer, model_dir, config["vocab_size"])

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
        tied = config.get("tie_word_embeddings", False)
        for name, data in _tensors(model_dir):
            if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                continue  # recomputed by llama.cpp / shared with the embedding
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise UserError(_UNSUPPORTED.format(what=f"{model_dir}: unexpected tensor {name}"))
            if name.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif name.endswith("k_proj.weight"):
                data = _permute(data, n_head_kv)
            _add_tensor(writer, gguf, gguf_name, data, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=logger.isEnabledFor(logging.INFO))
        writer.close()
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%s, %.1f MB)", out, outtype, out.stat().st_size / 1e6)
    return out


def _check_architecture(config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    if model_type != "llama":
        raise UserError(_UNSUPPORTED.format(what=f"model_type {model_type!r} is not 'llama'"))
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise UserError(_UNSUPPORTED.format(what=f"rope_scaling {scaling} is not supported"))


def _rope_theta(config: dict[str, Any]) -> float:
    # transformers 5 keeps rope_theta inside rope_parameters; older configs at the top level
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _vocab(model_dir: Path, n_vocab: int) -> tuple[str, list[bytes], list[float], list[Any]]:
    """``(tokenizer model, tokens, scores, token types)``, one entry per embedding row."""
    import gguf

    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.is_file() and _byte_level(json.loads(tokenizer_json.read_bytes())):
        return ("gpt2", *_byte_level_vocab(model_dir, n_vocab))
    from gguf.vocab import LlamaHfVocab, SentencePieceVocab

    errors = []
    for cls in (LlamaHfVocab, SentencePieceVocab):
        try:
            vocab = cls(model_dir)
            break
        except (FileNotFoundError, TypeError, ImportError, RuntimeError) as exc:
            errors.append(f"{cls.name}: {exc}")
    else:
        raise UserError(
            _UNSUPPORTED.format(what=f"no supported tokenizer in {model_dir} ({'; '.join(errors)})")
        )
    tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens(), strict=True))
    for i in range(len(tokens), n_vocab):  # the embedding may have rows beyond the tokenizer
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return vocab.tokenizer_model, tokens, scores, types


def _byte_level(tokenizer_json: dict[str, Any]) -> bool:
    """Whether a ``tokenizer.json`` is GPT-2-style byte-level BPE (SmolLM2, Llama 3)."""
    parts = []
    for key in ("pre_tokenizer", "decoder"):
        node = tokenizer_json.get(key) or {}
        parts += [node, *node.get("pretokenizers", []), *node.get("decoders", [])]
    return tokenizer_json.get("model", {}).get("type") == "BPE" and any(
        part.get("type") == "ByteLevel" for part in parts
    )


def _byte_level_vocab(model_dir: Path, n_vocab: int) -> tuple[list[bytes], list[float], list[Any]]:
    """Tokens in id order, as llama.cpp's converter reads them from the transformers tokenizer:
    special added tokens are control tokens, other added ones user-defined."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
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


def _add_vocab(writer: Any, model_dir: Path, n_vocab: int) -> None:
    import gguf

    model, tokens, scores, types = _vocab(model_dir, n_vocab)
    writer.add_tokenizer_model(model)
    if model == "gpt2":
        # llama.cpp picks its BPE pre-tokenizer from this; "default" is its GPT-2-style split.
        writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)


def _tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, float32 array)`` for every tensor in the directory's safetensors files."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir} has no .safetensors weights")
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, fh.get_tensor(name).float().numpy()


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from transformers' rotary layout (halves) to llama.cpp's (interleaved pairs)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


_FILE_TYPES = {
    "f32": lambda gguf: gguf.LlamaFileType.ALL_F32,
    "f16": lambda gguf: gguf.LlamaFileType.MOSTLY_F16,
    "bf16": lambda gguf: gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": lambda gguf: gguf.LlamaFileType.MOSTLY_Q8_0,
}


def _add_tensor(writer: Any, gguf: Any, name: str, data: np.ndarray, outtype: str) -> None:
    import numpy as np

    if data.ndim < 2 or outtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif outtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        kind = {
            "bf16": gguf.GGMLQuantizationType.BF16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0,
        }[outtype]
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
