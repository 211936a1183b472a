"""LoRA fine-tuning: a config, a backend and product records in; an adapter directory out.

>>> from productdesc import FineTuneConfig, LoraFineTuner  # doctest: +SKIP
>>> config = FineTuneConfig.from_toml("run.toml")  # doctest: +SKIP
>>> result = LoraFineTuner(config).train("prepared/", output_dir="runs/first")  # doctest: +SKIP
>>> result.eval_loss  # doctest: +SKIP

What a run writes into ``output_dir``:

=============================  ================================================================
``adapter_model.safetensors``  the LoRA adapter, with ``adapter_config.json`` (its base model
                               as named in the config, so it resolves on another machine)
tokenizer files                the tokenizer trained with (pad distinct from EOS)
``productdesc_config.toml``    the exact :class:`~productdesc.config.FineTuneConfig` used
``loss_history.json``          one entry per logged step (see :func:`loss_history`)
``loss.png``                   the loss curve (needs matplotlib)
``README.md``                  a model card: base, data counts, final losses, config
``checkpoints/``               ``checkpoint-N`` every ``training.save_steps`` (for resuming)
``merged/``                    with ``merge=True``: the adapter merged into an unquantized base
``logs/``                      with ``training.report_to = "tensorboard"``: its event files
=============================  ================================================================

:meth:`~productdesc.generation.describer.Describer.from_pretrained` loads ``output_dir`` (or ``merged/``).

With the ``unsloth`` or ``auto`` backend, creating a :class:`LoraFineTuner` imports unsloth,
which must come before transformers, trl and peft in the process: create it first.

The same code runs data-parallel under ``torchrun --nproc-per-node N`` or ``accelerate launch``
(or ``productdesc train --nproc N``): every process builds the same examples, the Trainer gives
each its share of every step's batch (DDP), and only rank 0 writes the outputs above and logs.
One optimizer step then takes N x ``per_device_train_batch_size`` x
``gradient_accumulation_steps`` rows. See :mod:`productdesc.distributed`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from productdesc import distributed
from productdesc._io import (
    atomic_write,
    write_text_atomic,
)
from productdesc.backends import checkpointing, get_backend
from productdesc.backends._sft import report_to_names
from productdesc.card import batch_note, model_card
from productdesc.config import FineTuneConfig
from productdesc.data.dataset import AmazonTitlesDataset
from productdesc.errors import UserError
from productdesc.models import resolve_model
from productdesc.plotting import plot_loss
from productdesc.prompts import get_template
from productdesc.prompts.context import bind_retriever

# The run directory's names, re-exported here where code and tests have long imported them.
from productdesc.run_output import ADAPTER_SCRATCH, locked_run_dir, prepare_output_dir
from productdesc.rundir import (
    ADAPTER_CONFIG,
    CARD_FILE,
    CHECKPOINTS,
    CONFIG_FILE,
    HISTORY_FILE,
    MERGED,
    PLOT_FILE,
)
from productdesc.train_result import TrainResult

__all__ = ["LoraFineTuner", "TrainResult", "loss_history"]

logger = logging.getLogger(__name__)


class LoraFineTuner:
    """Fine-tune a causal LM with LoRA on product records, as a :class:`FineTuneConfig` says.

    Creating the tuner picks the backend (importing unsloth for ``"unsloth"``/``"auto"``); the
    model loads on :meth:`load` or :meth:`train`. The tokenizer-dependent checks happen there:
    the template must be renderable with the tokenizer and its EOS must be one token of the
    vocabulary, or the model could not learn to stop.

    Args:
        config: The run's configuration (``None``: the defaults, the seed's recipe).
        retriever: For a template that shows context (``template = "context"``): the retrieval
            index its neighbours come from, or its directory (see
            :func:`productdesc.retrieval.store.open_index`). ``None``: the prepared training data's
            index (``DATA/retrieval``, else its train split indexed in memory).

    Attributes:
        config: The configuration.
        backend: The :class:`~productdesc.backends.base.Backend` object.
        model: The PEFT model, after :meth:`load` (trained after :meth:`train`).
        tokenizer: Its tokenizer, after :meth:`load`.
        template: The prompt template bound to the tokenizer, after :meth:`load`.
    """

    def __init__(self, config: FineTuneConfig | None = None, *, retriever: Any = None) -> None:

        if config is None:
            config = FineTuneConfig()
        if not isinstance(config, FineTuneConfig):
            raise TypeError(f"config must be a FineTuneConfig, not {type(config).__name__}")
        self.config = config
        self.backend = get_backend(config.backend)  # first: unsloth must precede transformers
        self.model: Any = None
        self.tokenizer: Any = None
        self.template: Any = None
        self.retriever = retriever
        self._trained = False

    # -- steps -----------------------------------------------------------------------------------
    def load(self) -> tuple[Any, Any]:
        """Load the base model, check the tokenizer against the template, add a new adapter.

        Returns:
            ``(model, tokenizer)``; also kept as :attr:`model` and :attr:`tokenizer`.

        Raises:
            ModelNotAvailableError: The base model cannot be found or downloaded.
            UserError: The template does not fit the tokenizer (the message names the field).
        """
        config = self.config
        model, tokenizer = self.backend.load_model(config.model)
        self.template = self._template_for(tokenizer)
        lora = attrs.evolve(
            config.lora,
            use_gradient_checkpointing=checkpointing.choose(
                config.lora.use_gradient_checkpointing,
                model,
                config.training.per_device_train_batch_size * config.model.max_seq_length,
            ),
        )
        self.model = self.backend.add_adapter(
            model, lora, config.training.seed, max_seq_length=config.model.max_seq_length
        )
        self.tokenizer = tokenizer
        return self.model, self.tokenizer

    def datasets(self, train_data: Any, eval_data: Any = None) -> tuple[Any, Any | None]:
        """Prompt-completion ``datasets.Dataset`` objects for training and validation.

        Records become pairs through the config's template, which needs the tokenizer: the
        model is loaded first (:meth:`load`) if it is not yet.

        Args:
            train_data: A prepared directory (its ``train`` split; its ``validation`` split is
                the default validation data), an iterable of records (mappings with ``title``
                and ``content``) or of ready pairs (``prompt`` and ``completion``), or a
                ``datasets.Dataset`` with either pair of columns.
            eval_data: The same kinds, for validation loss; ``None``: a prepared directory's
                ``validation`` split, else no validation.

        Raises:
            UserError: No training examples, or rows without the needed fields.
        """
        train_ds, eval_ds, _ = self._datasets(train_data, eval_data)
        return train_ds, eval_ds

    def train(
        self,
        train_data: Any,
        eval_data: Any = None,
        *,
        output_dir: str | os.PathLike[str],
        resume_from_checkpoint: str | os.PathLike[str] | bool | None = None,
        merge: bool = False,
        overwrite: bool = False,
        callbacks: Sequence[Any] = (),
    ) -> TrainResult:
        """Train an adapter and write it, with its config, losses, plot and card, to ``output_dir``.

        Under ``torchrun`` or ``accelerate launch``, call it on every process with the same
        arguments: each trains its share of the data, rank 0 alone writes ``output_dir``, and
        every process returns the same result once the outputs are complete.

        Args:
            train_data: See :meth:`datasets`.
            eval_data: See :meth:`datasets`.
            output_dir: Where the outputs go (see the module docs). Must be new or empty,
                unless resuming there or ``overwrite`` is set.
            resume_from_checkpoint: ``True``: continue the run in ``output_dir`` from its
                latest complete checkpoint (after a crash or a kill); a path: from that
                checkpoint. The config must be the one the run was started with; the number of
                processes may differ.
            merge: Also write the adapter merged into an unquantized base to ``output_dir/merged``.
            overwrite: Allow a non-empty ``output_dir`` (a previous run's checkpoints, merged
                model and logs there are deleted first).
            callbacks: Extra ``transformers.TrainerCallback`` objects.

        Raises:
            OutputDirError: ``output_dir`` holds something else, or a run with another config.
            UserError: Bad data, a template that does not fit the model, nothing to resume.
            ModelNotAvailableError: The base model cannot be found or downloaded.
        """
        out = Path(output_dir)
        # Locked from the first look at ``out`` to the last write, and released when the run
        # returns or raises: a second run into ``out`` meanwhile fails at once in one line
        # instead of both passing the checks and one silently replacing the other's outputs.
        with locked_run_dir(out, create=not resume_from_checkpoint):
            return self._train(
                out, train_data, eval_data, resume_from_checkpoint, merge, overwrite, callbacks
            )

    def _train(
        self,
        out: Path,
        train_data: Any,
        eval_data: Any,
        resume_from_checkpoint: str | os.PathLike[str] | bool | None,
        merge: bool,
        overwrite: bool,
        callbacks: Sequence[Any],
    ) -> TrainResult:
        """The run in named steps: set up, fit, save, describe."""

        report_to_names(self.config.training.report_to)  # a tracker's typo: before any load
        data_note = _describe_data(train_data)
        checkpoint = prepare_output_dir(out, resume_from_checkpoint, overwrite, self._run_config())
        if self._trained:
            self.load()  # a second run starts from a fresh adapter, not the last one's
        train_ds, eval_ds, manifest = self._datasets(train_data, eval_data)
        self._announce(out, train_ds, eval_ds)
        started = time.perf_counter()
        trainer = self._fit(out, train_ds, eval_ds, checkpoint, callbacks)
        runtime = time.perf_counter() - started
        history = loss_history(trainer.state.log_history)  # the same on every rank
        merged = self._save(out, history, merge)
        examples = len(train_ds), len(eval_ds) if eval_ds is not None else 0
        world = distributed.world_size()
        result = TrainResult.of_trainer(
            trainer, history, out, merged, self.backend.name, runtime, examples, world
        )
        if distributed.is_main_process():
            write_text_atomic(
                out / CARD_FILE,
                model_card(self.config, result, data_note, manifest, self._run_config()),
            )
            logger.info("done: %s; adapter in %s", result.summary(), out)
        distributed.barrier()  # no rank returns before the outputs are complete
        return result

    def _announce(self, out: Path, train_ds: Any, eval_ds: Any) -> None:
        """Write the run's config (main process) and say what is about to train."""
        if not distributed.is_main_process():
            return
        self._run_config().to_toml(out / CONFIG_FILE)
        logger.info(
            "training %s on %d examples (%d for validation) with the %s backend; %s",
            self.config.model.model_name,
            len(train_ds),
            len(eval_ds) if eval_ds is not None else 0,
            self.backend.name,
            batch_note(self.config.training, distributed.world_size()),
        )

    def _fit(
        self, out: Path, train_ds: Any, eval_ds: Any, checkpoint: str | None, callbacks: Any
    ) -> Any:
        """Train with the backend; evaluate once more where the last step logged no validation
        loss. Returns the trainer."""
        trainer = self.backend.train(
            self.model,
            self.tokenizer,
            train_ds,
            eval_ds,
            model_config=self.config.model,
            training=self.config.training,
            output_dir=out / CHECKPOINTS,
            resume_from_checkpoint=checkpoint,
            callbacks=callbacks,
        )
        step = trainer.state.global_step
        if eval_ds is not None and not any(
            "eval_loss" in e and e.get("step") == step for e in trainer.state.log_history
        ):
            trainer.evaluate()  # the final validation loss, whatever eval_steps was
        self.model = trainer.model  # the PEFT model itself, not its DDP wrapper
        self._trained = True
        return trainer

    def _save(self, out: Path, history: list[dict[str, Any]], merge: bool) -> Path | None:
        """The adapter, the loss history and its plot, and the merged model when asked (main
        process); returns where the merged model is."""
        merged = out / MERGED if merge else None
        if distributed.is_main_process():
            self._save_adapter(out)
            write_text_atomic(out / HISTORY_FILE, json.dumps(history, indent=1) + "\n")
            _plot(history, out / PLOT_FILE)
            if merged is not None:  # in the dtype it trained in, not a wider one
                self.backend.save_merged(out, merged, dtype=self.config.model.dtype)
        return merged

    # -- helpers -----------------------------------------------------------------------------------
    def _template_for(self, tokenizer: Any) -> Any:

        name = self.config.template
        try:
            template = get_template(name, tokenizer=tokenizer, **self.config.template_options)
        except UserError as exc:
            raise UserError(f"template = {name!r} does not fit this model: {exc}") from None
        eos = template.eos_token
        ids = tokenizer(eos, add_special_tokens=False)["input_ids"]
        if ids != [tokenizer.eos_token_id]:
            raise UserError(
                f"template = {name!r} ends answers with {eos!r}, which this tokenizer encodes as "
                f"{ids}, not as its single EOS id {tokenizer.eos_token_id}: the model could not "
                f"learn to stop. Fix the tokenizer's eos_token, or change model.model_name"
            )
        if tokenizer.pad_token_id == tokenizer.eos_token_id:  # the backends prevent this
            raise UserError("the tokenizer pads with EOS, so EOS labels would be masked")
        return template

    def _datasets(self, train_data: Any, eval_data: Any) -> tuple[Any, Any | None, Any]:
        train_rows, prepared = _rows(train_data, "train")
        if eval_data is None and prepared is not None and prepared.splits.get("validation"):
            eval_rows: Any = prepared.iter_split("validation")
        else:
            eval_rows = _rows(eval_data, "validation")[0] if eval_data is not None else None
        if self.template is None:
            self.load()
        # Context templates (issue 9) get their index here; leave-one-out is the template's job.

        default = prepared.directory if prepared is not None else None
        self.template = bind_retriever(self.template, self.retriever, default=default)
        train_ds = self._pairs_dataset(train_rows)
        if train_ds is None:
            raise UserError(f"no training examples in {_describe_data(train_data)}")
        eval_ds = self._pairs_dataset(eval_rows) if eval_rows is not None else None
        return train_ds, eval_ds, prepared.manifest if prepared is not None else None

    def _pairs_dataset(self, rows: Any) -> Any | None:
        import datasets

        if isinstance(rows, datasets.Dataset):
            columns = set(rows.column_names)
            if {"prompt", "completion"} <= columns:
                pairs = rows.select_columns(["prompt", "completion"])
                return pairs if len(pairs) else None
            if not {"title", "content"} <= columns:
                raise UserError(
                    f"a dataset for training needs columns title and content (records) or "
                    f"prompt and completion (pairs); it has {', '.join(sorted(columns))}"
                )
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return None
        if not isinstance(first, Mapping):
            raise UserError(
                f"training data must yield mappings (records with title and content), got "
                f"{type(first).__name__}"
            )
        rows = _chain(first, rows)
        if "prompt" in first and "completion" in first:
            pairs = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
        else:
            pairs = list(
                self.template.training_pairs(
                    rows, question_share=self.config.question_share, seed=self.config.training.seed
                )
            )
        return datasets.Dataset.from_list(pairs)

    def _run_config(self) -> FineTuneConfig:
        """The config as the run directory records it: the backend that trained, not
        ``"auto"``, so that loading the run later picks the same one."""
        return attrs.evolve(self.config, backend=self.backend.name)

    def _save_adapter(self, out: Path) -> None:

        # Written in a scratch directory, then each file renamed into place: a reader (or a
        # crash) never sees a half-written adapter under its final name.
        tmp = Path(tempfile.mkdtemp(prefix=f".{ADAPTER_SCRATCH}.", dir=out))
        try:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            # The prompt trained on becomes the tokenizer's chat template (None: the template
            # is the tokenizer's own), so chat endpoints serving run/, merged/ (its tokenizer
            # is this one) and the GGUF (written from merged/) prompt as training did.
            chat_template = self.template.chat_template()
            if chat_template is not None:
                self.tokenizer.chat_template = chat_template
            self.tokenizer.save_pretrained(str(tmp))
            (tmp / CARD_FILE).unlink(missing_ok=True)  # PEFT's placeholder card; ours follows
            # A base that PEFT's AutoPeftModel loads: a Hub id, or a model directory (for a
            # GGUF or embedded base, its converted safetensors copy). The run's config keeps
            # the name as given, which productdesc falls back to where that path is missing.
            adapter_config = tmp / ADAPTER_CONFIG
            settings = json.loads(adapter_config.read_text(encoding="utf-8"))
            base = resolve_model(self.config.model.model_name)
            kept = base.path if base.kind in ("gguf", "embedded") else base.source
            settings["base_model_name_or_path"] = kept
            adapter_config.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
            for path in tmp.iterdir():
                os.replace(path, out / path.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- data --------------------------------------------------------------------------------------
def _rows(data: Any, split: str) -> tuple[Any, Any]:
    """``(rows, prepared)``: a prepared directory's split and the directory, or ``data`` itself."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_dir():
            raise UserError(f"training data not found: {path} is not a directory")
        prepared = AmazonTitlesDataset.from_prepared(path)
        return prepared.iter_split(split), prepared
    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise UserError(
            f"training data must be a prepared directory, an iterable of records or a "
            f"datasets.Dataset, not {type(data).__name__}"
        )
    return data, None


def _describe_data(data: Any) -> str:
    if isinstance(data, (str, os.PathLike)):
        return f"prepared data in `{data}`"
    return f"{type(data).__name__} given in code"


def _chain(first: Any, rest: Iterable[Any]) -> Iterable[Any]:
    yield first
    yield from rest


# -- outputs -----------------------------------------------------------------------------------
def loss_history(log_history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The trainer's ``log_history`` reduced to one entry per logged step, in step order.

    Each entry has ``step`` and ``epoch``, and those of ``loss`` (training loss),
    ``eval_loss`` (validation loss), ``learning_rate``, ``grad_norm`` and
    ``tokens_per_second`` (non-padding tokens per second since the start of this process's
    training) that were logged at that step. Steps where only validation ran have no ``loss``.
    """
    renames = {
        "loss": "loss",
        "eval_loss": "eval_loss",
        "learning_rate": "learning_rate",
        "grad_norm": "grad_norm",
        "train_tokens_per_second": "tokens_per_second",
    }
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "loss" not in entry and "eval_loss" not in entry:
            continue  # the end-of-training summary and other bookkeeping
        row = by_step.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        if entry.get("epoch") is not None:
            row["epoch"] = float(entry["epoch"])
        for key, name in renames.items():
            if key in entry:
                row[name] = float(entry[key])
    return [by_step[step] for step in sorted(by_step)]


def _plot(history: list[dict[str, Any]], path: Path) -> None:

    try:
        png = plot_loss(history)
    except ImportError:
        logger.warning("matplotlib is not installed; no %s (pip install matplotlib)", path.name)
        return
    if png is not None:
        with atomic_write(path, "wb") as fh:
            fh.write(png)
