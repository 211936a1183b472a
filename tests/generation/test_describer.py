"""Describer mechanics on the tiny random Llama: its text is noise, so tests check the plumbing
(prompt, padding, EOS, order, streaming, locking) against plain ``generate`` and each other."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from productdesc.config import FineTuneConfig, GenerationConfig
from productdesc.errors import UserError
from productdesc.finetune import CONFIG_FILE

# Lengths differ a lot, so a batch of them is left-padded by many tokens.
TITLES = [
    "Nice for Mice",
    "soft cotton blanket for babies, warm and durable, perfect for travel",
    "The Prophet",
    "kitchen knife stainless steel set of six with a wooden block and sharpener",
    "wireless mouse",
]
MAX_NEW = 12


@pytest.fixture(scope="module")
def loaded(tiny_llama: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        AutoTokenizer.from_pretrained(tiny_llama),
    )


@pytest.fixture(scope="module")
def describer(loaded):
    from productdesc.generation.describer import Describer

    model, tokenizer = loaded
    return Describer(model, tokenizer, generation=GenerationConfig(max_new_tokens=MAX_NEW))


def _plain_generate(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """New token ids from transformers' own greedy generate, one prompt, no padding."""
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_describe_is_the_parsed_answer_to_the_alpaca_prompt(describer, loaded):
    model, tokenizer = loaded
    prompt = describer.template.render("Nice for Mice")
    assert prompt.endswith("### Input:\nNice for Mice\n\n### Response:\n")
    new = _plain_generate(model, tokenizer, prompt, MAX_NEW)
    expected = describer.template.parse(tokenizer.decode(new, skip_special_tokens=True))

    answer = describer.describe("Nice for Mice")

    assert answer == expected
    assert "### " not in answer and "Below is an instruction" not in answer
    # The question replaces the instruction, so the prompt (and, here, the answer) changes.
    asked = describer.template.render("Nice for Mice", question="Is it good for toddlers?")
    new_q = _plain_generate(model, tokenizer, asked, MAX_NEW)
    assert describer.describe("Nice for Mice", "Is it good for toddlers?") == (
        describer.template.parse(tokenizer.decode(new_q, skip_special_tokens=True))
    )


def test_batch_keeps_order_and_matches_one_at_a_time(describer):
    one_by_one = [describer.describe(t) for t in TITLES]
    assert len(set(one_by_one)) > 1  # else an order mix-up could not show

    # batch_size 3 over 5 length-sorted titles: two batches, both left-padded.
    assert describer.describe_batch(TITLES, batch_size=3) == one_by_one
    assert describer.describe_batch(list(reversed(TITLES)), batch_size=5) == one_by_one[::-1]
    assert describer.describe_batch([]) == []


def test_batch_with_questions(describer):
    questions = [None, "Is it warm?", None, "Is it sharp?", "Does it need batteries?"]
    expected = [describer.describe(t, q) for t, q in zip(TITLES, questions, strict=True)]
    assert describer.describe_batch(TITLES, questions, batch_size=2) == expected
    with pytest.raises(UserError, match="5 titles but 2 questions"):
        describer.describe_batch(TITLES, ["a", "b"])


def test_stream_pieces_join_to_describe(describer):
    for title in TITLES[:2]:
        pieces = list(describer.stream(title))
        assert len(pieces) > 1
        assert "".join(pieces) == describer.describe(title)


def test_closing_a_stream_early_releases_the_describer(describer):
    stream = describer.stream(TITLES[0], max_new_tokens=60)
    next(stream)
    stream.close()  # stops generation; the lock must be free again
    done = []
    worker = threading.Thread(target=lambda: done.append(describer.describe(TITLES[2])))
    worker.start()
    worker.join(timeout=300)  # a deadlock guard, not a speed check
    assert done == [describer.describe(TITLES[2])]


def test_details_without_eos_run_to_max_new_tokens(describer):
    # Random weights never pick EOS within a few tokens, so every answer is cut by the limit.
    details = describer.describe_batch(TITLES, return_details=True, max_new_tokens=7)
    assert [d.new_tokens for d in details] == [7] * len(TITLES)
    assert not any(d.stopped_at_eos for d in details)
    assert [d.text for d in details] == describer.describe_batch(TITLES, max_new_tokens=7)


