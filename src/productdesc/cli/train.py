"""``productdesc train``: LoRA fine-tune on prepared data.

productdesc train --data prepared/ --out runs/first --model smollm2-135m --max-steps 60
productdesc train --data prepared/ --out runs/first --config run.toml
productdesc train --data prepared/ --out runs/first --config run.yaml --set training.learning_rate=1e-4
productdesc train --print-config > run.toml
productdesc train --data prepared/ --out runs/first --nproc 2   # 2 GPUs, data parallel
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from productdesc import distributed
from productdesc.errors import UserError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model with LoRA on prepared data",
        description=(
            "Fine-tune with LoRA on a directory written by `productdesc prepare` (its train "
            "split; its validation split for validation loss). Shows progress, loss and "
            "tokens/s; writes the adapter, config, loss curve and model card to --out."
        ),
    )
    parser.add_argument("--data", type=Path, metavar="DIR", help="prepared data directory")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory (new or empty)")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a FineTuneConfig as TOML, or YAML when it ends .yaml or .yml (see --print-config)",
    )
    parser.add_argument(
        "--seed-recipe",
        action="store_true",
        help="start from the seed notebook's recipe (batch 2 x 22, no packing) instead of the "
        "defaults (not with --config)",
    )
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="start from a named recipe (gpu-small: SmolLM2-135M on one GPU, early stopping on "
        "validation loss) instead of the defaults (not with --config)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="model.model_name: Hub id, dir, .gguf, smollm2-135m, gemma3-270m",
    )
    parser.add_argument("--max-steps", type=int, metavar="N", help="training.max_steps")
    parser.add_argument(
        "--context",
        nargs="?",
        const="",
        metavar="INDEX",
        help="train with the 'context' template (answers shown the nearest known products); "
        "INDEX: a retrieval index or prepared data directory (default: --data's)",
    )
    parser.add_argument(
        "--backend", choices=["auto", "unsloth", "transformers"], help="backend (default: auto)"
    )
    parser.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help="training.report_to: experiment trackers for the losses, comma-separated "
        "(tensorboard, wandb, mlflow, trackio, ...; all; none); TensorBoard logs to OUT/logs",
    )
    parser.add_argument(
        "--set",
        action="append",
        dest="overrides",
        metavar="KEY=VALUE",
        help="set any config field by its dotted name, e.g. training.learning_rate=2e-4 or "
        'lora.target_modules=\'["q_proj", "v_proj"]\' (repeatable; VALUE is read as TOML, '
        "else taken as text; applied after the options above)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out (drops its checkpoints)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="also write the merged model to OUT/merged"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the config as TOML (defaults, or --config with the options applied) and exit",
    )
    parser.add_argument(
        "--nproc",
        "--gpus",
        type=int,
        metavar="N",
        help=(
            "train data-parallel in N processes, one per GPU, started through torchrun (each "
            "step then takes N times the rows); without CUDA, N CPU processes (gloo)"
        ),
    )
    parser.set_defaults(func=run, train_parser=parser)


def run(args: argparse.Namespace) -> int:
    from productdesc.config import FineTuneConfig

    starts = [
        f
        for f, given in (
            ("--config", args.config),
            ("--seed-recipe", args.seed_recipe),
            ("--preset", args.preset),
        )
        if given
    ]
    if len(starts) > 1:
        raise UserError(f"{' and '.join(starts)} all choose the starting config: pick one")
    if args.config:
        config = FineTuneConfig.from_file(args.config)
    elif args.preset:
        config = FineTuneConfig.preset(args.preset)
    else:
        config = FineTuneConfig.seed_recipe() if args.seed_recipe else FineTuneConfig()
    for flag, overrides in _overrides(args):
        try:
            config = config.with_overrides(overrides)
        except UserError as exc:
            raise UserError(f"{flag}: {exc}") from None
    if args.print_config:
        sys.stdout.write(config.to_toml())
        return 0
    if args.data is None or args.out is None:
        raise UserError("--data and --out are required (or use --print-config)")
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: not a directory (run `productdesc prepare` first)")
    if args.nproc is not None:
        if args.nproc < 1:
            raise UserError(f"--nproc {args.nproc}: must be 1 or more")
        if distributed.is_distributed():
            raise UserError(
                "--nproc starts the processes itself; leave it out under torchrun or accelerate launch"
            )
        if args.nproc > 1:
            return _launch(args)

    # Loss, validation loss and tokens/s are on the progress bar's lines; this adds the summary.
    logging.getLogger("productdesc").setLevel(min(logging.INFO, logging.getLogger().level))
    from productdesc.finetune import LoraFineTuner

    retriever = Path(args.context) if args.context else None
    # Created before anything imports transformers (unsloth patches it).
    tuner = LoraFineTuner(config, retriever=retriever)
    main = distributed.is_main_process()  # under a launch, rank 0 alone reports
    if main:
        print(
            f"training {config.model.model_name} with the {tuner.backend.name} backend", flush=True
        )
    result = tuner.train(
        args.data,
        output_dir=args.out,
        resume_from_checkpoint=True if args.resume else None,
        merge=args.merge,
        overwrite=args.overwrite,
    )
    distributed.shutdown()  # after a failure the launcher ends the other processes instead
    if main:
        print(f"done: {result.summary()}\nadapter: {result.output_dir}")
        if result.merged_dir:
            print(f"merged model: {result.merged_dir}")
        print(f'try: productdesc describe --model {result.output_dir} "Nice for Mice"')
    return 0


def _overrides(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """Each option that changes the starting config, as it was given, with the fields it sets.

    One at a time, so that a rejected value's error names the option that gave it.
    """
    named = [
        ("--model", "model.model_name", args.model),
        ("--max-steps", "training.max_steps", args.max_steps),
        ("--backend", "backend", args.backend),
        ("--report-to", "training.report_to", args.report_to),
        ("--context", "template", None if args.context is None else "context"),
    ]
    changes = [(f"{flag} {value}", {key: value}) for flag, key, value in named if value is not None]
    for assignment in args.overrides or ():
        key, value = _assignment(assignment)
        changes.append((f"--set {assignment}", {key: value}))
    return changes


def _assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as the key and VALUE read by :func:`~productdesc.config.toml_value`."""
    from productdesc.config import toml_value

    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. training.learning_rate=2e-4")
    return key.strip(), toml_value(value)


