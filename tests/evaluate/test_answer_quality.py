"""What answer quality rests on: the no-loop default, stopping at EOS, presets, early stopping,
template options, questions, and the hybrid that copies when retrieval is sure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from productdesc.config import (
    PRESETS,
    FineTuneConfig,
    GenerationConfig,
    LoraSettings,
    ModelConfig,
    TrainingConfig,
)
from productdesc.errors import UserError
from productdesc.generation.describer import Description
from productdesc.generation.hybrid import HybridDescriber, fit_copy_threshold

TITLES = ["soft cotton blanket", "kitchen knife set", "ballet tutu pink", "wireless mouse"]


def _repeated_4grams(ids: list[int]) -> int:
    grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
    return len(grams) - len(set(grams))


# -- decoding defaults ---------------------------------------------------------------------------
def test_default_decoding_has_a_guard_and_a_budget_that_fits_descriptions() -> None:
    default = GenerationConfig()
    assert default.no_repeat_ngram_size == 4
    assert not default.do_sample
    assert default.max_new_tokens == 384
    assert GenerationConfig(no_repeat_ngram_size=0).no_repeat_ngram_size == 0  # plain greedy


@pytest.mark.parametrize("value", [(10, 0.9), (-1, 1.05), (1.5, 1.1), "300", (True, 1.1)])
def test_length_penalty_rejects_what_transformers_would_misread(value: Any) -> None:
    with pytest.raises(ValueError, match="exponential_decay_length_penalty"):
        GenerationConfig(exponential_decay_length_penalty=value)


def test_length_penalty_round_trips_through_toml_lists() -> None:
    assert GenerationConfig(
        exponential_decay_length_penalty=[300, 1]
    ).exponential_decay_length_penalty == (
        300,
        1.0,
    )
    assert (
        GenerationConfig(exponential_decay_length_penalty="off").exponential_decay_length_penalty
        is None
    )


@pytest.fixture(scope="module")
def tiny_describer(tiny_llama: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc.generation.describer import Describer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    return Describer(model, tokenizer, fast=False)


def _new_ids(describer, title: str, **overrides: Any) -> list[int]:
    gen = GenerationConfig(max_new_tokens=48, **overrides)
    ids, mask = describer._left_pad(describer._encode([describer._render(title, None)]))
    return describer._generate_padded(ids, mask, gen)[0].tolist()


def test_the_default_guard_stops_the_loops_plain_greedy_falls_into(tiny_describer) -> None:
    # A random model is the loopiest there is: plain greedy repeats itself on these titles.
    plain = [_new_ids(tiny_describer, t, no_repeat_ngram_size=0) for t in TITLES]
    assert sum(_repeated_4grams(ids) for ids in plain) > 0
    for title in TITLES:
        assert _repeated_4grams(_new_ids(tiny_describer, title)) == 0, title


def test_length_penalty_ends_answers_near_the_budget(tiny_describer) -> None:
    eos = tiny_describer.tokenizer.eos_token_id
    plain = [_new_ids(tiny_describer, t, no_repeat_ngram_size=0) for t in TITLES]
    assert not any(eos in ids for ids in plain)  # a random model never stops by itself
    for title in TITLES:
        ids = _new_ids(tiny_describer, title, exponential_decay_length_penalty=(8, 3.0))
        assert eos in ids, title
    details = tiny_describer.describe_batch(
        TITLES, return_details=True, max_new_tokens=48, exponential_decay_length_penalty=(8, 3.0)
    )
    assert all(d.stopped_at_eos for d in details)


def test_min_new_tokens_holds_past_the_length_penalty_start(tiny_describer) -> None:
    """transformers' penalty would turn EOS's -inf (held back) into NaN, which wins: the
    describer starts the penalty where min_new_tokens lets EOS through instead."""
    eos = tiny_describer.tokenizer.eos_token_id
    for title in TITLES:
        ids = _new_ids(
            tiny_describer, title, min_new_tokens=20, exponential_decay_length_penalty=(2, 3.0)
        )
        assert eos in ids and ids.index(eos) >= 20, title


# -- presets -------------------------------------------------------------------------------------
def test_gpu_small_preset_is_a_valid_config_that_round_trips(tmp_path: Path) -> None:
    config = FineTuneConfig.preset("gpu-small")
    assert config.training.early_stopping_patience is not None
    assert config.training.eval_steps is not None
    config.to_toml(tmp_path / "run.toml")
    assert FineTuneConfig.from_toml(tmp_path / "run.toml") == config
    assert set(PRESETS) >= {"gpu-small"}


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(UserError, match="gpu-small"):
        FineTuneConfig.preset("gpu-huge")


def test_cli_train_starts_from_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from productdesc.cli import main

    assert main(["train", "--preset", "gpu-small", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'model_name = "smollm2-135m"' in printed
    assert "early_stopping_patience = 3" in printed
    assert main(["train", "--preset", "gpu-small", "--seed-recipe", "--print-config"]) != 0


# -- training: early stopping and template options -----------------------------------------------
RECORDS = [
    {"uid": f"r{i}-{j}", "title": f"{t} {j}", "content": c}
    for i, (t, c) in enumerate(
        [
            ("soft cotton blanket", "warm blanket for babies"),
            ("kitchen knife set", "stainless steel set of six"),
            ("ballet tutu pink", "tutu for girls dance"),
            ("wireless mouse", "rechargeable usb mouse for home office"),
        ]
    )
    for j in range(4)
]


def _tiny(tiny_llama: Path, **fields: Any) -> FineTuneConfig:
    training = dict(
        per_device_train_batch_size=4,
        max_steps=30,
        warmup_steps=0,
        learning_rate=5e-2,  # far too high on purpose: validation loss soon rises
        logging_steps=1,
        eval_steps=2,
        save_steps=None,
        packing=False,
    )
    training.update(fields.pop("training", {}))
    return FineTuneConfig(
        backend="transformers",
        model=ModelConfig(model_name=str(tiny_llama), max_seq_length=512, load_in_4bit=False),
        lora=LoraSettings(r=8, lora_alpha=16, use_gradient_checkpointing=False),
        training=TrainingConfig(**training),
        **fields,
    )


@pytest.mark.slow
def test_early_stopping_stops_on_validation_loss_and_keeps_the_best(
    tiny_llama: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    from productdesc.finetune import LoraFineTuner

    config = _tiny(tiny_llama, training={"early_stopping_patience": 2})
    result = LoraFineTuner(config).train(RECORDS[:12], RECORDS[12:], output_dir=tmp_path / "run")
    evals = {h["step"]: h["eval_loss"] for h in result.history if "eval_loss" in h}
    best_step = min(evals, key=evals.__getitem__)
    assert result.global_step < 30  # stopped before max_steps
    assert result.global_step - best_step == 2 * 2  # patience 2 evaluations, one each 2 steps
    assert result.eval_loss == pytest.approx(evals[best_step])
    # the adapter written is the best checkpoint's, not the last step's
    saved = load_file(tmp_path / "run" / "adapter_model.safetensors")
    best = load_file(
        tmp_path / "run" / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors"
    )
    last = load_file(
        tmp_path
        / "run"
        / "checkpoints"
        / f"checkpoint-{result.global_step}"
        / "adapter_model.safetensors"
    )
    assert all(torch.equal(saved[k], best[k]) for k in best)
    assert not all(torch.equal(saved[k], last[k]) for k in last)


def test_early_stopping_without_validation_data_is_a_clear_error(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from productdesc.finetune import LoraFineTuner

    config = _tiny(tiny_llama, training={"early_stopping_patience": 2, "max_steps": 2})
    with pytest.raises(UserError, match="early_stopping_patience needs validation data"):
        LoraFineTuner(config).train(RECORDS, output_dir=tmp_path / "run")


@pytest.mark.slow
def test_template_options_train_and_load_with_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    from productdesc.finetune import LoraFineTuner
    from productdesc.generation.describer import Describer
    from productdesc.retrieval import RetrievalIndex

    index = RetrievalIndex.build(RECORDS, show_progress=False)
    config = _tiny(
        tiny_llama,
        template="context",
        template_options={"k": 1, "leave_out_same_description": False},
        training={"max_steps": 2, "eval_steps": None},
    )
    tuner = LoraFineTuner(config, retriever=index)
    tuner.train(RECORDS, output_dir=tmp_path / "run")
    assert tuner.template.k == 1 and not tuner.template.leave_out_same_description
    loaded = Describer.from_pretrained(tmp_path / "run", backend="transformers", retriever=index)
    assert loaded.template.k == 1
    prompt = loaded.template.render("kitchen knife set 9")
    assert prompt.count("Product: ") == 1


def test_unknown_template_option_is_named(tiny_llama: Path) -> None:
    from productdesc.finetune import LoraFineTuner

    config = _tiny(tiny_llama, template_options={"kk": 1})
    with pytest.raises(UserError, match="kk"):
        LoraFineTuner(config).load()


# -- the hybrid ---------------------------------------------------------------------------------
def test_fit_copy_threshold_copies_only_where_it_pays() -> None:
    scores = [9.0, 8.0, 3.0, 2.0, 1.0]
    copy = [1.0, 0.9, 0.1, 0.05, 0.0]
    written = [0.2, 0.2, 0.2, 0.2, 0.2]
    assert fit_copy_threshold(scores, copy, written) == 8.0
    assert fit_copy_threshold(scores, [0.0] * 5, written) == float("inf")  # never pays
    # a tie: both records share a score, so one threshold copies both or neither
    assert fit_copy_threshold([5.0, 5.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.9, 0.2]) == float("inf")
    with pytest.raises(UserError):
        fit_copy_threshold([1.0], [1.0, 2.0], [0.0])


class _Writer:
    """A describer that writes a fixed answer and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[str], Any]] = []

    def describe_batch(self, titles, questions=None, *, progress=False, return_details=False):
        self.asked.append((list(titles), questions))
        return [Description(f"written: {t}", stopped_at_eos=True, new_tokens=3) for t in titles]


