"""GGUF export (productdesc.gguf_export): transformers' own GGUF reader loads the file back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

TEXTS = ["Nice for Mice", "Stainless steel kitchen knife set, 6 pieces & a block!"]


def _load(path: Path, **config_overrides):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, **config_overrides)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, config=config, dtype=torch.float32
    )
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _logits(model, tokenizer, text=TEXTS[1]):
    with torch.no_grad():
        return model(tokenizer(text, return_tensors="pt").input_ids).logits


def _field(path: Path, key: str) -> tuple[object, gguf.GGUFValueType] | None:
    """``(value, type)`` of a metadata key as llama.cpp reads it, or ``None`` when absent."""
    field = gguf.GGUFReader(path).fields.get(key)
    return None if field is None else (field.contents(), field.types[0])


def _special_ids(path: Path) -> dict[str, int]:
    reader = gguf.GGUFReader(path)
    keys = ("bos_token_id", "eos_token_id", "padding_token_id")
    return {k: int(reader.fields[f"tokenizer.ggml.{k}"].parts[-1][0]) for k in keys}


@pytest.fixture(scope="module")
def source(tiny_llama: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def test_f32_file_gives_the_same_model_and_tokenizer(tiny_llama, source, tmp_path):
    from productdesc.cli import main

    out = tmp_path / "tiny.gguf"
    assert main(["export", str(tiny_llama), "--out", str(out), "--outtype", "f32"]) == 0
    model, tokenizer = source
    loaded, loaded_tokenizer = _load(out)
    for text in TEXTS:
        assert loaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    torch.testing.assert_close(
        _logits(loaded, tokenizer), _logits(model, tokenizer), rtol=1e-5, atol=1e-5
    )
    ids = _special_ids(out)
    assert ids == {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "padding_token_id": tokenizer.pad_token_id,
    }
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize(("outtype", "tolerance"), [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 2e-2)])
def test_smaller_types_stay_close(tiny_llama, source, tmp_path, outtype, tolerance):
    from productdesc.export import export_gguf

    full = export_gguf(tiny_llama, tmp_path / "f32.gguf", outtype="f32")
    small = export_gguf(tiny_llama, tmp_path / f"{outtype}.gguf", outtype=outtype)
    assert small.stat().st_size < 0.75 * full.stat().st_size
    model, tokenizer = source
    loaded, _ = _load(small)
    want = _logits(model, tokenizer)
    assert (_logits(loaded, tokenizer) - want).abs().max() <= tolerance * want.abs().max()


def test_an_adapter_is_merged_into_its_base_first(tiny_llama, source, tmp_path):
    from peft import LoraConfig, get_peft_model

    from productdesc.export import export_gguf

    base, tokenizer = source
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"])
    )
    with torch.no_grad():  # B starts at zero: make the adapter change the outputs
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    run = tmp_path / "run"
    peft_model.save_pretrained(run)
    tokenizer.save_pretrained(run)
    want = _logits(peft_model, tokenizer)
    peft_model.unload()  # the module fixture's model goes back to plain

    out = export_gguf(run, tmp_path / "tuned.gguf", outtype="f32")
    loaded, _ = _load(out)
    got = _logits(loaded, tokenizer)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, _logits(base, tokenizer), atol=1e-3)
    # the merge is removed; the Modelfile is export's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "run", "tuned.gguf"]


def test_other_architectures_and_types_are_refused_clearly(tiny_llama, tmp_path):
    from productdesc.errors import UserError
    from productdesc.export import export_gguf

    with pytest.raises(UserError, match="choose one of"):
        export_gguf(tiny_llama, tmp_path / "x.gguf", outtype="q2_k")
    other = tmp_path / "qwen"
    shutil.copytree(tiny_llama, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))
    with pytest.raises(UserError, match=r"llama\.cpp checkout"):
        export_gguf(other, tmp_path / "x.gguf")
    with pytest.raises(UserError, match="neither a model"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_smollm2_round_trips(smollm2_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc import models
    from productdesc.export import export_gguf

    source = smollm2_dir
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    out = export_gguf(source, tmp_path / "smollm2.gguf", outtype="f32")
    loaded, loaded_tokenizer = _load(out)
    for text in TEXTS:
        assert loaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    torch.testing.assert_close(
        _logits(loaded, tokenizer), _logits(model, tokenizer), rtol=1e-4, atol=1e-4
    )
    assert _special_ids(out)["eos_token_id"] == tokenizer.eos_token_id
    # what llama.cpp reads to tokenize and to stop, as the GGUF SmolLM2 ships in says it
    shipped = Path(json.loads((source / models._MARKER).read_text())["gguf"])
    assert _field(shipped, "tokenizer.ggml.pre") == ("smollm", gguf.GGUFValueType.STRING)
    for key in (
        "tokenizer.ggml.pre",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token",
        "general.quantization_version",
        "llama.vocab_size",
    ):
        assert _field(out, key) == _field(shipped, key), key


def test_a_sentencepiece_model_comes_back_through_resolve_model(
    sentencepiece_llama, tmp_path, monkeypatch
):
    """TinyLlama's tokenizer kind: exported, then read back as ``model_name=file.gguf``."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc import models
    from productdesc.errors import UserError
    from productdesc.export import export_gguf

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(sentencepiece_llama)
    model = AutoModelForCausalLM.from_pretrained(sentencepiece_llama, dtype=torch.float32)
    out = export_gguf(sentencepiece_llama, tmp_path / "sp.gguf", outtype="f32")
    assert gguf.GGUFReader(out).fields["tokenizer.ggml.model"].contents() == "llama"
    assert _field(out, "tokenizer.ggml.add_bos_token") == (True, gguf.GGUFValueType.BOOL)

    def check(converted: Path) -> None:
        loaded_tokenizer = AutoTokenizer.from_pretrained(converted)
        for text in TEXTS:
            ids = tokenizer(text).input_ids
            assert ids[0] == tokenizer.bos_token_id  # what the model was trained to see first
            assert loaded_tokenizer(text).input_ids == ids
            assert loaded_tokenizer.decode(ids, skip_special_tokens=True) == text
        assert loaded_tokenizer(*TEXTS).input_ids == tokenizer(*TEXTS).input_ids  # a pair
        for role in ("bos", "eos", "pad", "unk"):
            assert getattr(loaded_tokenizer, f"{role}_token_id") == getattr(
                tokenizer, f"{role}_token_id"
            )
        loaded = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
        torch.testing.assert_close(
            _logits(loaded, tokenizer), _logits(model, tokenizer), rtol=1e-5, atol=1e-5
        )

    converted = Path(models.resolve_model(out).path)
    check(converted)

    # A later conversion format gets its own cache entry; the earlier one is not used.
    monkeypatch.setattr(models, "_FORMAT", models._FORMAT + 1)
    newer = Path(models.resolve_model(out).path)
    assert newer != converted and newer.parent == converted.parent
    assert json.loads((newer / models._MARKER).read_text())["format"] == models._FORMAT
    check(newer)
    # Converting into a directory that holds anything else is refused, and nothing is lost.
    with pytest.raises(UserError, match="already holds something else"):
        models.convert_gguf(out, converted)
    assert json.loads((converted / models._MARKER).read_text())["format"] == models._FORMAT - 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="already holds something else"):
        models.convert_gguf(out, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in newer.parent.iterdir()) == sorted([converted.name, newer.name])


