"""Export a model as one GGUF file (llama.cpp, Ollama, LM Studio), offline and only on request.

Unsloth's ``save_pretrained_gguf`` clones and builds llama.cpp, installing system packages
with it, so productdesc never calls it. This module writes the file itself with the ``gguf``
package (llama.cpp's own Python library: its writer, its tensor-name map and its tokenizer
readers), for the Llama architecture that TinyLlama, SmolLM2 and Llama 2/3 share:

* the weights of a merged or plain model directory (safetensors), with q/k rows reordered
  for llama.cpp's rotary layout, as llama.cpp's ``convert_hf_to_gguf.py`` does;
* the hyperparameters from ``config.json``;
* the tokenizer (GPT-2-style BPE, Llama's byte-fallback BPE, or SentencePiece), its special
  tokens, merges and chat template, and the pre-tokenizer's name, found as llama.cpp's
  converter finds it.

K-quants (``q4_k_m``, ``q5_k_m``) are made from an ``f16`` file with llama.cpp's
``llama-quantize``: the ``gguf`` package has no quantizer for them.

A training output with only an adapter is merged into its base first. Any other architecture
gets a clear error that points to llama.cpp's converter, run from a local checkout.

Beside the file goes an Ollama ``Modelfile`` (:data:`MODELFILE`): ``FROM`` the file, the run's
prompt as ``TEMPLATE`` (:meth:`~productdesc.prompts.BaseTemplate.ollama_template`), a ``stop``
for each end token, and the describer's decoding defaults that Ollama has settings for.

>>> from productdesc.gguf_export import export_gguf  # doctest: +SKIP
>>> export_gguf("run/", "run/model-f16.gguf")         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from productdesc._io import write_text_atomic
from productdesc._version import __version__
from productdesc.errors import UserError
from productdesc.rundir import MERGED, has_adapter, read_config, run_of

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from productdesc.config import GenerationConfig

__all__ = ["MODELFILE", "OUTTYPES", "export_gguf", "modelfile"]

logger = logging.getLogger(__name__)

# outtype -> (gguf.LlamaFileType, gguf.GGMLQuantizationType of its 2-D weights), by name so
# that the table needs no gguf import
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
MODELFILE = "Modelfile"

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
    from productdesc.backends import get_backend

    # The adapter has to be merged into unquantized weights first, in float32 so that the
    # file's own rounding is the only one; the merge lives in a temporary folder beside the
    # output and goes when the file is written.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        merged = get_backend("transformers").save_merged(
            source, Path(tmp) / MERGED, dtype="float32"
        )
        return _export(merged, out, outtype, name, run)


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
    from productdesc.config import GenerationConfig

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


def _export(model_dir: Path, out: Path, outtype: str, name: str, run: Path | None) -> Path:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    _check_architecture(config)  # before the tokenizer loads it (it refuses some configs)
    # The Modelfile's text before the long write: a template that cannot load fails first.
    text = _modelfile_for(model_dir, out, run)
    _write(model_dir, config, out, outtype, name)
    write_text_atomic(out.parent / MODELFILE, text)
    logger.info("wrote %s for Ollama", out.parent / MODELFILE)
    return out


def _modelfile_for(model_dir: Path, out: Path, run: Path | None) -> str:
    """The Modelfile for ``model_dir`` written as ``out``: the run's template, if a run."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = None
    if run is not None:
        from productdesc.prompts import get_template

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
        _add_vocab(writer, model_dir, n_vocab)

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
            _UNSUPPORTED.format(what=f"no supported tokenizer in {model_dir} ({'; '.join(errors)})")
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
        _UNSUPPORTED.format(what=f"{model_dir}: pre-tokenizer {kinds} is not one it knows")
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


def _add_vocab(writer: Any, model_dir: Path, n_vocab: int) -> None:
    import gguf
    from transformers import AutoTokenizer

    from productdesc.models import tokenizer_adds_bos

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
