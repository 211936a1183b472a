"""Write one GGUF file from a model directory: the weights, the hyperparameters and the
tokenizer, as llama.cpp's converter writes them (see :mod:`productdesc.export`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from productdesc._io import write_text_atomic
from productdesc.backends import get_backend
from productdesc.errors import UserError
from productdesc.export.modelfile import MODELFILE, modelfile_for
from productdesc.export.vocab import UNSUPPORTED as _UNSUPPORTED
from productdesc.export.vocab import add_vocab
from productdesc.rundir import MERGED, has_adapter, run_of

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


__all__ = ["OUTTYPES", "export_gguf"]

logger = logging.getLogger(__name__)

_TYPES = {
    "f32": ("ALL_F32", "F32"),
    "f16": ("MOSTLY_F16", "F16"),
    "bf16": ("MOSTLY_BF16", "BF16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
}

# llama-quantize's names for the K-quant mixes asked for most; gguf.quants has no Q4_K or
# Q5_K quantizer, so these are accepted only to answer with the command that makes them
_LLAMA_QUANTIZE = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M"}

#: Weight types :func:`export_gguf` accepts. Norms and other 1-D tensors stay float32, as
#: llama.cpp's converter keeps them. ``q4_k_m`` and ``q5_k_m`` are refused with the
#: ``llama-quantize`` step that makes them from an ``f16`` file.
OUTTYPES = (*_TYPES, *_LLAMA_QUANTIZE)

#: The Ollama Modelfile written beside the GGUF file (``ollama create NAME -f Modelfile``).


def export_gguf(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: str = "f16",
) -> Path:
    """Write ``source`` as the GGUF file ``out`` (atomically), and a :data:`MODELFILE` beside
    it (replacing one there); returns the GGUF file's path.

    Args:
        source: A training output directory (its ``merged/`` when present, else the adapter
            merged into its base on the fly), or a merged or plain model directory.
        out: The ``.gguf`` file to write.
        outtype: One of :data:`OUTTYPES` for the 2-D weights.

    Raises:
        UserError: An unknown ``outtype`` or a K-quant (the message gives the
            ``llama-quantize`` command), a missing directory, or a model or tokenizer this
            writer does not handle (the message says what to use instead).
    """
    if outtype in _LLAMA_QUANTIZE:
        raise UserError(
            f"outtype {outtype}: the gguf package cannot write K-quants; export with --outtype "
            f"f16, then run llama.cpp's `llama-quantize model-f16.gguf {out} "
            f"{_LLAMA_QUANTIZE[outtype]}`"
        )
    if outtype not in OUTTYPES:
        raise UserError(f"outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"model directory not found: {source}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the .gguf file to write")
    name = source.name  # the run's name, not MERGED's
    run = run_of(source)
    if (source / MERGED / "config.json").is_file():
        source = source / MERGED
    if (source / "config.json").is_file():
        return _export(source, out, outtype, name, run)
    if not has_adapter(source):
        raise UserError(f"{source} holds neither a model (config.json) nor a LoRA adapter")
    # The adapter has to be merged into unquantized weights first, in float32 so that the
    # file's own rounding is the only one; the merge lives in a temporary folder beside the
    # output and goes when the file is written.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        merged = get_backend("transformers").save_merged(
            source, Path(tmp) / MERGED, dtype="float32"
        )
        return _export(merged, out, outtype, name, run)


def _export(model_dir: Path, out: Path, outtype: str, name: str, run: Path | None) -> Path:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    _check_architecture(config)  # before the tokenizer loads it (it refuses some configs)
    # The Modelfile's text before the long write: a template that cannot load fails first.
    text = modelfile_for(model_dir, out, run)
    _write(model_dir, config, out, outtype, name)
    write_text_atomic(out.parent / MODELFILE, text)
    logger.info("wrote %s for Ollama", out.parent / MODELFILE)
    return out


def _write(model_dir: Path, config: dict[str, Any], out: Path, outtype: str, name: str) -> Path:
    try:
        import gguf
    except ImportError:
        raise UserError(
            "GGUF export needs the gguf package: pip install 'productdesc[gguf]'"
        ) from None

    try:
        n_layers = config["num_hidden_layers"]
        n_head = config["num_attention_heads"]
        hidden, n_ff, n_vocab = (
            config["hidden_size"],
            config["intermediate_size"],
            config["vocab_size"],
        )
    except KeyError as exc:
        raise UserError(f"{model_dir}/config.json has no {exc}") from None
    n_head_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or hidden // n_head

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_name(name)
        writer.add_context_length(config.get("max_position_embeddings", 2048))
        writer.add_embedding_length(hidden)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(n_ff)
        writer.add_rope_dimension_count(head_dim)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_file_type(getattr(gguf.LlamaFileType, _TYPES[outtype][0]))
        # llama.cpp's converter writes both for every file, whatever its type
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(n_vocab)
        add_vocab(writer, model_dir, n_vocab)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
        tied = config.get("tie_word_embeddings", False)
        for name, data in _tensors(model_dir):
            if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                continue  # recomputed by llama.cpp / shared with the embedding
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise UserError(_UNSUPPORTED.format(what=f"{model_dir}: unexpected tensor {name}"))
            # biases too: their entries follow the same rotary layout as the weight's rows
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, n_head)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, n_head_kv)
            _add_tensor(writer, gguf, gguf_name, data, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=logger.isEnabledFor(logging.INFO))
        writer.close()
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {out}: {exc}") from None
        raise
    logger.info("wrote %s (%s, %.1f MB)", out, outtype, out.stat().st_size / 1e6)
    return out


def _check_architecture(config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    if model_type != "llama":
        raise UserError(_UNSUPPORTED.format(what=f"model_type {model_type!r} is not 'llama'"))
    # transformers 5 writes rope_parameters (rope_type "default" when unscaled); older
    # configs write rope_scaling. Scaled RoPE (Llama 3.1's "llama3", YaRN, ...) needs keys and
    # a rope_freqs tensor this writer does not produce.
    scaling = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in (None, "default"):
        raise UserError(_UNSUPPORTED.format(what=f"RoPE scaling {kind!r} is not supported"))


def _rope_theta(config: dict[str, Any]) -> float:
    # transformers 5 keeps rope_theta inside rope_parameters; older configs at the top level
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


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
    """q/k rows (or bias entries) from transformers' rotary layout (halves) to llama.cpp's
    (interleaved pairs), as llama.cpp's converter reorders them."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_tensor(writer: Any, gguf: Any, name: str, data: np.ndarray, outtype: str) -> None:
    kind = getattr(gguf.GGMLQuantizationType, _TYPES[outtype][1])
    if data.ndim < 2:
        kind = gguf.GGMLQuantizationType.F32
    elif kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
        # q8_0 packs rows in blocks of 32; llama.cpp's converter keeps other rows in f16 too
        kind = gguf.GGMLQuantizationType.F16
    # quantize() also converts to plain f32 / f16 arrays, which the writer stores as they are
    writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