def test_attention_biases_follow_the_rotary_reordering(tiny_llama, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from productdesc.export import export_gguf

    config = AutoConfig.from_pretrained(tiny_llama)
    config.attention_bias = True
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_proj.bias"):
                param.normal_(std=0.5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    source = tmp_path / "biased"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    # GGUF has no key for attention_bias (llama.cpp loads the biases when present); tell
    # transformers' reader so that it keeps them
    loaded, _ = _load(
        export_gguf(source, tmp_path / "biased.gguf", outtype="f32"), attention_bias=True
    )
    torch.testing.assert_close(
        _logits(loaded, tokenizer), _logits(model, tokenizer), rtol=1e-5, atol=1e-5
    )


def test_the_pre_tokenizer_is_named_for_llama_cpp_or_refused(tiny_llama, tmp_path):
    from productdesc.errors import UserError
    from productdesc.export import export_gguf

    out = export_gguf(tiny_llama, tmp_path / "tiny.gguf", outtype="f32")
    pre = gguf.GGUFReader(out).fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[-1]).decode() == "gpt-2"  # a plain byte-level split
    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Punctuation", "behavior": "Isolated"}, spec["pre_tokenizer"]],
    }
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="pre-tokenizer"):
        export_gguf(other, tmp_path / "other.gguf")