def test_details_report_the_eos_stop(loaded):
    """Swap the EOS row of the LM head with a token the model generates at step k: greedy
    decoding is unchanged before k and picks EOS at k, so the answer must stop there."""
    from productdesc.generation.describer import Describer, Description

    model, tokenizer = loaded
    plain = Describer(model, tokenizer)
    prompt = plain.template.render(TITLES[0])
    new = _plain_generate(model, tokenizer, prompt, 20)
    assert tokenizer.eos_token_id not in new
    k = next(i for i in range(3, len(new)) if new[i] > 3 and new[i] not in new[:i])
    stop_token, eos = new[k], tokenizer.eos_token_id

    swapped = copy.deepcopy(model)
    weight = swapped.lm_head.weight.data
    weight[[eos, stop_token]] = weight[[stop_token, eos]]
    describer = Describer(swapped, tokenizer, generation=GenerationConfig(max_new_tokens=20))

    expected_text = plain.template.parse(tokenizer.decode(new[:k], skip_special_tokens=True))
    [alone] = describer.describe_batch([TITLES[0]], return_details=True)
    assert alone == Description(text=expected_text, stopped_at_eos=True, new_tokens=k + 1)

    # In a batch the stopped row is padded after its EOS while the others go on.
    batch = describer.describe_batch(TITLES, return_details=True, batch_size=len(TITLES))
    assert batch[0] == alone
    for d, title in zip(batch, TITLES, strict=True):
        assert d == describer.describe_batch([title], return_details=True)[0]
        assert d.new_tokens <= 20
        assert d.stopped_at_eos or d.new_tokens == 20
    assert "".join(describer.stream(TITLES[0])) == expected_text


def test_concurrent_calls_from_threads_match_sequential(describer):
    sequential = [describer.describe(t) for t in TITLES[:4]]
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def call(i: int) -> None:
        try:
            start.wait()
            if i == 3:  # one stream among the plain calls
                results[i] = "".join(describer.stream(TITLES[i]))
            else:
                results[i] = describer.describe(TITLES[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert [results[i] for i in range(4)] == sequential


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_new_tokens": 99}, "min_new_tokens"),
        ({"temprature": 0.7}, "temprature"),
    ],
)
def test_bad_override_names_the_field(describer, overrides, field):
    with pytest.raises(UserError, match=field):
        describer.describe("Nice for Mice", **overrides)
    with pytest.raises(UserError, match=field):
        describer.describe_batch(TITLES, **overrides)
    with pytest.raises(UserError, match=field):
        describer.stream("Nice for Mice", **overrides)  # before the first piece


def test_overrides_apply_per_call_only(describer):
    [short] = describer.describe_batch(["Nice for Mice"], return_details=True, max_new_tokens=3)
    assert short.new_tokens == 3
    [default] = describer.describe_batch(["Nice for Mice"], return_details=True)
    assert default.new_tokens == MAX_NEW


def test_missing_pad_token_is_set_distinct_from_eos(tiny_llama, loaded, caplog):
    from transformers import AutoTokenizer

    from productdesc.generation.describer import Describer

    model, _ = loaded
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token  # the usual shortcut, which hides EOS
    with caplog.at_level(logging.INFO):
        describer = Describer(model, tokenizer, generation=GenerationConfig(max_new_tokens=4))
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    assert tokenizer.pad_token == "<unk>"
    assert "'<unk>'" in caplog.text  # the change is logged
    assert describer.describe_batch(TITLES[:2], batch_size=2) == [
        describer.describe(t) for t in TITLES[:2]
    ]


# -- loading from a directory ------------------------------------------------------------------
def _backend_ready() -> bool:
    try:
        from productdesc.backends import get_backend
    except ImportError:
        return False
    return callable(getattr(get_backend("transformers"), "load_for_inference", None))


