"""Fine-tune a LoRA adapter on prepared data with :class:`productdesc.LoraFineTuner`.

python examples/finetune.py                                  # embedded SmolLM2-135M, 30 CPU steps
python examples/finetune.py --data example-out/data --out example-out/run --max-steps 200
python examples/finetune.py --model path/to/model --max-steps 2 --backend transformers

The run's settings come from a TOML preset (default: ``examples/smollm2-cpu.toml``); the flags
override single fields. Run ``examples/prepare.py`` first (it writes ``example-out/data``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from productdesc import FineTuneConfig
from productdesc.errors import UserError

PRESET = Path(__file__).with_name("smollm2-cpu.toml")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, default=PRESET, help="a FineTuneConfig TOML (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("example-out/data"),
        help="prepared data (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("example-out/run"),
        help="training output (default: %(default)s)",
    )
    parser.add_argument(
        "--model", help="model.model_name: Hub id, directory, .gguf or smollm2-135m"
    )
    parser.add_argument("--max-steps", type=int, help="training.max_steps")
    parser.add_argument("--backend", help="auto, unsloth, transformers or a plugin's")
    parser.add_argument("--template", help="prompt template name: alpaca, chat or a plugin's")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> FineTuneConfig:
    """The preset with the flags applied; configs are frozen, so changes are evolve()d copies."""
    config = FineTuneConfig.from_toml(args.config)
    if args.model is not None:
        config = attrs.evolve(config, model=attrs.evolve(config.model, model_name=args.model))
    if args.max_steps is not None:
        training = attrs.evolve(config.training, max_steps=args.max_steps)
        config = attrs.evolve(config, training=training)
    top = {"backend": args.backend, "template": args.template}
    return attrs.evolve(config, **{k: v for k, v in top.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = configure(args)
    except (UserError, ValueError, TypeError) as exc:  # attrs validators raise the last two
        print(f"finetune: error: {exc}", file=sys.stderr)
        return 2
    print(config.to_toml())
    try:
        from productdesc import LoraFineTuner  # imports the backend's stack (torch, maybe unsloth)

        result = LoraFineTuner(config).train(
            args.data, output_dir=args.out, overwrite=args.overwrite
        )
    except UserError as exc:
        print(f"finetune: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    print(
        f"wrote {result.output_dir}; try: python examples/describe.py --model {result.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