def test_hybrid_copies_sure_matches_and_writes_the_rest_in_order() -> None:
    from productdesc.retrieval import RetrievalIndex

    index = RetrievalIndex.build(
        [
            {"uid": "a", "title": "The Times Cryptic Crossword Book 4", "content": "The Times."},
            {"uid": "b", "title": "Stainless Steel Knife", "content": "A sharp knife."},
        ],
        show_progress=False,
    )
    sure = index.search("The Times Cryptic Crossword Book 5", 1)[0].score
    writer = _Writer()
    hybrid = HybridDescriber(writer, index, threshold=sure)
    titles = ["Wool Scarf", "The Times Cryptic Crossword Book 5", "Steel Spoon"]
    out = hybrid.describe_batch(titles, ["q1", "q2", "q3"], return_details=True)
    assert [d.text for d in out] == ["written: Wool Scarf", "The Times.", "written: Steel Spoon"]
    assert [d.source for d in out] == ["model", "retrieval", "model"]
    assert writer.asked == [(["Wool Scarf", "Steel Spoon"], ["q1", "q3"])]
    assert hybrid.describe("The Times Cryptic Crossword Book 5") == "The Times."
    never = HybridDescriber(writer, index, threshold=float("inf"))
    assert never.describe_batch(["The Times Cryptic Crossword Book 5"]) == [
        "written: The Times Cryptic Crossword Book 5"
    ]