needs_backend = pytest.mark.skipif(
    not _backend_ready(),
    reason="productdesc.backends.get_backend(...).load_for_inference is not available yet",
)


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """A PEFT LoRA adapter on the tiny model with non-zero B (so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # As a training run leaves it: the run's config names its backend and template.
    FineTuneConfig(backend="transformers", template="alpaca").to_toml(out / CONFIG_FILE)
    return out, peft_model, tokenizer


@needs_backend
def test_from_pretrained_adapter_dir_matches_in_memory_model(adapter_dir, loaded):
    from productdesc.generation.describer import Describer

    path, peft_model, tokenizer = adapter_dir
    gen = GenerationConfig(max_new_tokens=MAX_NEW)
    in_memory = Describer(peft_model, tokenizer, generation=gen).describe_batch(TITLES[:3])

    loaded_dir = Describer.from_pretrained(path, generation=gen)  # backend "auto": the run's
    assert loaded_dir.backend.name == "transformers"
    assert loaded_dir.describe_batch(TITLES[:3]) == in_memory

    base = Describer.from_pretrained(path, backend="transformers", generation=gen, base_only=True)
    model, base_tokenizer = loaded
    plain_base = Describer(model, base_tokenizer, generation=gen).describe_batch(TITLES[:3])
    assert base.describe_batch(TITLES[:3]) == plain_base
    assert plain_base != in_memory  # the adapter matters, so the comparisons above can fail

    merged = Describer.from_pretrained(
        path, backend="transformers", generation=gen, merge_lora=True
    )
    assert not hasattr(merged.model, "peft_config")
    assert merged.describe_batch(TITLES[:3]) == in_memory


@needs_backend
def test_a_run_trained_with_a_backend_not_installed_here_loads_with_another(
    adapter_dir, tmp_path, monkeypatch
):
    """A run trained with Unsloth on a GPU machine, loaded where Unsloth is missing."""
    import shutil

    from productdesc.backends import backends
    from productdesc.generation.describer import Describer

    path, peft_model, tokenizer = adapter_dir
    gen = GenerationConfig(max_new_tokens=MAX_NEW)
    run = tmp_path / "run"
    shutil.copytree(path, run)
    FineTuneConfig(backend="unsloth", template="alpaca").to_toml(run / CONFIG_FILE)
    monkeypatch.setattr(backends.get("unsloth"), "is_available", classmethod(lambda cls: False))
    loaded_dir = Describer.from_pretrained(run, generation=gen)
    assert loaded_dir.backend.name == "transformers"
    expected = Describer(peft_model, tokenizer, generation=gen).describe_batch(TITLES[:2])
    assert loaded_dir.describe_batch(TITLES[:2]) == expected
    with pytest.raises(UserError, match="not installed"):  # asked for by name, it is refused
        Describer.from_pretrained(run, backend="unsloth")


def test_from_pretrained_rejects_a_missing_dir_and_4bit_merge(tmp_path):
    from productdesc.generation.describer import Describer

    with pytest.raises(UserError, match="not found"):
        Describer.from_pretrained(tmp_path / "nope")
    with pytest.raises(UserError, match="merge_lora"):
        Describer.from_pretrained(tmp_path, merge_lora=True, load_in_4bit=True)


# -- CLI ---------------------------------------------------------------------------------------
@needs_backend
def test_cli_streams_one_title(adapter_dir, loaded, capsys):
    from productdesc.cli import main
    from productdesc.generation.describer import Describer

    path, peft_model, tokenizer = adapter_dir
    gen = GenerationConfig(max_new_tokens=8)
    expected = Describer(peft_model, tokenizer, generation=gen).describe("Nice for Mice")
    argv = ["describe", "--model", str(path), "--max-new-tokens", "8"]
    assert main([*argv, "Nice for Mice"]) == 0
    assert capsys.readouterr().out == expected + "\n"

    model, base_tokenizer = loaded
    baseline = Describer(model, base_tokenizer, generation=gen).describe("Nice for Mice")
    assert baseline != expected
    assert main([*argv, "--backend", "transformers", "--base-only", "Nice for Mice"]) == 0
    assert capsys.readouterr().out == baseline + "\n"


@needs_backend
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth not installed")
def test_cli_on_unsloth_gives_the_same_answer_and_a_clean_stdout(adapter_dir):
    """In a fresh process, as Unsloth must be imported before transformers; its banners go to
    stderr so stdout is the answer alone."""
    from productdesc.generation.describer import Describer

    path, peft_model, tokenizer = adapter_dir
    expected = Describer(
        peft_model, tokenizer, generation=GenerationConfig(max_new_tokens=8)
    ).describe("Nice for Mice")
    argv = ["describe", "--model", str(path), "--backend", "unsloth", "--max-new-tokens", "8"]
    done = subprocess.run(
        [sys.executable, "-m", "productdesc.cli", *argv, "Nice for Mice"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Unsloth" in done.stderr
    assert done.stdout == expected + "\n"


@needs_backend
def test_cli_batches_a_file_into_jsonl(adapter_dir, tmp_path, capsys):
    from productdesc.cli import main
    from productdesc.generation.describer import Describer

    path, peft_model, tokenizer = adapter_dir
    titles_file = tmp_path / "titles.txt"
    titles_file.write_text("\n".join([TITLES[0], "", TITLES[1], TITLES[2]]) + "\n")
    out = tmp_path / "answers.jsonl"
    code = main(
        [
            "describe",
            "--model",
            str(path),
            "--backend",
            "transformers",
            "--file",
            str(titles_file),
            "--out",
            str(out),
            "--max-new-tokens",
            "6",
            "--question",
            "Is it good for toddlers?",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    describer = Describer(peft_model, tokenizer, generation=GenerationConfig(max_new_tokens=6))
    q = "Is it good for toddlers?"
    assert rows == [
        {
            "title": t,
            "question": q,
            "answer": describer.describe(t, q),
            "stopped_at_eos": False,
            "new_tokens": 6,
            "source": "model",
        }
        for t in TITLES[:3]
    ]
    err = capsys.readouterr().err
    assert "skipped 1 blank line" in err
    assert "described 3 titles" in err and "new tokens/s" in err


@needs_backend
def test_cli_hybrid_copies_a_known_title_and_writes_the_rest(adapter_dir, tmp_path, capsys):
    """`describe --hybrid SCORE --index DATA`: a title the index knows gets its description,
    word for word, streamed or batched; a title it does not know is generated."""
    from productdesc import AmazonTitlesDataset, PrepareConfig
    from productdesc.cli import main
    from productdesc.generation.describer import Describer

    path, peft_model, tokenizer = adapter_dir
    known = {"uid": "k1", "title": "Nice for Mice", "content": "A cheese scented soap, 3 oz."}
    other = {"uid": "k2", "title": "Garden hose reel", "content": "Holds 100 feet of hose."}
    (tmp_path / "trn.json").write_text(json.dumps(known) + "\n" + json.dumps(other) + "\n")
    data = tmp_path / "data"
    config = PrepareConfig(split="100/0/0", workers=1)
    AmazonTitlesDataset(tmp_path / "trn.json", config).prepare(data, progress=False)
    common = ["describe", "--model", str(path), "--backend", "transformers"]
    common += ["--max-new-tokens", "6", "--hybrid", "0.5", "--index", str(data)]

    assert main([*common, "Nice for Mice"]) == 0
    assert capsys.readouterr().out == known["content"] + "\n"

    titles = tmp_path / "titles.txt"
    titles.write_text("Nice for Mice\nThe Prophet\n")
    out = tmp_path / "answers.jsonl"
    assert main([*common, "--file", str(titles), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    describer = Describer(peft_model, tokenizer, generation=GenerationConfig(max_new_tokens=6))
    assert [(r["answer"], r["source"], r["new_tokens"]) for r in rows] == [
        (known["content"], "retrieval", 0),
        (describer.describe("The Prophet"), "model", 6),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["describe", "--model", "m"], "either a TITLE or --file"),
        (["describe", "--model", "m", "t", "--out", "o.jsonl"], "--out needs --file"),
        (["describe", "--model", "m", "t", "--max-new-tokens", "0"], "max_new_tokens"),
        (["describe", "--model", "m", "--file", "missing.txt"], "titles file not found"),
        (["describe", "--model", "m", "t", "--hybrid", "2"], "--hybrid needs the known products"),
        (["describe", "--model", "m", "t", "--index", "d"], "give --hybrid SCORE too"),
        (["describe", "--model", "does-not-exist", "t"], "model directory not found"),
    ],
)
def test_cli_user_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    from productdesc.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_no_repeat_ngram_size_blocks_repeated_ngrams(describer):
    from productdesc.generation.describer import evolve_generation

    ids, mask = describer._left_pad(describer._encode([describer._render("Nice for Mice", None)]))

    def repeated_bigrams(gen):
        with describer._lock:
            new = describer._generate_padded(ids, mask, gen)[0].tolist()
        seq = ids[0].tolist() + new
        # generated tokens that complete a bigram seen earlier in the sequence
        return sum(
            (seq[j - 1], seq[j]) in set(itertools.pairwise(seq[:j]))
            for j in range(ids.shape[1], len(seq))
        )

    plain = evolve_generation(describer.generation, max_new_tokens=40, min_new_tokens=40)
    assert repeated_bigrams(plain) > 0  # the random model loops: the check below can fail
    assert repeated_bigrams(evolve_generation(plain, no_repeat_ngram_size=2)) == 0


def test_answers_also_stop_at_the_models_declared_end_tokens(loaded):
    """A model whose generation_config names a second end token (Llama 3's ``<|eot_id|>``
    beside ``<|end_of_text|>``) stops there too, reported as an EOS stop."""
    from productdesc.generation.describer import Describer

    model, tokenizer = loaded
    plain = Describer(model, tokenizer, generation=GenerationConfig(max_new_tokens=MAX_NEW))
    new = _plain_generate(model, tokenizer, plain.template.render(TITLES[0]), MAX_NEW)
    k = next(i for i in range(2, len(new)) if new[i] not in new[:i])
    declared = copy.deepcopy(model)
    declared.generation_config.eos_token_id = [tokenizer.eos_token_id, new[k]]
    stops = Describer(declared, tokenizer, generation=GenerationConfig(max_new_tokens=MAX_NEW))
    [detail] = stops.describe_batch([TITLES[0]], return_details=True)
    assert detail.stopped_at_eos and detail.new_tokens == k + 1
    assert detail.text == plain.tokenizer.decode(new[:k], skip_special_tokens=True).strip()
