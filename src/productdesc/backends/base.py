"""The backend interface: load a model, add a LoRA adapter, train it, load it back for inference.

A backend hides whether Unsloth or plain transformers + PEFT is underneath; the fine-tuner and
the describer only call the public methods of :class:`Backend`. A new backend subclasses it,
implements the hooks (``_load``, ``_add_adapter``, ``_attach_adapter``) and registers itself in
:data:`backends` (entry-point group ``productdesc.backends``).

Module-level imports stay light (no torch): listing the backends imports this module.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from productdesc import distributed
from productdesc.backends._device import cuda_available, resolve_dtype
from productdesc.backends._sft import build_trainer
from productdesc.errors import UserError
from productdesc.models import ResolvedModel, loading_errors, resolve_model
from productdesc.plugins import PluginError, Registry, class_with
from productdesc.rundir import ADAPTER_CONFIG as ADAPTER_CONFIG  # its old home; still imported
from productdesc.rundir import adapter_base, has_adapter
from productdesc.tokenizers import ensure_distinct_pad

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from productdesc.config import LoraSettings, ModelConfig, TrainingConfig

__all__ = ["Backend", "backends", "cuda_available", "get_backend", "resolve_dtype"]

logger = logging.getLogger(__name__)

backends: Registry[type] = Registry(
    "productdesc.backends", "backend", class_with("load_model", "load_for_inference", "train")
)
"""Fine-tuning backends: ``name -> backend class`` (entry-point group ``productdesc.backends``)."""


def want_4bit(requested: bool) -> bool:
    """``requested``, unless there is no CUDA GPU, where 4-bit is refused with a warning."""
    if requested and not cuda_available():
        logger.warning(
            "load_in_4bit needs a CUDA GPU; loading the model unquantized on CPU instead "
            "(set model.load_in_4bit = false to silence this)"
        )
        return False
    return requested


class Backend(abc.ABC):
    """One way of loading, adapting and training a causal LM.

    Public methods are the interface; subclasses implement the ``_``-prefixed hooks. A backend
    object holds no model: every method takes or returns one.
    """

    name: ClassVar[str]
    """The registry name (``"unsloth"``, ``"transformers"``)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Modules it needs that ``pip install`` names alike, named in the error when one is missing
    (Unsloth's are not listed: ``productdesc[unsloth]`` pins them together)."""

    @classmethod
    @abc.abstractmethod
    def is_available(cls) -> bool:
        """Whether this backend's libraries are installed (cheap: imports nothing heavy)."""

    # -- hooks -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(
        self,
        path: str,
        *,
        max_seq_length: int,
        load_in_4bit: bool,
        dtype: torch.dtype,
        trust_remote_code: bool,
    ) -> tuple[Any, Any]:
        """Load a model directory (or cached Hub id) and its tokenizer, on the best device."""

    @abc.abstractmethod
    def _add_adapter(
        self, model: Any, lora: LoraSettings, *, seed: int, max_seq_length: int
    ) -> Any:
        """Wrap ``model`` in a new trainable LoRA adapter (a PEFT model)."""

    def _attach_adapter(self, model: Any, adapter_dir: Path) -> Any:
        """Load a saved adapter onto ``model`` for inference."""
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)

    # -- training --------------------------------------------------------------------------------
    def load_model(self, model_config: ModelConfig) -> tuple[Any, Any]:
        """Load the base model and tokenizer a run trains, pad token made distinct from EOS.

        Under ``torchrun`` or ``accelerate launch`` each process loads its own copy onto its own
        GPU (see :mod:`~productdesc.distributed`).

        Raises:
            ModelNotAvailableError: The weights cannot be found or downloaded.
        """
        # Under a launch: join the process group first, which gives this rank its own GPU
        # (cuda:LOCAL_RANK) to load onto; rank 0 alone downloads or converts the model.
        distributed.init()
        with distributed.main_process_first():
            resolved = resolve_model(model_config.model_name)
        model, tokenizer = self._load_resolved(
            resolved,
            max_seq_length=model_config.max_seq_length,
            load_in_4bit=want_4bit(model_config.load_in_4bit),
            dtype=resolve_dtype(model_config.dtype),
            trust_remote_code=model_config.trust_remote_code,
        )
        return model, tokenizer

    def add_adapter(
        self, model: Any, lora: LoraSettings, seed: int, *, max_seq_length: int = 2048
    ) -> Any:
        """A new LoRA adapter on ``model``, initialised from ``seed``.

        Raises:
            UserError: A ``lora.target_modules`` entry matches no layer of the model.
        """
        try:
            return self._add_adapter(model, lora, seed=seed, max_seq_length=max_seq_length)
        except ValueError as exc:
            if "target" in str(exc).lower() and "module" in str(exc).lower():
                raise UserError(
                    f"lora.target_modules {list(lora.target_modules)} does not fit this model: {exc}"
                ) from exc
            raise

    def train(
        self,
        model: Any,
        tokenizer: Any,
        train_dataset: Any,
        eval_dataset: Any | None,
        *,
        model_config: ModelConfig,
        training: TrainingConfig,
        output_dir: str | os.PathLike[str],
        resume_from_checkpoint: str | bool | None = None,
        callbacks: Sequence[Any] = (),
    ) -> Any:
        """Run TRL's ``SFTTrainer`` on prompt-completion datasets; returns the trainer.

        Args:
            model: A PEFT model from :meth:`add_adapter`.
            tokenizer: Its tokenizer.
            train_dataset: A ``datasets.Dataset`` with ``prompt`` and ``completion`` columns.
            eval_dataset: The same for validation loss, or ``None``.
            model_config: For ``max_seq_length`` and the compute dtype.
            training: The optimisation settings.
            output_dir: Where checkpoints go.
            resume_from_checkpoint: A checkpoint directory to continue from, or ``None``.
            callbacks: Extra ``transformers.TrainerCallback`` objects.

        With validation data, a fresh run first logs the base model's validation loss (step 0).
        """
        trainer = build_trainer(
            model,
            tokenizer,
            train_dataset,
            eval_dataset,
            model_config=model_config,
            training=training,
            output_dir=output_dir,
            callbacks=callbacks,
            evaluate_first=not resume_from_checkpoint,
        )
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        return trainer

    # -- inference -------------------------------------------------------------------------------
    def load_for_inference(
        self,
        path: str | os.PathLike[str],
        *,
        load_in_4bit: bool = False,
        dtype: str = "auto",
        adapter: bool = True,
    ) -> tuple[Any, Any]:
        """Load a trained adapter directory, a merged model, or any model source, for generation.

        Args:
            path: A directory written by :class:`~productdesc.finetune.LoraFineTuner` (its
                ``adapter_config.json`` names the base, resolved through
                :func:`~productdesc.models.resolve_model`), a merged or plain model
                directory, or any other model source (Hub id, ``.gguf`` file, ``"smollm2-135m"``).
            load_in_4bit: Load the base in 4-bit NF4 (CUDA only; ignored with a warning on CPU).
            dtype: A :data:`~productdesc.config.DTYPES` name.
            adapter: ``False`` loads only the base model (for base-versus-tuned comparisons),
                with the adapter directory's tokenizer.

        Returns:
            ``(model, tokenizer)``: the model in eval mode, the tokenizer with a pad distinct
            from EOS.

        Raises:
            ModelNotAvailableError: The base model cannot be found or downloaded.
            UserError: The adapter config is unreadable or names no base model.
        """
        path = Path(path).expanduser()
        options = dict(
            max_seq_length=2048,  # only Unsloth reads it, for its RoPE scaling; 2048 is its default
            load_in_4bit=want_4bit(load_in_4bit),
            dtype=resolve_dtype(dtype),
            trust_remote_code=False,
        )
        if not has_adapter(path):
            return self._eval(*self._load_resolved(resolve_model(path), **options))

        model, tokenizer = self._load_resolved(resolve_model(adapter_base(path)), **options)
        if any(path.glob("tokenizer*.json")):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
            ensure_distinct_pad(tokenizer, model)
        if adapter:
            with _weights_errors(path):
                model = self._attach_adapter(model, path)
        return self._eval(model, tokenizer)

    def prepare_for_inference(self, model: Any) -> Any:
        """Switch ``model`` to its fastest generation mode (eval mode here)."""
        model.eval()
        return model

    def save_merged(
        self,
        adapter_dir: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        *,
        dtype: str = "auto",
    ) -> Path:
        """Merge a saved adapter into an unquantized copy of its base and save it (safetensors).

        The base is reloaded in ``dtype`` (``"auto"``: 16-bit on GPU, float32 on CPU) without
        4-bit quantization, since LoRA weights cannot be merged into 4-bit blocks. The directory
        is written beside ``output_dir`` and renamed into place.
        """
        output_dir = Path(output_dir)
        model, tokenizer = self.load_for_inference(adapter_dir, dtype=dtype)
        merged = model.merge_and_unload()
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
        tmp.chmod(0o755)
        try:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if output_dir.exists():
                shutil.rmtree(output_dir)
            os.rename(tmp, output_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("merged model written to %s", output_dir)
        return output_dir

    # -- shared steps ----------------------------------------------------------------------------
    def _load_resolved(self, resolved: ResolvedModel, **options: Any) -> tuple[Any, Any]:
        with loading_errors(resolved), _weights_errors(Path(resolved.path)):
            model, tokenizer = self._load(resolved.path, **options)
        ensure_distinct_pad(tokenizer, model)
        return model, tokenizer

    @staticmethod
    def _eval(model: Any, tokenizer: Any) -> tuple[Any, Any]:
        model.eval()
        return model, tokenizer


@contextlib.contextmanager
def _weights_errors(directory: Path) -> Iterator[None]:
    """An unreadable ``.safetensors`` file in ``directory`` as one error that names the file.

    safetensors reports a truncated, empty or corrupt file (an interrupted copy or download)
    deep in the loader, without its name; this finds which file it was.

    Raises:
        UserError: A weights file of ``directory`` cannot be read.
    """
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        raise UserError(
            f"{_unreadable_weights(directory) or directory} is not a readable safetensors file "
            f"({exc}): it is truncated, empty or corrupt; copy or download it again, or retrain"
        ) from None


def _unreadable_weights(directory: Path) -> Path | None:
    from safetensors import SafetensorError, safe_open

    for path in sorted(directory.glob("*.safetensors")) if directory.is_dir() else ():
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except SafetensorError:
            return path
    return None


def get_backend(name: str = "auto") -> Backend:
    """A backend object by registry name; ``"auto"`` is Unsloth when installed, else transformers.

    Creating the Unsloth backend imports ``unsloth``, which patches transformers, TRL and PEFT
    for the whole process; call this before anything else imports transformers.

    Raises:
        UserError: An unknown name (the message lists the known ones), or a backend whose
            libraries are not installed.
    """
    if name == "auto":
        unsloth = backends.get("unsloth") if "unsloth" in backends else None
        if unsloth is not None and unsloth.is_available():
            try:
                return unsloth()
            except ImportError as exc:
                logger.warning(
                    "unsloth is installed but failed to import (%s); using transformers", exc
                )
        name = "transformers"
    try:
        cls = backends.get(name)
    except PluginError as exc:
        raise UserError(f"backend: {exc}") from None
    if not cls.is_available():
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"backend {name!r} needs {', '.join(missing)}, not installed here: "
                f"pip install {' '.join(missing)}"
            )
        raise UserError(
            f"backend {name!r} is not installed here; install it (for unsloth: "
            f"pip install 'productdesc[unsloth]') or set backend = 'transformers'"
        )
    return cls()
