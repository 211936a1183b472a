"""Frozen configuration for fine-tuning and generation: what to do, not how.

As TRL splits ``SFTConfig`` from ``SFTTrainer``, these classes only say *what* a run does;
:class:`~productdesc.finetune.LoraFineTuner` and :class:`~productdesc.generation.describer.Describer` do it.
Every field is validated at construction and a bad value names the field. Change a config with
:func:`attrs.evolve` or, by dotted name, :meth:`FineTuneConfig.with_overrides`; load it from
TOML or YAML with :meth:`FineTuneConfig.from_file` and save it with
:meth:`FineTuneConfig.to_toml`.

The defaults are the seed notebook's recipe (TinyLlama chat in 4-bit, LoRA r=16 on every
projection, ``adamw_8bit``, lr 2e-4) but for packed batches and a response-only loss (see
:class:`TrainingConfig`); :meth:`FineTuneConfig.seed_recipe` is the seed's recipe exactly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs
from attrs import field, frozen
from attrs import validators as v

from productdesc._io import write_text_atomic
from productdesc.config.fields import (
    ALL_PROJECTIONS,
    DTYPES,
    OFF,
    Dtype,
    _finite,
    _gradient_checkpointing,
    _is_length_penalty,
    _is_report_to,
    _length_penalty,
    _non_negative,
    _not_bool,
    _off_to_none,
    _optional_positive,
    _positive,
    _report_to,
    _to_float,
    _to_tuple,
)
from productdesc.config.files import (
    YAML_SUFFIXES,
    _build,
    _reject_unknown,
    _yaml_error,
    _yaml_loader,
    read_config_file,
    toml_value,
)
from productdesc.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ALL_PROJECTIONS",
    "DTYPES",
    "OFF",
    "YAML_SUFFIXES",
    "Dtype",
    "FineTuneConfig",
    "GenerationConfig",
    "LoraSettings",
    "ModelConfig",
    "TrainingConfig",
    "read_config_file",
    "toml_value",
]


@frozen(kw_only=True)
class ModelConfig:
    """Which foundation model to load and how.

    Attributes:
        model_name: A Hub id (``unsloth/tinyllama-chat-bnb-4bit``), a local directory, a
            ``.gguf`` file, or an embedded model, ``"smollm2-135m"`` or ``"gemma3-270m"`` (see
            :data:`productdesc.models.EMBEDDED`).
        max_seq_length: Longest training sequence in tokens; longer texts are truncated and
            counted in the run's log.
        load_in_4bit: Load the base in 4-bit NF4 (QLoRA). Needs ``bitsandbytes``.
        dtype: ``"auto"`` picks bfloat16 on GPUs that support it, else float16 on GPU, and
            float32 on CPU.
        trust_remote_code: Allow the model repository's own Python code to run. Off unless you
            trust the source.
    """

    model_name: str = field(default="unsloth/tinyllama-chat-bnb-4bit", validator=v.min_len(1))
    max_seq_length: int = field(default=2048, validator=_positive())
    load_in_4bit: bool = field(default=True, validator=v.instance_of(bool))
    dtype: Dtype = field(default="auto", validator=v.in_(DTYPES))
    trust_remote_code: bool = field(default=False, validator=v.instance_of(bool))


@frozen(kw_only=True)
class LoraSettings:
    """The LoRA adapter (PEFT's ``LoraConfig`` / Unsloth's ``get_peft_model`` arguments).

    Attributes:
        r: Adapter rank.
        lora_alpha: Scaling numerator; the update is scaled by ``lora_alpha / r``.
        lora_dropout: Dropout on the adapter input; 0 lets Unsloth use its fast path.
        target_modules: Linear layers that get an adapter (a list, or a comma-separated string).
        bias: ``"none"``, ``"all"`` or ``"lora_only"``.
        use_gradient_checkpointing: ``"auto"`` (recompute only when the activations would not
            fit in the GPU's free memory; see :mod:`productdesc.backends.checkpointing`),
            ``"unsloth"`` (Unsloth's offloaded variant; plain checkpointing on the
            transformers backend), ``True`` or ``False``.
        use_rslora: Rank-stabilised LoRA scaling (``alpha / sqrt(r)``).
    """

    r: int = field(default=16, validator=_positive())
    lora_alpha: int = field(default=16, validator=_positive())
    lora_dropout: float = field(
        default=0.0, converter=_to_float, validator=[v.instance_of(float), v.ge(0.0), v.lt(1.0)]
    )
    target_modules: tuple[str, ...] = field(
        default=ALL_PROJECTIONS,
        converter=_to_tuple,
        validator=[v.min_len(1), v.deep_iterable(v.instance_of(str))],
    )
    bias: Literal["none", "all", "lora_only"] = field(
        default="none", validator=v.in_(("none", "all", "lora_only"))
    )
    use_gradient_checkpointing: bool | Literal["unsloth", "auto"] = field(
        default="auto",
        converter=_gradient_checkpointing,
        validator=v.in_((True, False, "unsloth", "auto")),
    )
    use_rslora: bool = field(default=False, validator=v.instance_of(bool))


@frozen(kw_only=True)
class TrainingConfig:
    """The optimisation (TRL ``SFTConfig`` arguments) and what the loss is computed on.

    The defaults differ from the seed's recipe (:meth:`FineTuneConfig.seed_recipe`) twice.
    Examples are *packed*, 8 rows of ``max_seq_length`` tokens a step, not 2 padded examples x
    22 accumulation steps: a step sees about as many tokens (16k vs the seed's ~11k) in one
    forward pass instead of 22, where a GPU's time went (docs/benchmarks.md); each example
    still attends only to itself. And the loss is on the response, not the whole text.

    Attributes:
        per_device_train_batch_size: Sequences per micro-batch (packed rows when ``packing``).
        gradient_accumulation_steps: Micro-batches per optimizer step
            (2 x 22 = 44 sequences a step in the seed recipe).
        warmup_steps: Linear warm-up steps.
        num_train_epochs: Epochs over the train split; ignored when ``max_steps`` is set.
        max_steps: Stop after this many optimizer steps (``None``, in TOML ``"off"``: run the
            epochs). Every optional field below is written ``"off"`` in TOML when ``None``.
        learning_rate: Peak learning rate.
        max_grad_norm: Gradient clipping norm.
        optim: A ``transformers`` optimizer name. ``adamw_8bit`` needs bitsandbytes and a GPU;
            on CPU the backends fall back to ``adamw_torch`` and log it.
        weight_decay: AdamW weight decay.
        lr_scheduler_type: A ``transformers`` scheduler name.
        group_by_length: Batch sequences of similar length together (less padding).
        packing: Pack several examples into one sequence, with per-example attention.
        completion_only_loss: Loss on the response tokens only (``False``: the whole text).
        seed: Seed for data order, LoRA init and dropout.
        logging_steps: Log the loss every this many steps.
        eval_steps: Validation loss every this many steps (``None``: once per epoch, and only
            when a validation split exists).
        early_stopping_patience: Stop when the validation loss has not improved for this many
            validations in a row, and keep the adapter of the best one (``None``: train to the
            end and keep the last). Needs validation data; checkpoints are then written at
            every validation (``save_steps`` follows ``eval_steps``).
        save_steps: Checkpoint every this many steps (``None``: no intermediate checkpoints).
        save_total_limit: Keep at most this many checkpoints.
        dataloader_num_workers: Worker processes for the data loader.
        report_to: Experiment trackers that get the losses, as transformers'
            ``TrainingArguments.report_to`` takes them: a name (``"tensorboard"``, ``"wandb"``,
            ``"mlflow"``, ``"trackio"``, ...), a list of names (in TOML a list, on the command
            line ``--report-to tensorboard,wandb``), ``"all"`` (every one installed) or
            ``"none"`` (the default: nothing reported). TensorBoard's event files go to the
            run's ``logs/`` folder (``tensorboard --logdir run/logs``) unless
            ``TENSORBOARD_LOGGING_DIR`` says otherwise; the others log where their own
            settings say.
    """

    per_device_train_batch_size: int = field(default=8, validator=_positive())
    gradient_accumulation_steps: int = field(default=1, validator=_positive())
    warmup_steps: int = field(default=5, validator=_non_negative())
    num_train_epochs: float = field(
        default=1.0, converter=_to_float, validator=[v.instance_of(float), v.gt(0.0), _finite]
    )
    max_steps: int | None = field(
        default=None, converter=_off_to_none, validator=v.optional([_not_bool, *_positive()])
    )
    learning_rate: float = field(
        default=2e-4, converter=_to_float, validator=[v.instance_of(float), v.gt(0.0)]
    )
    max_grad_norm: float = field(
        default=0.6, converter=_to_float, validator=[v.instance_of(float), v.gt(0.0)]
    )
    optim: str = field(default="adamw_8bit", validator=v.min_len(1))
    weight_decay: float = field(
        default=0.01, converter=_to_float, validator=[v.instance_of(float), v.ge(0.0)]
    )
    lr_scheduler_type: str = field(default="linear", validator=v.min_len(1))
    group_by_length: bool = field(default=True, validator=v.instance_of(bool))
    packing: bool = field(default=True, validator=v.instance_of(bool))
    completion_only_loss: bool = field(default=True, validator=v.instance_of(bool))
    seed: int = field(default=3407, validator=_non_negative())
    logging_steps: int = field(default=1, validator=_positive())
    eval_steps: int | None = field(default=None, **_optional_positive())
    early_stopping_patience: int | None = field(default=None, **_optional_positive())
    save_steps: int | None = field(default=100, **_optional_positive())
    save_total_limit: int | None = field(default=3, **_optional_positive())
    dataloader_num_workers: int = field(default=0, validator=_non_negative())
    report_to: str | tuple[str, ...] = field(
        default="none", converter=_report_to, validator=_is_report_to
    )


@frozen(kw_only=True)
class GenerationConfig:
    """Decoding settings for :class:`~productdesc.generation.describer.Describer`.

    The defaults are greedy decoding with a no-loop guard, chosen on held-out real records
    (``docs/results/answer-quality``): greedy alone makes a small tuned model repeat a
    phrase until the budget runs out. ``GenerationConfig(no_repeat_ngram_size=0)`` is plain
    greedy decoding (the seed's, with its ``max_new_tokens=128``).

    Attributes:
        max_new_tokens: Upper bound on generated tokens. The default, 384, is longer than 95%
            of the 600 real descriptions in ``../shared/data`` in SmolLM2's tokens (median
            104, 95th percentile 372), so an answer as long as a typical reference is not cut.
        min_new_tokens: Lower bound (benchmarks use it to fix the length).
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature (with ``do_sample``).
        top_p: Nucleus sampling mass (with ``do_sample``).
        top_k: Top-k sampling (with ``do_sample``; 0 disables).
        repetition_penalty: Penalty on repeated tokens (1.0: none). It also penalises the
            common words every description needs; ``no_repeat_ngram_size`` targets loops.
        no_repeat_ngram_size: Never repeat an n-gram of this many tokens within an answer's
            sequence, prompt included, as transformers defines it (0: off).
        exponential_decay_length_penalty: ``(start, factor)``: after ``start`` new tokens,
            EOS's score grows by ``factor`` a token (transformers' processor of that name), so
            an answer that would run past the budget ends near it instead (``None``: off). The
            default ended every held-out answer within the budget (95% without) at equal ROUGE-L.
        batch_size: Titles per batch in ``describe_batch``.
    """

    max_new_tokens: int = field(default=384, validator=_positive())
    min_new_tokens: int = field(default=0, validator=_non_negative())
    do_sample: bool = field(default=False, validator=v.instance_of(bool))
    temperature: float = field(
        default=1.0, converter=_to_float, validator=[v.instance_of(float), v.gt(0.0)]
    )
    top_p: float = field(
        default=1.0, converter=_to_float, validator=[v.instance_of(float), v.gt(0.0), v.le(1.0)]
    )
    top_k: int = field(default=50, validator=_non_negative())
    repetition_penalty: float = field(
        default=1.0, converter=_to_float, validator=[v.instance_of(float), v.gt(0.0)]
    )
    no_repeat_ngram_size: int = field(default=4, validator=_non_negative())
    exponential_decay_length_penalty: tuple[int, float] | None = field(
        default=(256, 1.05), converter=_length_penalty, validator=v.optional(_is_length_penalty)
    )
    batch_size: int = field(default=8, validator=_positive())

    @min_new_tokens.validator
    def _min_not_above_max(self, attribute: attrs.Attribute, value: int) -> None:
        if value > self.max_new_tokens:
            raise ValueError(
                f"'min_new_tokens' ({value}) must not exceed 'max_new_tokens' ({self.max_new_tokens})"
            )


def _section(cls: type) -> Any:
    return field(
        factory=cls,
        converter=lambda x: cls(**x) if isinstance(x, dict) else x,
        validator=v.instance_of(cls),
    )


@frozen(kw_only=True)
class FineTuneConfig:
    """Everything a fine-tuning run needs, grouped by concern.

    Attributes:
        model: The foundation model (:class:`ModelConfig`).
        lora: The adapter (:class:`LoraSettings`).
        training: The optimisation (:class:`TrainingConfig`).
        backend: ``"auto"`` (Unsloth when installed, else transformers), ``"unsloth"``,
            ``"transformers"``, or a plugin's backend name.
        template: Name of the prompt template (``"alpaca"``, ``"chat"`` or a plugin's).
        question_share: Share of training examples phrased as a user question about the title
            instead of the fixed instruction (0 reproduces the seed).
        template_options: Options of the template (its ``attrs`` fields, e.g. ``k`` or
            ``leave_out_same_description`` for ``"context"``), used in training and by
            :meth:`~productdesc.generation.describer.Describer.from_pretrained`.
    """

    model: ModelConfig = _section(ModelConfig)
    lora: LoraSettings = _section(LoraSettings)
    training: TrainingConfig = _section(TrainingConfig)
    backend: str = field(default="auto", validator=v.min_len(1))
    template: str = field(default="alpaca", validator=v.min_len(1))
    question_share: float = field(
        default=0.0, converter=_to_float, validator=[v.instance_of(float), v.ge(0.0), v.le(1.0)]
    )
    template_options: dict[str, Any] = field(
        factory=dict, converter=dict, validator=v.deep_mapping(v.instance_of(str)), hash=False
    )

    SECTIONS: ClassVar[dict[str, type]] = {
        "model": ModelConfig,
        "lora": LoraSettings,
        "training": TrainingConfig,
    }

    @classmethod
    def seed_recipe(cls) -> FineTuneConfig:
        """The seed notebook's exact recipe (TinyLlama chat 4-bit, r=16, batch 2 x 22)."""
        return cls(
            model=ModelConfig(
                model_name="unsloth/tinyllama-chat-bnb-4bit",
                max_seq_length=2048,
                load_in_4bit=True,
                dtype="auto",
            ),
            lora=LoraSettings(
                r=16,
                lora_alpha=16,
                lora_dropout=0.0,
                target_modules=ALL_PROJECTIONS,
                use_gradient_checkpointing="unsloth",
            ),
            training=TrainingConfig(
                per_device_train_batch_size=2,
                gradient_accumulation_steps=22,
                warmup_steps=5,
                num_train_epochs=1.0,
                learning_rate=2e-4,
                max_grad_norm=0.6,
                optim="adamw_8bit",
                weight_decay=0.01,
                lr_scheduler_type="linear",
                group_by_length=True,
                packing=False,
                completion_only_loss=False,  # the notebook's dataset_text_field="text"
                seed=3407,
            ),
        )

    @classmethod
    def preset(cls, name: str) -> FineTuneConfig:
        """A named recipe from :data:`PRESETS` (``productdesc train --preset NAME``).

        Raises:
            UserError: No preset has that name (the message lists them).
        """
        try:
            return cls.from_dict(PRESETS[name])
        except KeyError:
            raise UserError(
                f"no preset named {name!r}; presets: {', '.join(sorted(PRESETS))}"
            ) from None

    # -- dict / TOML round trip --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict that TOML can hold: tuples as lists, ``None`` as ``"off"``."""

        def serialize(inst: Any, a: Any, value: Any) -> Any:
            if value is None:
                return OFF
            return list(value) if isinstance(value, tuple) else value

        return attrs.asdict(self, value_serializer=serialize)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FineTuneConfig:
        """Build from a nested dict; unknown keys are an error that names them."""
        _reject_unknown(cls, data, "")
        values = dict(data)
        for section, section_cls in cls.SECTIONS.items():
            if section in data:
                if not isinstance(data[section], dict):
                    raise UserError(f"config: [{section}] must be a table")
                _reject_unknown(section_cls, data[section], section)
                values[section] = _build(section_cls, data[section], f"[{section}] ")
        return _build(cls, values, "")

    def to_toml(self, path: str | os.PathLike[str] | None = None) -> str:
        """The config as TOML text; written atomically to ``path`` when given."""
        import tomli_w

        text = tomli_w.dumps(self.to_dict())
        if path is not None:
            write_text_atomic(path, text)
        return text

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> FineTuneConfig:
        """Load a config written by :meth:`to_toml` (or by hand; missing keys take defaults)."""
        path = Path(path)
        return cls.from_toml_text(read_config_file(path), path)

    @classmethod
    def from_toml_text(cls, text: str, path: str | os.PathLike[str]) -> FineTuneConfig:
        """:meth:`from_toml` of a file's ``text`` already read; ``path`` names it in errors."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> FineTuneConfig:
        """Load a YAML config: the same sections and keys as the TOML, the same validation.

        Booleans are YAML 1.2's ``true`` and ``false`` only: ``off`` (and ``yes``, ``no``,
        ``on``) stay text, so ``save_steps: off`` means what it does in TOML; ``null`` works
        too. An empty file is the defaults.
        """
        import yaml

        path = Path(path)
        try:
            data = yaml.load(read_config_file(path), Loader=_yaml_loader())
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {_yaml_error(exc)}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(
                f"config file {path}: expected a mapping (model:, lora:, training:, ...), "
                f"got {type(data).__name__}"
            )
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FineTuneConfig:
        """Load a config by its file name: YAML for ``.yaml`` and ``.yml``, else TOML."""
        if Path(path).suffix.lower() in YAML_SUFFIXES:
            return cls.from_yaml(path)
        return cls.from_toml(path)

    def with_overrides(self, overrides: Mapping[str, Any]) -> FineTuneConfig:
        """A copy with fields set by dotted name, e.g. ``{"training.learning_rate": 2e-4}``.

        Values are checked as if they stood in a config file (``"off"`` sets an optional
        field to ``None``); ``template_options.NAME`` sets one template option.

        Raises:
            UserError: An unknown field or a bad value, in one line naming it.
        """
        data = self.to_dict()
        for key, value in overrides.items():
            *sections, name = key.split(".")
            table = data
            for section in sections:
                table = table.setdefault(section, {})
                if not isinstance(table, dict):
                    raise UserError(f"config: {key}: {section} is a value, not a section")
            table[name] = value
        return type(self).from_dict(data)


PRESETS: dict[str, dict[str, Any]] = {
    # Chosen by a sweep on a validation split of the 600 real records, on one H200
    # (docs/results/answer-quality): SmolLM2-135M in 16-bit, plain AdamW (no bitsandbytes),
    # validation every few steps, the best adapter kept.
    "gpu-small": {
        "model": {
            "model_name": "smollm2-135m",
            "max_seq_length": 1024,
            "load_in_4bit": False,
            "dtype": "auto",
        },
        "lora": {"r": 16, "lora_alpha": 32, "use_gradient_checkpointing": False},
        "training": {
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 5,
            "num_train_epochs": 6.0,
            # the sweep's winner on validation ROUGE-L (docs/results/answer-quality-sweep)
            "learning_rate": 2e-3,
            "optim": "adamw_torch",
            "eval_steps": 10,
            "early_stopping_patience": 3,
            "save_total_limit": 2,
        },
        "backend": "transformers",
        "question_share": 0.25,
    },
}
"""Named recipes (:meth:`FineTuneConfig.preset`); keys as in :meth:`FineTuneConfig.to_dict`."""
