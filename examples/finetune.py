"""Fine-tune a LoRA adapter on prepared data with :class:`productdesc.LoraFineTuner`.

python examples/finetune.py                                  # embedded SmolLM2-135M, 30 CPU steps
python examples/finetune.py --data example-out/data --out example-out/run --max-steps 200
python examples/finetune.py --model path/to/model --max-steps 2 --backend transformers

Run ``examples/prepare.py`` first (it writes ``example-out/data``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from productdesc import FineTuneConfig, LoraSettings, ModelConfig, TrainingConfig
from productdesc.errors import UserError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        "--model",
        default="smollm2-135m",
        help="base model: Hub id, directory, .gguf, smollm2-135m (default)",
    )
    parser.add_argument(
        "--max-steps", type=int, default=30, help="optimizer steps (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto, unsloth, transformers or a plugin's (default: auto)",
    )
    parser.add_argument(
        "--template", default="alpaca", help="prompt template name (default: %(default)s)"
    )
    parser.add_argument(
        "--question-share", type=float, default=0.3, help="share of examples phrased as questions"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # CPU-sized settings: a 135M model in float32, sequences cut at 384 tokens (the sample's
    # descriptions fit), 8 sequences a step, no intermediate checkpoints.
    config = FineTuneConfig(
        model=ModelConfig(model_name=args.model, max_seq_length=384, load_in_4bit=False),
        lora=LoraSettings(r=16, lora_alpha=32, use_gradient_checkpointing=False),
        training=TrainingConfig(
            per_device_train_batch_size=8,
            gradient_accumulation_steps=1,
            max_steps=args.max_steps,
            warmup_steps=min(3, args.max_steps),
            learning_rate=1e-3,  # high for LoRA, so a short run visibly learns
            optim="adamw_torch",
            logging_steps=1,
            save_steps=None,
        ),
        backend=args.backend,
        template=args.template,
        question_share=args.question_share,
    )
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