# -- evaluate: questions and the hybrid system ---------------------------------------------------
COLOURS = ["Pink", "Blue", "Red", "Green", "Black", "White", "Grey", "Gold"]
MORE_COLOURS = [*COLOURS, "Teal", "Navy", "Lilac", "Coral", "Ivory", "Olive", "Plum", "Ruby"]


def _tutus_and_loader(
    tmp_path: Path, monkeypatch, colours: list[str] = COLOURS, split: str = "50/0/50"
) -> tuple[Path, Path, list]:
    """Prepared data of tutus, one a colour, a model directory, and the (path, writer) of
    each describer that evaluate loads."""
    import productdesc.evaluate.systems
    from productdesc import AmazonTitlesDataset, PrepareConfig

    lines = [
        json.dumps({"uid": f"u{i}", "title": f"Girls Ballet Tutu {c}", "content": f"A {c} tutu."})
        for i, c in enumerate(colours)
    ]
    (tmp_path / "trn.json").write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    AmazonTitlesDataset(tmp_path / "trn.json", PrepareConfig(split=split, workers=1)).prepare(
        data, progress=False
    )
    model = tmp_path / "model"
    model.mkdir()
    loaded: list[tuple[Path, _Writer]] = []

    class Loader:
        @staticmethod
        def from_pretrained(path, **kwargs):
            loaded.append((Path(path), _Writer()))
            return loaded[-1][1]

    monkeypatch.setattr(productdesc.evaluate.systems, "Describer", Loader)  # what evaluate calls
    return data, model, loaded


