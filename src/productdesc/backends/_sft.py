"""TRL ``SFTTrainer`` set up from a :class:`~productdesc.config.TrainingConfig`, CPU included.

Both built-in backends train through :func:`build_trainer`. Its imports of TRL and the
rest of the stack happen when training starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from productdesc import distributed
from productdesc.backends._device import resolve_dtype
from productdesc.errors import UserError
from productdesc.rundir import LOGS

if TYPE_CHECKING:  # pragma: no cover
    from productdesc.config import ModelConfig, TrainingConfig

logger = logging.getLogger(__name__)


def sft_config(
    training: TrainingConfig,
    model_config: ModelConfig,
    output_dir: str | os.PathLike[str],
    *,
    has_eval: bool,
    evaluate_first: bool = False,
) -> Any:
    """The ``trl.SFTConfig`` for a run: the config's values plus what this machine can do.

    ``evaluate_first`` adds a validation loss at step 0, the base to compare the run with.
    """
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    dtype = resolve_dtype(model_config.dtype)
    optim = training.optim
    if "8bit" in optim and not cuda:
        # bitsandbytes' 8-bit optimizers are for GPU memory; on CPU they only slow things down.
        logger.info("optim %r needs a CUDA GPU; using adamw_torch on CPU", optim)
        optim = "adamw_torch"
    eval_strategy = ("steps" if training.eval_steps else "epoch") if has_eval else "no"
    # Early stopping keeps the best adapter, so a checkpoint must exist at every validation.
    keep_best = has_eval and training.early_stopping_patience is not None
    if keep_best:
        save_strategy, save_steps = eval_strategy, training.eval_steps
    else:
        save_strategy = "steps" if training.save_steps else "no"
        save_steps = training.save_steps
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_train_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        warmup_steps=training.warmup_steps,
        num_train_epochs=training.num_train_epochs,
        max_steps=training.max_steps if training.max_steps is not None else -1,
        learning_rate=training.learning_rate,
        max_grad_norm=training.max_grad_norm,
        optim=optim,
        weight_decay=training.weight_decay,
        lr_scheduler_type=training.lr_scheduler_type,
        # transformers 5 replaced group_by_length with a sampler choice; packed rows are all
        # max_length long, so grouping them means nothing.
        train_sampling_strategy=(
            "group_by_length" if training.group_by_length and not training.packing else "random"
        ),
        packing=training.packing,
        completion_only_loss=training.completion_only_loss,
        # TRL's default is 1024: without this, longer examples would be cut silently.
        max_length=model_config.max_seq_length,
        seed=training.seed,
        data_seed=training.seed,
        logging_steps=training.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=training.eval_steps,
        eval_on_start=has_eval and evaluate_first,
        save_strategy=save_strategy,
        save_steps=save_steps or 500,
        save_total_limit=training.save_total_limit,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        dataloader_num_workers=training.dataloader_num_workers,
        # Under DDP: every LoRA weight of a dense model gets a gradient every step, so DDP need
        # not search the graph for unused ones (the Trainer's default for a PEFT model), a
        # search that also breaks reentrant gradient checkpointing (4-bit bases use it).
        ddp_find_unused_parameters=False,
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda,
        # Adds train_tokens_per_second (padding excluded) to every log line.
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=True,  # only the validation loss is wanted; skip gathering logits
        report_to=report_to_names(training.report_to),
    )


# pip packages of the trackers transformers can tell are installed (get_available_reporting_
# integrations); another name transformers knows is passed on unchecked.
_TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
    "comet_ml": "comet_ml",
    "neptune": "neptune",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "codecarbon": "codecarbon",
    "dagshub": "dagshub",
}


def report_to_names(report_to: str | Sequence[str]) -> str | list[str]:
    """``training.report_to`` as ``SFTConfig`` takes it, checked against what transformers knows
    and has installed, so that a typo or a missing package is one line before training.

    Raises:
        UserError: A name transformers has no integration for, or whose package is missing.
    """
    if report_to in ("none", "all"):
        return report_to
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise UserError(
            f"training.report_to: transformers has no integration named "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
        )
    available = set(get_available_reporting_integrations())
    missing = [n for n in names if n in _TRACKER_PACKAGES and n not in available]
    if missing:
        packages = " ".join(_TRACKER_PACKAGES[n] for n in missing)
        raise UserError(
            f"training.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not installed: pip install {packages}"
        )
    return names


def trainer_class() -> type:
    """``trl.SFTTrainer`` (Unsloth's patched one when unsloth was imported), made to train on CPU.

    TRL 1.15 computes the loss with a fused LM head that only has a Triton (GPU) kernel; on CPU
    the subclass computes it as ``transformers.Trainer`` does, from the full logits: the same
    token-averaged cross-entropy. Unsloth's patched trainer has its own CPU loss and is kept.

    A run resumed from the checkpoint of its last step trains no further step (transformers
    would train one more before it checks ``max_steps``).

    Its length-grouped sampler (``group_by_length``) draws each epoch's order from the data
    seed and the epoch (:func:`epoch_seeded_length_sampler`), so that a resumed run sees the
    batches the uninterrupted one saw.
    """
    import torch
    import transformers
    import trl
    from transformers.trainer_pt_utils import LengthGroupedSampler

    base = trl.SFTTrainer
    plain_loss = not torch.cuda.is_available() and base.compute_loss.__module__.startswith("trl.")

    class SFTTrainer(base):
        def _run_epoch(self, *args, **kwargs):
            # Resumed from the checkpoint of the last step (a run killed while writing its
            # adapter), transformers would still train the step after it before its stop
            # check: the adapter would differ from the uninterrupted run's. Nothing is left.
            if self.state.global_step >= self.state.max_steps:
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if type(sampler) is LengthGroupedSampler:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                return epoch_seeded_length_sampler(sampler, seed)
            return sampler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if plain_loss:
                # No KV cache, as TRL's own loss does: transformers only separates packed
                # examples (from position_ids) when there is none, else they attend across.
                return transformers.Trainer.compute_loss(
                    self,
                    model,
                    {**inputs, "use_cache": False},
                    return_outputs=return_outputs,
                    num_items_in_batch=num_items_in_batch,
                )
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    SFTTrainer.__qualname__ = f"productdesc.{base.__qualname__}"
    return SFTTrainer


def epoch_seeded_length_sampler(sampler: Any, seed: int) -> Any:
    """``sampler`` (transformers' ``LengthGroupedSampler``) with epoch ``e``'s order drawn from
    a generator seeded ``seed + e``, as accelerate's seedable random sampler does for shuffling.

    transformers builds its ``LengthGroupedSampler`` without a generator, so each epoch's
    permutation comes from torch's global RNG as the run has left it at that epoch's start:
    after dropout and everything else that drew from it. A run resumed in a later epoch
    restores the RNG of its checkpoint only after it has drawn that epoch's order (from its
    own, fresh RNG), so from the kill on it trained on other batches (issue 20 item 7).
    Epoch 0 happened to match: both processes drew it right after seeding. The Trainer calls
    ``set_epoch`` before each epoch, on a resumed one too, through accelerate's data loader.
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.seed = seed
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            return iter(
                get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
            )

    return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)


