"""``productdesc demo``: the whole job on the embedded defaults, offline, on a CPU.

Prepares the sample of ``trn.json`` bundled in the package, fine-tunes the embedded
SmolLM2-135M-Instruct with LoRA for a short run, then prints the base model's and the tuned
model's answers side by side for a few held-out titles.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import textwrap
import time
from pathlib import Path

from productdesc.errors import UserError

# Short and CPU-sized: 135M parameters in float32, 2 packed rows of 256 tokens a step. On CPU
# the packed rows become one sequence whose attention cost grows with its square, so fewer,
# shorter rows are cheaper a token. A step took 3.6 s on the quiet 2-core machine (27 s under
# heavy load): 40 steps, ~20k tokens, about two passes over the sample's train split. After 20
# steps the tuned answers had the reference's style but often not the product; after 40 they
# described it (docs/benchmarks.md).
DEMO_MODEL = "smollm2-135m"
DEMO_SPLIT = (80, 10, 10)  # the bundled sample is small: keep a few titles out for the comparison
DEMO_MARKER = ".productdesc-demo"  # in --out: proof that its data/ and run/ are the demo's


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="prepare the bundled sample, fine-tune the embedded SmolLM2-135M, compare answers",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument(
        "--out", default="productdesc-demo", help="working directory (default: %(default)s)"
    )
    p.add_argument(
        "--max-steps", type=int, default=40, help="optimizer steps (default: %(default)s)"
    )
    p.add_argument(
        "--titles", type=int, default=3, help="held-out titles to compare (default: %(default)s)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=80, help="answer length cap (default: %(default)s)"
    )
    p.add_argument(
        "--model", default=DEMO_MODEL, help="base model (default: %(default)s, embedded)"
    )
    p.add_argument(
        "--backend", default="auto", help="auto (unsloth when installed), unsloth or transformers"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from productdesc.config import FineTuneConfig, LoraSettings, ModelConfig, TrainingConfig
    from productdesc.data import sample_path
    from productdesc.data.dataset import AmazonTitlesDataset, PrepareConfig

    out = Path(args.out)
    data_dir, run_dir = out / "data", out / "run"
    _claim(out, data_dir, run_dir)
    started = time.perf_counter()

    _say(f"1/3 prepare: {sample_path().name} (bundled sample) -> {data_dir}")
    shutil.rmtree(data_dir, ignore_errors=True)  # the demo's own, as _claim proved: start clean
    manifest = AmazonTitlesDataset(sample_path(), PrepareConfig(split=DEMO_SPLIT)).prepare(data_dir)
    _say("   " + ", ".join(f"{k}: {v}" for k, v in sorted(manifest.counts.items())))

    config = FineTuneConfig(
        backend=args.backend,
        model=ModelConfig(model_name=args.model, max_seq_length=256, load_in_4bit=False),
        lora=LoraSettings(r=16, lora_alpha=32, use_gradient_checkpointing=False),
        training=TrainingConfig(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            max_steps=args.max_steps,
            warmup_steps=5,
            learning_rate=5e-4,
            optim="adamw_torch",
            logging_steps=10,
            save_steps=None,
        ),
    )
    _say(f"2/3 train: LoRA on {args.model}, {args.max_steps} steps -> {run_dir}")
    from productdesc.finetune import LoraFineTuner

    shutil.rmtree(run_dir, ignore_errors=True)
    result = LoraFineTuner(config).train(data_dir, output_dir=run_dir)
    _say(f"   {result.summary()}")

    _say(f"3/3 describe: base vs tuned on {args.titles} held-out titles")
    from productdesc.generation.describer import Describer

    ds = AmazonTitlesDataset.from_prepared(data_dir)
    records = list(itertools.islice(ds.iter_split("test"), args.titles))
    titles = [r["title"] for r in records]
    gen = {"max_new_tokens": args.max_new_tokens, "repetition_penalty": 1.1}
    base = Describer.from_pretrained(run_dir, base_only=True).describe_batch(titles, **gen)
    tuned = Describer.from_pretrained(run_dir).describe_batch(titles, **gen)
    for rec, b, t in zip(records, base, tuned, strict=True):
        _say("")
        _say(f"== {rec['title']}")
        _block("reference", rec["content"])
        _block("base", b)
        _block("tuned", t)
    _say(f"\ndone in {time.perf_counter() - started:.0f} s; the tuned adapter is in {run_dir}")
    _say(f'try: productdesc describe --model {run_dir} "Nice for Mice"')
    return 0


def _claim(out: Path, *owned: Path) -> None:
    """Mark ``out`` as the demo's, refusing when a folder the demo replaces is someone else's.

    The demo deletes ``owned`` before it rewrites them; it may only where its marker proves an
    earlier demo made them, so a user's own ``data/`` or ``run/`` there is never lost.

    Raises:
        UserError: One of ``owned`` exists in a folder without the demo's marker.
    """
    from productdesc._io import write_text_atomic

    marker = out / DEMO_MARKER
    if not marker.is_file():
        for path in owned:
            if path.exists():
                raise UserError(
                    f"{path} exists and was not made by `productdesc demo` (no {marker}); "
                    f"the demo would replace it: choose a new --out, or move it away"
                )
    try:
        write_text_atomic(marker, "made by `productdesc demo`, which replaces data/ and run/\n")
    except OSError as exc:
        raise UserError(f"cannot write to --out {out}: {exc}") from None


def _say(line: str) -> None:
    print(line, flush=True)


def _block(label: str, text: str) -> None:
    short = textwrap.shorten(text, width=400, placeholder=" ...") or "(empty)"
    body = textwrap.fill(short, width=96, initial_indent=" " * 12, subsequent_indent=" " * 12)
    sys.stdout.write(f"  {label:<9}:" + body[11:] + "\n")
