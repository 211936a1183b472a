"""The model card a training run writes (``README.md``): what the Hub reads, and what a person
reading the run directory wants to know."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from productdesc._version import __version__
from productdesc.config import FineTuneConfig, TrainingConfig
from productdesc.models import EMBEDDED
from productdesc.rundir import CONFIG_FILE, PLOT_FILE
from productdesc.train_result import TrainResult, fmt

__all__ = ["batch_note", "card_metadata", "model_card"]


def model_card(
    config: FineTuneConfig,
    result: TrainResult,
    data_note: str,
    manifest: Any,
    run_config: FineTuneConfig,
) -> str:
    """The run's ``README.md``: Hub metadata, how to use the adapter, the data, the results and
    the exact config (``run_config``, as the run directory keeps it)."""
    name = config.model.model_name
    head = ["---", card_metadata(name, manifest).rstrip(), "---"]
    rows = [
        ("optimizer steps", f"{result.global_step}"),
        ("training examples", f"{result.train_examples}"),
        ("validation examples", f"{result.eval_examples}"),
        ("first training loss", fmt(result.first_loss)),
        ("final training loss", fmt(result.train_loss)),
        ("validation loss before training", fmt(result.initial_eval_loss)),
        ("final validation loss", fmt(result.eval_loss)),
        ("training time (this process)", f"{result.runtime_s:.0f} s"),
        ("throughput", f"{fmt(result.tokens_per_second, '.0f')} tokens/s"),
        ("processes (data parallel)", f"{result.world_size}"),
        ("rows per optimizer step", batch_note(config.training, result.world_size)),
        ("backend", result.backend),
        ("library versions", _versions()),
    ]
    lines = [
        *head,
        "",
        f"# {result.output_dir.name}: a LoRA adapter that describes products",
        "",
        f"Fine-tuned from `{name}` with the `{result.backend}` backend and the "
        f"`{config.template}` prompt template by productdesc {__version__}.",
        "",
        "## Use",
        "",
        "```python",
        "from productdesc import Describer",
        "",
        f'describer = Describer.from_pretrained("{result.output_dir}")',
        'print(describer.describe("Nice for Mice"))',
        "```",
        "",
        f'or `productdesc describe --model {result.output_dir} "Nice for Mice"`.',
        "",
        "## Data",
        "",
        f"- source: {data_note}",
        f"- share of examples phrased as a question: {config.question_share:g}",
    ]
    if manifest is not None:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(manifest.dropped.items())) or "none"
        splits = ", ".join(f"{k} {v.rows}" for k, v in manifest.splits.items())
        lines += [
            f"- input: `{manifest.input.name}` (sha256 `{manifest.input.sha256}`), "
            f"{manifest.lines} lines read, {manifest.kept} kept; dropped: {dropped}",
            f"- splits: {splits}",
        ]
    lines += ["", "## Results", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if (result.output_dir / PLOT_FILE).is_file():
        lines += ["", f"![loss curve]({PLOT_FILE})"]
    lines += [
        "",
        "## Configuration",
        "",
        f"The exact config, also in `{CONFIG_FILE}`:",
        "",
        "```toml",
        run_config.to_toml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def card_metadata(model_name: str, manifest: Any = None) -> str:
    """The card's YAML metadata, as the Hub reads it: the base model's Hub id (the embedded
    model's own, none for a local path), its license where it is known, and the training
    data's Hub id where it was one (a prepared file or local directory has none)."""
    from huggingface_hub import ModelCardData

    embedded = EMBEDDED.get(model_name)
    base = embedded.hub_id if embedded else None
    if embedded is None and "/" in model_name and not Path(model_name).exists():
        base = model_name
    source = manifest.input if manifest is not None else None
    if source is not None and not (source.format == "dataset" and "/" in source.name):
        source = None  # a file, or a local dataset directory (its name only): no Hub id
    tags = ["productdesc", "lora", "sft", "trl"]
    if base:
        tags.append(f"base_model:adapter:{base}")
    return ModelCardData(
        base_model=base,
        library_name="peft",
        pipeline_tag="text-generation",
        license=embedded.license if embedded else None,
        datasets=[source.name] if source is not None else None,
        tags=tags,
    ).to_yaml()


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "transformers", "peft", "trl", "unsloth"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join([f"productdesc {__version__}", *found])


def batch_note(training: TrainingConfig, processes: int) -> str:
    """``2 processes x 8 rows x 2 accumulation = 32 rows a step`` (the effective batch)."""
    rows = training.per_device_train_batch_size
    accumulation = training.gradient_accumulation_steps
    total = processes * rows * accumulation
    return (
        f"{processes} process{'es' if processes > 1 else ''} x {rows} rows x {accumulation} "
        f"accumulation = {total} rows a step"
    )