def test_evaluate_asks_seeded_questions_and_scores_the_hybrid(tmp_path: Path, monkeypatch) -> None:
    from productdesc.evaluate import evaluate
    from productdesc.prompts import QUESTIONS

    data, model, loaded = _tutus_and_loader(tmp_path, monkeypatch)
    result = evaluate(
        model, data, baselines=["retrieval"], questions=True, hybrid_threshold=0.0, n_resamples=50
    )
    assert list(result.runs) == ["retrieval", "tuned", "hybrid"]
    titles, questions = loaded[0][1].asked[0]
    starts = tuple(q.split("{title}")[0] for q in QUESTIONS)
    assert len(questions) == len(titles) and all(q.startswith(starts) for q in questions)
    assert [q for t, q in zip(titles, questions, strict=True) if t not in q] == []
    # threshold 0: every title with a match is copied, so the hybrid is retrieval here
    assert result.runs["hybrid"].outputs == result.runs["retrieval"].outputs
    assert set(result.runs["hybrid"].new_tokens) == {0}
    assert all(result.runs["hybrid"].stopped_at_eos)
    assert result.meta["questions"] is True


def test_the_hybrid_writes_with_the_tuned_model_beside_a_context_model(
    tmp_path: Path, monkeypatch
) -> None:
    from productdesc import FineTuneConfig
    from productdesc.evaluate import evaluate
    from productdesc.rundir import CONFIG_FILE

    data, model, loaded = _tutus_and_loader(tmp_path, monkeypatch)
    context = tmp_path / "context"
    context.mkdir()
    FineTuneConfig(template="context").to_toml(context / CONFIG_FILE)
    result = evaluate(
        model, data, baselines=[], context_model=context, hybrid_threshold=1e9, n_resamples=50
    )
    assert list(result.runs) == ["tuned", "context", "hybrid"]
    # the hybrid reuses the tuned answers: no model is loaded, nothing generated again
    assert [path.name for path, _ in loaded] == ["model", "context"]
    assert result.runs["hybrid"].outputs == result.runs["tuned"].outputs  # nothing copied
    assert result.runs["hybrid"].new_tokens == result.runs["tuned"].new_tokens
    assert result.runs["hybrid"].label.endswith("else tuned)")


def test_an_auto_hybrid_threshold_is_fitted_on_validation_with_the_loaded_tuned_model(
    tmp_path: Path, monkeypatch
) -> None:
    from productdesc import AmazonTitlesDataset
    from productdesc.evaluate import evaluate

    data, model, loaded = _tutus_and_loader(tmp_path, monkeypatch, MORE_COLOURS, "40/30/30")
    validation = [
        r["title"] for r in AmazonTitlesDataset.from_prepared(data).iter_split("validation")
    ]
    assert validation  # the split puts some tutus there
    result = evaluate(model, data, baselines=["retrieval"], hybrid_threshold="auto", n_resamples=50)
    # one model loaded: it answered the test split, then the validation split
    ((_, writer),) = loaded
    assert [titles for titles, _ in writer.asked][1] == validation
    # copying "A Pink tutu." for "A Blue tutu." beats "written: Girls Ballet Tutu Blue" here,
    # so the fitted threshold copies every title that has a neighbour
    threshold = result.meta["hybrid_threshold"]
    assert isinstance(threshold, float) and threshold != float("inf")
    assert result.meta["hybrid_fitted_on"] == len(validation)
    assert result.runs["hybrid"].outputs == result.runs["retrieval"].outputs
    assert f"copy at BM25 >= {threshold:g}" in result.runs["hybrid"].label
    from productdesc.evaluate.report import render_markdown

    report = render_markdown(result)
    (row,) = [line for line in report.splitlines() if line.startswith("| hybrid copies at |")]
    assert f"{threshold:g} (fitted on {len(validation)} validation records)" in row


@pytest.mark.parametrize(
    ("split", "evaluated", "message"),
    [
        ("50/0/50", "test", "which holds no record"),
        ("40/30/30", "validation", "which is the one evaluated"),
    ],
)
def test_an_auto_hybrid_threshold_needs_another_validation_split(
    tmp_path: Path, monkeypatch, split: str, evaluated: str, message: str
) -> None:
    from productdesc.evaluate import evaluate

    data, model, loaded = _tutus_and_loader(tmp_path, monkeypatch, MORE_COLOURS, split)
    with pytest.raises(UserError, match=message):
        evaluate(model, data, split=evaluated, hybrid_threshold="auto", baselines=[])
    assert loaded == []  # refused before any model loads
