"""``productdesc export``: write a trained model as one GGUF file (llama.cpp) and a Modelfile (Ollama).

productdesc export runs/smollm2-lora --out smollm2-products.gguf
productdesc export runs/smollm2-lora --out model-q8.gguf --outtype q8_0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    from productdesc.export import OUTTYPES

    parser = subparsers.add_parser(
        "export",
        help="write a trained (or merged) Llama-architecture model as one GGUF file",
        description=(
            "Write MODEL as a GGUF file for llama.cpp and the tools built on it. MODEL is a "
            "training output (its merged/ model, else the adapter merged into its base, loaded "
            "as the run loaded it) or a model directory. An Ollama Modelfile goes beside the "
            "file (replacing one there): FROM the file, the run's prompt as TEMPLATE, its end "
            "tokens as stops and the describer's decoding defaults. Nothing is built or "
            "installed, and no converter is fetched."
        ),
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="training output or model dir")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the .gguf file")
    parser.add_argument(
        "--outtype",
        choices=OUTTYPES,
        default="f16",
        help="weight type of the 2-D tensors (default: %(default)s; norms stay f32)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from productdesc.export import MODELFILE, export_gguf

    started = time.perf_counter()
    out = export_gguf(args.model, args.out, outtype=args.outtype)
    seconds = time.perf_counter() - started
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.outtype}) in {seconds:.1f} s")
    print(f"wrote {out.parent / MODELFILE} (ollama create NAME -f {out.parent / MODELFILE})")
    return 0
