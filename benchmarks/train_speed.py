"""Training speed of a TinyLlama-1.1B-shaped LoRA run: the seed's recipe vs productdesc's default.

Run on a CUDA machine (no downloads: the model has random weights and its tokenizer is trained
in-process on the benchmark's own texts)::

    python benchmarks/train_speed.py --out benchmarks/results/train_speed.json

Each variant runs in its own subprocess (Unsloth patches transformers, TRL and PEFT on import, so
a plain-transformers variant must never share a process with it), over the same texts, built
from :mod:`productdesc.data.synthetic` records (real length distribution) rendered by
:class:`productdesc.prompts.PromptTemplate`. Reported per variant: real (non-pad) tokens/s over
the steps after ``--warmup``, seconds per optimizer step, peak GPU memory, model-FLOPs
utilisation, the loss after the same number of tokens, and the time one epoch over the full
cleaned corpus would take.

Variants (``--variants``, comma-separated; names below):

* ``a_seed_hf``: the seed recipe through plain transformers + PEFT + bitsandbytes 4-bit
  (batch 2, accumulation 22, no packing, group_by_length, gradient checkpointing, adamw_8bit).
* ``b_seed_unsloth``: the same recipe through Unsloth's FastLanguageModel.
* ``c_productdesc``: ``productdesc``'s default :class:`~productdesc.config.FineTuneConfig`
  through :class:`~productdesc.finetune.LoraFineTuner` (only the model path and step count set).
* further ``x_*`` variants isolate one change each (see ``VARIANTS``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    describe_profile,
    described_records,
    profile_summary,
    profiler,
    run_info,
    run_variant,
    save_json,
)

HERE = Path(__file__).resolve().parent
PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, datasheet
MEASURED_BF16_TFLOPS = 790.0  # 8192^3 bf16 matmul measured on the lent H200 (device KINDS.md)
FULL_CORPUS_RECORDS = 1_200_000  # cleaned AmazonTitles-1.3MM train records with a description

SEED = dict(
    load_in_4bit=True,
    batch=2,
    grad_accum=22,
    packing=False,
    grad_ckpt=True,
    group_by_length=True,
    loss="full",
    max_length=2048,
    optim="adamw_8bit",
    liger=False,
    varlen_shim=False,  # productdesc's torch-2.11 varlen attention for Unsloth's packed rows
    padding=None,  # Unsloth's choice when packing is off: None (its own), "padded", "padding_free"
)

# name -> (stack, overrides of SEED). "productdesc" runs the library's own default config.
VARIANTS: dict[str, tuple[str, dict]] = {
    "a_seed_hf": ("hf", {}),
    "b_seed_unsloth": ("unsloth", {"grad_ckpt": "unsloth"}),
    "c_productdesc": ("productdesc", {}),
    # (c) with the seed's loss on the whole text, to compare its learning per token with (a)
    "c_productdesc_full_loss": ("productdesc", {"completion_only_loss": False}),
    # one change at a time from the seed, plain transformers
    "x_hf_4bit_packed_b8": ("hf", dict(packing=True, batch=8, grad_accum=1)),
    "x_hf_4bit_packed_b8_nockpt": (
        "hf",
        dict(packing=True, batch=8, grad_accum=1, grad_ckpt=False),
    ),
    "x_hf_bf16_packed_b8_nockpt": (
        "hf",
        dict(load_in_4bit=False, packing=True, batch=8, grad_accum=1, grad_ckpt=False),
    ),
    "x_hf_bf16_packed_b8_nockpt_liger": (
        "hf",
        dict(load_in_4bit=False, packing=True, batch=8, grad_accum=1, grad_ckpt=False, liger=True),
    ),
    "x_unsloth_4bit_packed_b8": (
        "unsloth",
        dict(packing=True, batch=8, grad_accum=1, grad_ckpt="unsloth"),
    ),
    "x_unsloth_4bit_packed_b8_nockpt": (
        "unsloth",
        dict(packing=True, batch=8, grad_accum=1, grad_ckpt=False),
    ),
    "x_unsloth_bf16_packed_b8_nockpt": (
        "unsloth",
        dict(load_in_4bit=False, packing=True, batch=8, grad_accum=1, grad_ckpt=False),
    ),
    "x_unsloth_bf16_packed_b16_nockpt": (
        "unsloth",
        dict(load_in_4bit=False, packing=True, batch=16, grad_accum=1, grad_ckpt=False),
    ),
    "x_unsloth_4bit_packed_b8_nockpt_varlen": (
        "unsloth",
        dict(packing=True, batch=8, grad_accum=1, grad_ckpt=False, varlen_shim=True),
    ),
    "x_unsloth_4bit_packed_b16_nockpt_varlen": (
        "unsloth",
        dict(packing=True, batch=16, grad_accum=1, grad_ckpt=False, varlen_shim=True),
    ),
    "x_unsloth_bf16_packed_b8_nockpt_varlen": (
        "unsloth",
        dict(
            load_in_4bit=False,
            packing=True,
            batch=8,
            grad_accum=1,
            grad_ckpt=False,
            varlen_shim=True,
        ),
    ),
    "x_unsloth_4bit_padded_b64_nockpt": (
        "unsloth",
        dict(batch=64, grad_accum=1, grad_ckpt=False, padding="padded"),
    ),
}


# --------------------------------------------------------------------------------------------
# parent: build model and texts once, run each variant in a subprocess, write the JSON
# --------------------------------------------------------------------------------------------
def build_texts(n: int, seed: int, path: Path) -> dict:
    """Render ``n`` synthetic records (with a description) as Alpaca prompt/completion pairs."""
    from productdesc.prompts import PromptTemplate

    template = PromptTemplate(eos_token="</s>")
    pairs = [
        {
            "title": r["title"],
            "content": r["content"],
            **template.render_pair(r["title"], r["content"]),
        }
        for r in described_records(n, seed=seed)
    ]
    with path.open("w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair) + "\n")
    chars = [len(p["prompt"]) + len(p["completion"]) for p in pairs]
    return {"examples": len(pairs), "mean_chars": sum(chars) / len(chars)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="a_seed_hf,b_seed_unsloth,c_productdesc")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (0: by --tokens)")
    parser.add_argument("--tokens", type=int, default=300_000, help="real tokens per variant")
    parser.add_argument("--seed-steps", type=int, default=8, help="steps of the slow seed variants")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--examples", type=int, default=12_000)
    parser.add_argument(
        "--profile", type=int, default=0, help="profile this many steps after the warm-up"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "train_speed.json"))
    parser.add_argument("--shape", default="tinyllama-1.1b", help="'tiny' for a CPU smoke run")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "pd-train-speed"))
    args = parser.parse_args()
    import torch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    texts = work / "pairs.jsonl"
    text_stats = build_texts(args.examples, 0, texts)
    model_dir = work / args.shape
    if not (model_dir / "config.json").exists():
        from productdesc.testing import make_random_llama

        corpus = [
            json.loads(line)["prompt"] + json.loads(line)["completion"] for line in texts.open()
        ]
        cuda = torch.cuda.is_available()
        make_random_llama(
            model_dir,
            args.shape,
            dtype="bfloat16" if cuda else "float32",
            device="cuda" if cuda else "cpu",
            texts=corpus[:4000],
        )

    results = []
    for name in args.variants.split(","):
        spec = {"name": name, "model_dir": str(model_dir), "texts": str(texts), **vars(args)}
        res = run_variant(__file__, spec, work / f"{name}.json")
        results.append(res)
        if "error" in res:
            continue
        # Partial results survive a run cut short by a time limit.
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(results))
        print(
            f"== {name}: {res['tokens_per_s']:,.0f} tok/s, {res['s_per_step']:.3f} s/step, "
            f"peak {res['peak_gb']:.1f} GB, MFU {res['mfu']:.1%}",
            flush=True,
        )
        if res.get("profile"):
            print(describe_profile(res["profile"]), flush=True)

    summarise(results, text_stats, args)
    return 0


def loss_at(curve: list[list[float]], tokens: float) -> float | None:
    """Mean logged loss over the steps whose cumulative tokens are within 10% of ``tokens``."""
    window = [loss for t, loss in curve if 0.9 * tokens <= t <= 1.1 * tokens]
    return sum(window) / len(window) if window else None


def summarise(results: list[dict], text_stats: dict, args: argparse.Namespace) -> None:

    ok = [r for r in results if "error" not in r]
    common = min((r["curve"][-1][0] for r in ok), default=0)
    for r in ok:
        r["loss_at_common_tokens"] = loss_at(r["curve"], common)
        tokens_per_example = r["real_tokens"] / max(r["examples_seen"], 1)
        r["epoch_hours_full_corpus"] = (
            FULL_CORPUS_RECORDS * tokens_per_example / r["tokens_per_s"] / 3600
        )
    baseline = max((r["tokens_per_s"] for r in ok if r["name"][0] in "ab"), default=None)
    report = {
        **run_info("train_speed"),
        "texts": text_stats,
        "common_tokens_for_loss": common,
        "speedup_c_over_best_seed": (
            next((r["tokens_per_s"] for r in ok if r["name"] == "c_productdesc"), 0) / baseline
            if baseline
            else None
        ),
        "results": results,
    }
    save_json(args.out, report)
    print(
        f"\n{'variant':36} {'tok/s':>8} {'s/step':>7} {'peak GB':>7} {'MFU':>6} {'loss@T':>7} {'epoch h':>7}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['name']:36} failed")
            continue
        loss = r["loss_at_common_tokens"]
        print(
            f"{r['name']:36} {r['tokens_per_s']:8,.0f} {r['s_per_step']:7.3f} {r['peak_gb']:7.1f} "
            f"{r['mfu']:6.1%} {loss if loss is None else round(loss, 3)!s:>7} {r['epoch_hours_full_corpus']:7.1f}"
        )
    print(
        f"loss@T: mean loss near {common:,} real tokens; speedup c / best seed: {report['speedup_c_over_best_seed']}"
    )


# --------------------------------------------------------------------------------------------
# worker: one variant in a fresh process
# --------------------------------------------------------------------------------------------
def worker(spec: dict, out_path: str) -> None:
    name = spec["name"]
    stack, overrides = VARIANTS[name]
    cfg = {**SEED, **overrides}
    if stack in ("unsloth", "productdesc"):
        try:
            import unsloth  # noqa: F401 - must precede transformers/trl/peft
        except ImportError:
            if stack == "unsloth":
                raise
    import torch
    from transformers import TrainerCallback

    pairs = [
        json.loads(line) for line in Path(spec["texts"]).read_text(encoding="utf-8").splitlines()
    ]
    meter = {"tokens": 0, "examples": 0}

    class Timer(TrainerCallback):
        """Per optimizer step: wall time (GPU synchronised), real tokens, logged loss."""

        def __init__(self) -> None:
            self.steps: list[tuple[float, int]] = []
            self.curve: list[list[float]] = []
            self._t = 0.0
            self._tok = 0
            self.prof = None
            self.profile: dict | None = None

        def on_train_begin(self, args, state, control, model=None, **kw):
            def count(module, a, kwargs):
                mask = kwargs.get("attention_mask")
                ids = kwargs.get("input_ids")
                if mask is not None and mask.dim() == 2:
                    meter["tokens"] += int(mask.sum())
                    meter["examples"] += int(mask.shape[0])
                elif ids is not None:
                    meter["tokens"] += int(ids.numel())
                    pos = kwargs.get("position_ids")
                    meter["examples"] += int((pos == 0).sum()) if pos is not None else ids.shape[0]

            model.register_forward_pre_hook(count, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kw):
            sync()
            if profile_steps and len(self.steps) == spec["warmup"]:
                self.prof = profiler()
                self.prof.start()
            self._t = time.perf_counter()
            self._tok = meter["tokens"]

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.steps.append((time.perf_counter() - self._t, meter["tokens"] - self._tok))
            if self.prof is not None and len(self.steps) == spec["warmup"] + profile_steps:
                self.prof.stop()
                wall = sum(t for t, _ in self.steps[spec["warmup"] :])
                self.profile = profile_summary(self.prof, wall)
                self.prof = None
                print(self.profile["table"], flush=True)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.curve.append([meter["tokens"], float(logs["loss"])])

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    profile_steps = spec.get("profile", 0)
    timer = Timer()
    tokens_per_step_guess = 160 * cfg["batch"] * cfg["grad_accum"] * (12 if cfg["packing"] else 1)
    if name.startswith(("a_", "b_")):
        spec = {**spec, "steps": spec["seed_steps"]}
    steps = spec["steps"] or max(
        spec["warmup"] + 5, math.ceil(spec["tokens"] / tokens_per_step_guess)
    )

    if stack == "productdesc":
        run_library(spec, pairs, steps, timer, overrides)
    else:
        run_trl(stack, cfg, spec, pairs, steps, timer)

    timed = timer.steps[spec["warmup"] :]
    secs = sum(t for t, _ in timed)
    toks = sum(n for _, n in timed)
    from transformers import AutoConfig

    mc = AutoConfig.from_pretrained(spec["model_dir"])
    n_matmul = (
        mc.num_hidden_layers
        * (
            mc.hidden_size * mc.hidden_size * 2  # q, o
            + mc.hidden_size
            * (mc.hidden_size // mc.num_attention_heads)
            * mc.num_key_value_heads
            * 2  # k, v
            + 3 * mc.hidden_size * mc.intermediate_size  # gate, up, down
        )
        + mc.hidden_size * mc.vocab_size
    )  # lm_head
    tok_s = toks / secs
    result = {
        "name": name,
        "stack": stack,
        "config": cfg if stack != "productdesc" else f"FineTuneConfig() defaults, {overrides}",
        "steps": len(timer.steps),
        "timed_steps": len(timed),
        "tokens_per_s": tok_s,
        "s_per_step": secs / len(timed),
        "tokens_per_step": toks / len(timed),
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0,
        # frozen base: forward 2N + input-gradient backward 2N FLOPs a token (attention and
        # recomputation not counted, so this is model-FLOPs utilisation)
        "mfu": tok_s * 4 * n_matmul / (PEAK_BF16_TFLOPS * 1e12),
        "mfu_vs_measured_matmul": tok_s * 4 * n_matmul / (MEASURED_BF16_TFLOPS * 1e12),
        "real_tokens": meter["tokens"],
        "examples_seen": meter["examples"],
        "curve": timer.curve,
        "profile": timer.profile,
    }
    Path(out_path).write_text(json.dumps(result))


def run_trl(stack: str, cfg: dict, spec: dict, pairs: list[dict], steps: int, timer) -> None:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if cfg["loss"] == "full":  # the seed trains on the whole text (dataset_text_field="text")
        data = Dataset.from_list([{"text": p["prompt"] + p["completion"]} for p in pairs])
    else:
        data = Dataset.from_list(
            [{"prompt": p["prompt"], "completion": p["completion"]} for p in pairs]
        )
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if stack == "unsloth":
        from unsloth import FastLanguageModel

        if cfg["varlen_shim"]:
            from productdesc.backends import _varlen

            print("varlen shim installed:", _varlen.install(), flush=True)
        if cfg["padding"]:
            os.environ["UNSLOTH_PADDING_CHOICE"] = cfg["padding"]

        model, tok = FastLanguageModel.from_pretrained(
            spec["model_dir"],
            max_seq_length=cfg["max_length"],
            load_in_4bit=cfg["load_in_4bit"],
            dtype=None,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=16,
            lora_alpha=16,
            lora_dropout=0,
            bias="none",
            target_modules=modules,
            use_gradient_checkpointing=cfg["grad_ckpt"],
            random_state=3407,
        )
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        tok = AutoTokenizer.from_pretrained(spec["model_dir"])
        quant = (
            BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
            if cfg["load_in_4bit"]
            else None
        )
        model = AutoModelForCausalLM.from_pretrained(
            spec["model_dir"],
            quantization_config=quant,
            dtype=torch.bfloat16,
            attn_implementation="sdpa",
        )
        if cfg["load_in_4bit"]:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(cfg["grad_ckpt"])
            )
        elif cfg["grad_ckpt"]:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        model = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=16,
                lora_dropout=0,
                bias="none",
                task_type="CAUSAL_LM",
                target_modules=modules,
            ),
        )
    args = SFTConfig(
        output_dir=os.path.join(tempfile.gettempdir(), "pd-sft-" + spec["name"]),
        per_device_train_batch_size=cfg["batch"],
        gradient_accumulation_steps=cfg["grad_accum"],
        max_steps=steps,
        warmup_steps=5,
        learning_rate=2e-4,
        max_grad_norm=0.6,
        optim=cfg["optim"],
        weight_decay=0.01,
        lr_scheduler_type="linear",
        # transformers 5 spells the seed's group_by_length=True as a sampling strategy
        train_sampling_strategy=(
            "group_by_length" if cfg["group_by_length"] and not cfg["packing"] else "random"
        ),
        packing=cfg["packing"],
        max_length=cfg["max_length"],
        bf16=torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=3407,
        gradient_checkpointing=False,  # set on the model above, as each stack does it
        use_liger_kernel=cfg["liger"],
        dataset_num_proc=4,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer]
    )
    trainer.train()


def run_library(spec: dict, pairs: list[dict], steps: int, timer, overrides: dict) -> None:
    import attrs

    from productdesc.config import FineTuneConfig
    from productdesc.finetune import LoraFineTuner

    cfg = FineTuneConfig()
    cfg = attrs.evolve(
        cfg,
        model=attrs.evolve(cfg.model, model_name=spec["model_dir"]),
        training=attrs.evolve(cfg.training, max_steps=steps, save_steps=None, **overrides),
    )
    records = [{"title": p["title"], "content": p["content"]} for p in pairs]
    LoraFineTuner(cfg).train(
        records,
        output_dir=os.path.join(tempfile.gettempdir(), "pd-lib-run"),
        callbacks=[timer],
        overwrite=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
