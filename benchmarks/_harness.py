"""Shared by the GPU benchmarks: run one variant in a fresh Python process.

Unsloth patches transformers, TRL and PEFT when imported, so a baseline that must run on the
plain libraries can never share a process with it: every variant gets its own process, which
re-runs the benchmark script as ``script --worker SPEC_JSON OUT_JSON``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_variant(script: str, spec: dict, out: Path) -> dict:
    """The worker's result dict (plus ``wall_s``), or ``{"name", "error"}`` when it failed."""
    out.unlink(missing_ok=True)
    started = time.time()
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec), str(out)],
        text=True,
        capture_output=True,
    )
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stdout + proc.stderr)[-3000:]
        print(f"== {spec['name']} FAILED (rc {proc.returncode})\n{tail}", flush=True)
        return {"name": spec["name"], "error": tail[-800:]}
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.time() - started, 1)
    return result