def test_the_metadata_llama_cpp_writes_is_there(tiny_llama, source, tmp_path):
    from productdesc.export import export_gguf

    out = export_gguf(tiny_llama, tmp_path / "tiny.gguf")
    _, tokenizer = source
    T = gguf.GGUFValueType
    assert _field(out, "general.quantization_version") == (gguf.GGML_QUANT_VERSION, T.UINT32)
    rows = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    assert rows > len(tokenizer)  # the embedding's rows, not the tokenizer's size
    assert _field(out, "llama.vocab_size") == (rows, T.UINT32)
    assert tokenizer("a").input_ids[0] != tokenizer.bos_token_id
    assert _field(out, "tokenizer.ggml.add_bos_token") == (False, T.BOOL)
    # nothing tells llama.cpp's converter about EOS here, so it writes no key for it either
    assert _field(out, "tokenizer.ggml.add_eos_token") is None


def test_bos_and_eos_flags_are_what_the_tokenizer_does(tiny_llama, tmp_path):
    """tokenizer_config.json's flags, which the tokenizer ignores, do not reach the file."""
    from transformers import AutoTokenizer

    from productdesc.export import export_gguf

    flagged = tmp_path / "flagged"
    shutil.copytree(tiny_llama, flagged)
    config = json.loads((flagged / "tokenizer_config.json").read_text())
    config.update(add_bos_token=True, add_eos_token=True)
    (flagged / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(flagged)
    ids = tokenizer(TEXTS[0]).input_ids
    assert ids == tokenizer(TEXTS[0], add_special_tokens=False).input_ids  # adds neither
    out = export_gguf(flagged, tmp_path / "flagged.gguf")
    assert _field(out, "tokenizer.ggml.add_bos_token") == (False, gguf.GGUFValueType.BOOL)
    assert _field(out, "tokenizer.ggml.add_eos_token") == (False, gguf.GGUFValueType.BOOL)


@pytest.mark.parametrize(("outtype", "name"), [("q4_k_m", "Q4_K_M"), ("q5_k_m", "Q5_K_M")])
def test_k_quants_point_to_llama_quantize(tiny_llama, tmp_path, capsys, outtype, name):
    from productdesc.cli import main

    out = tmp_path / "model.gguf"
    assert main(["export", str(tiny_llama), "--out", str(out), "--outtype", outtype]) != 0
    err = capsys.readouterr().err.strip()
    assert f"llama-quantize model-f16.gguf {out} {name}" in err
    assert "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_scaled_rope_and_a_directory_as_output_are_refused(tiny_llama, tmp_path):
    from productdesc.errors import UserError
    from productdesc.export import export_gguf

    scaled = tmp_path / "llama31"
    shutil.copytree(tiny_llama, scaled)
    config = json.loads((scaled / "config.json").read_text())
    # transformers 5 writes the scaling into rope_parameters
    config["rope_parameters"] = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}
    (scaled / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="llama3"):
        export_gguf(scaled, tmp_path / "x.gguf")
    with pytest.raises(UserError, match="is a directory"):
        export_gguf(tiny_llama, tmp_path)