def build_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any | None,
    *,
    model_config: ModelConfig,
    training: TrainingConfig,
    output_dir: str | os.PathLike[str],
    callbacks: Sequence[Any] = (),
    evaluate_first: bool = False,
) -> Any:
    """An ``SFTTrainer`` ready to ``train()``; logs how many examples hit ``max_seq_length``.

    Raises:
        UserError: ``training.early_stopping_patience`` is set but there is no validation data.
    """
    from transformers.trainer_callback import EarlyStoppingCallback, ProgressCallback

    patience = training.early_stopping_patience
    if patience is not None:
        if eval_dataset is None:
            raise UserError(
                "training.early_stopping_patience needs validation data: prepare with a "
                "validation split (--split 80/10/10) or pass eval_data"
            )
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=patience)]

    if distributed.is_main_process():  # every rank has the same data; one report is enough
        _report_overlong(tokenizer, train_dataset, model_config.max_seq_length)
    args = sft_config(
        training,
        model_config,
        output_dir,
        has_eval=eval_dataset is not None,
        evaluate_first=evaluate_first,
    )
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(progress_callback())
    _log_tensorboard_to(trainer, Path(output_dir).parent / LOGS)
    return trainer


def _log_tensorboard_to(trainer: Any, logs: Path) -> None:
    """TensorBoard's event files into ``logs`` (the run's ``logs/``; checkpoints go beside it
    in ``checkpoints/``), not transformers' default ``checkpoints/runs/DATE_HOST``: one folder
    for ``tensorboard --logdir``, which a resumed run appends to, hiding the killed run's
    steps after its checkpoint. ``TENSORBOARD_LOGGING_DIR``, when set, still wins."""
    from transformers.integrations import TensorBoardCallback

    class RunTensorBoard(TensorBoardCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self.tb_writer is None and state.global_step:
                # Resumed at step T: a START mark makes TensorBoard drop what the killed run
                # logged from step T + 1 on, which this run logs again.
                self.tb_writer = self._SummaryWriter(
                    log_dir=self.logging_dir, purge_step=state.global_step + 1
                )
            super().on_train_begin(args, state, control, **kwargs)

    if trainer.pop_callback(TensorBoardCallback) is not None:
        callback = RunTensorBoard()
        callback.logging_dir = callback.logging_dir or str(logs)
        trainer.add_callback(callback)


def _report_overlong(tokenizer: Any, pairs: Any, max_length: int, chunk: int = 1000) -> None:
    """Log how many prompt-completion pairs TRL will cut at ``max_length`` (packed or not)."""
    cut = 0
    for start in range(0, len(pairs), chunk):
        rows = pairs[start : start + chunk]
        texts = [p + c for p, c in zip(rows["prompt"], rows["completion"], strict=True)]
        cut += sum(len(ids) > max_length for ids in tokenizer(texts)["input_ids"])
    if cut:
        logger.warning(
            "%d of %d training examples are longer than max_seq_length=%d and are cut there: "
            "their ends, EOS included, are not learned (raise model.max_seq_length to keep them)",
            cut,
            len(pairs),
            max_length,
        )


def progress_callback() -> Any:
    """Trainer's tqdm bar (progress, ETA), with one short line per log instead of a dict."""
    from transformers.trainer_callback import ProgressCallback

    class ProgressLines(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                line = format_log(logs, state.global_step, state.max_steps)
                if line:
                    self.training_bar.write(line)

    return ProgressLines()


def format_log(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """``step 10/60  loss 2.314  eval_loss 2.402  lr 1.8e-04  1530 tokens/s``; ``""`` if no loss."""
    if "loss" not in logs and "eval_loss" not in logs and "train_loss" not in logs:
        return ""
    parts = [f"step {step}/{max_steps}"]
    for key in ("loss", "eval_loss", "train_loss"):
        if key in logs:
            parts.append(f"{key} {logs[key]:.4f}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if "train_tokens_per_second" in logs:
        parts.append(f"{logs['train_tokens_per_second']:.0f} tokens/s")
    return "  ".join(parts)