def _launch(args: argparse.Namespace) -> int:
    """Run this same command in ``args.nproc`` processes through torchrun; their exit status."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and args.nproc > gpus:
        raise UserError(f"--nproc {args.nproc}: this machine has {gpus} CUDA GPU(s)")
    if not gpus:
        print(
            f"no CUDA GPU: training in {args.nproc} CPU processes (gloo), which is slow; "
            f"meant for testing the data-parallel path",
            file=sys.stderr,
            flush=True,
        )
    # NVLink multicast stays off: it buys a LoRA run nothing and has broken shared hosts.
    os.environ[distributed.NCCL_NVLS_ENV] = "0"
    command = [
        "--standalone",  # one machine; a free port for the rendezvous
        f"--nproc-per-node={args.nproc}",
        "-m",
        "productdesc.cli",
        *_child_argv(args),
    ]
    try:
        torchrun(command)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(
            f"productdesc train: process {rank} of {args.nproc} failed (exit status "
            f"{failure.exitcode}); its error is above",
            file=sys.stderr,
        )
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The command line that gives each launched process ``args``, less ``--nproc``."""
    argv = ["-v"] * args.verbose + ["train"]
    for action in args.train_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("help", "nproc") or value in (None, False):
            continue
        option = max(action.option_strings, key=len)
        if value is True:
            argv.append(option)
        else:  # --set gives a list, one item an occurrence
            for item in value if isinstance(value, list) else [value]:
                argv += [option, str(item)]
    return argv
