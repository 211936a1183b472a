"""The fast path's compile cache: in productdesc's cache folder, and reused by a later process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from productdesc.generation.compile_cache import compile_cache_dir

# One compiled greedy call in a fresh process; prints inductor's cache counters.
CALL = r"""
import json, sys
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM, AutoTokenizer
from productdesc.generation.describer import Describer
from productdesc.generation.static_decoder import StaticGreedyDecoder

model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
describer = Describer(model, tok, fast=True)
describer._fast = StaticGreedyDecoder(model, check_every=4)  # compiled, as on CUDA
answer = describer.describe_batch(["Mouse"], max_new_tokens=6)
print(json.dumps({"answer": answer, **counters["inductor"]}))
"""


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR",)}
    env.pop("PRODUCTDESC_COMPILE_CACHE", None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env.update(settings)
    return env


def test_the_cache_folder_is_torchs_setting_else_ours_else_the_users_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("PRODUCTDESC_COMPILE_CACHE", raising=False)
    assert compile_cache_dir() == tmp_path / "xdg" / "productdesc" / "torch-compile"
    monkeypatch.setenv("PRODUCTDESC_COMPILE_CACHE", str(tmp_path / "ours"))
    assert compile_cache_dir() == tmp_path / "ours"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torchs"))
    assert compile_cache_dir() == tmp_path / "torchs"
    # What torch writes there itself on import (its default) is not a choice.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert compile_cache_dir() == tmp_path / "ours"


@pytest.mark.slow
def test_a_later_process_reuses_what_the_first_compiled(tiny_llama: Path, tmp_path: Path) -> None:
    """The second process finds every graph in the cache that the first wrote in
    ``$XDG_CACHE_HOME/productdesc/torch-compile``, and answers the same."""
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", CALL, str(tiny_llama)],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    folder = tmp_path / "xdg" / "productdesc" / "torch-compile"
    assert folder.is_dir() and any(folder.rglob("*"))
    assert first.get("fxgraph_cache_miss", 0) > 0 and not first.get("fxgraph_cache_hit")
    assert second.get("fxgraph_cache_hit", 0) == first["fxgraph_cache_miss"]
    assert not second.get("fxgraph_cache_miss")
    assert second["answer"] == first["answer"]
