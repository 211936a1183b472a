"""The evaluation runner and report: a fake describer for the plumbing, the tiny Llama for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from productdesc.config import GenerationConfig
from productdesc.errors import UserError
from productdesc.evaluate import evaluate, read_loss_history, write_report
from productdesc.evaluate.report import REPORT_FILES
from productdesc.generation.describer import Description

FAMILIES = {
    "Girls Ballet Tutu": "A {x} ballet tutu for girls, three layers of soft tulle.",
    "Stainless Steel Kitchen Knife": "A {x} stainless steel knife that stays sharp.",
    "Wireless USB Mouse": "A quiet {x} wireless mouse with a USB receiver.",
    "Soft Cotton Baby Blanket": "A warm {x} cotton blanket for babies, machine washable.",
}
VARIANTS = ["pink", "blue", "black", "white", "red", "green", "large", "small", "purple", "grey"]
SCRIPT = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared directory of 40 synthetic records, split 50/0/50 by title hash."""
    from productdesc import AmazonTitlesDataset, PrepareConfig

    root = tmp_path_factory.mktemp("eval-data")
    lines = []
    for f, (family, template) in enumerate(FAMILIES.items()):
        for v, variant in enumerate(VARIANTS):
            record = {
                "uid": f"U{f}{v}",
                "title": f"{family} {variant.title()}",
                "content": template.format(x=variant),
            }
            lines.append(json.dumps(record))
    (root / "trn.json").write_text("\n".join(lines) + "\n")
    dataset = AmazonTitlesDataset(root / "trn.json", PrepareConfig(split="50/0/50", workers=1))
    dataset.prepare(root / "prepared", progress=False)
    return root / "prepared"


class FakeDescriber:
    """The Describer interface the runner uses; answers depend on the model directory."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, path: Path, base_only: bool, generation: GenerationConfig) -> None:
        self.path, self.base_only, self.generation = path, base_only, generation

    @classmethod
    def from_pretrained(cls, path: Any, **kwargs: Any) -> FakeDescriber:
        cls.calls.append({"path": Path(path), **kwargs})
        return cls(Path(path), kwargs.get("base_only", False), kwargs["generation"])

    def describe_batch(
        self, titles: list[str], questions: Any = None, *, progress: bool, return_details: bool
    ) -> list:
        assert return_details
        out = []
        for i, title in enumerate(titles):
            if self.base_only:
                text = "product product product product product product product product"
            elif self.path.name == "model-b":  # knows the catalogue: the true description
                family, variant = title.rsplit(" ", 1)
                text = FAMILIES[family].format(x=variant.lower())
            else:
                text = f"{SCRIPT} A {title.split()[-1].lower()} {' '.join(title.split()[:-1]).lower()}."
            out.append(Description(text, stopped_at_eos=i % 2 == 0, new_tokens=len(text.split())))
        return out


@pytest.fixture
def fake_describer(monkeypatch: pytest.MonkeyPatch) -> type[FakeDescriber]:
    import productdesc.evaluate.systems

    FakeDescriber.calls = []
    monkeypatch.setattr(
        productdesc.evaluate.systems, "Describer", FakeDescriber
    )  # what evaluate calls
    return FakeDescriber


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")  # what tells a base apart from the tuned
    return path


def _train_and_test(prepared: Path) -> tuple[list[dict], list[dict]]:
    from productdesc import AmazonTitlesDataset

    data = AmazonTitlesDataset.from_prepared(prepared)
    return list(data.iter_split("train")), list(data.iter_split("test"))


def test_fake_run_scores_every_system_on_the_same_records(
    prepared, model_dir, fake_describer, tmp_path
):
    generation = GenerationConfig(max_new_tokens=16, batch_size=4)
    result = evaluate(
        model_dir, prepared, out_dir=tmp_path / "out", generation=generation, n_resamples=200
    )
    train, test = _train_and_test(prepared)
    assert [r["title"] for r in result.records] == [r["title"] for r in test]
    assert list(result.runs) == ["retrieval", "base", "tuned"]
    # same decoding settings for base and tuned; base without the adapter
    assert [(c["base_only"], c["generation"]) for c in fake_describer.calls] == [
        (True, generation),
        (False, generation),
    ]
    # retrieval answers with train descriptions only, the nearest family's
    train_contents = {r["content"] for r in train}
    for record, answer in zip(test, result.runs["retrieval"].outputs, strict=True):
        assert answer in train_contents
        family = record["title"].rsplit(" ", 1)[0]
        assert answer.split()[-2:] == FAMILIES[family].split()[-2:]
    assert result.intervals["retrieval"]["rougeL"].value > result.intervals["base"]["rougeL"].value
    assert "eos" not in result.intervals["retrieval"]
    assert result.intervals["tuned"]["eos"].value == pytest.approx(
        sum(i % 2 == 0 for i in range(len(test))) / len(test)
    )
    assert result.intervals["base"]["repetition"].value > 0.5
    assert set(result.differences) == {"tuned - base", "tuned - retrieval"}


def test_report_files(prepared, model_dir, fake_describer, tmp_path):
    out = tmp_path / "out"
    result = evaluate(model_dir, prepared, out_dir=out, n_resamples=100, samples=3)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.md", "results.json"]
    page = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for text in (page, markdown):
        assert "<script>" not in text
        assert "&lt;script&gt;" in text
    # one metrics row per system
    metrics_md = markdown.split("## Metrics")[1].split("##")[0].splitlines()
    metrics_html = page.split("<h2>Metrics</h2>")[1].split("<h2>")[0]
    for run in result.runs.values():
        assert metrics_html.count(f"<th>{run.label}</th>") == 1
        assert sum(line.startswith(f"| {run.label} |") for line in metrics_md) == 1
    assert "No training curve" in page and "No training curve" in markdown
    assert page.count("<tr>") >= 3 + 3  # metrics rows + 3 sampled records
    data = orjson.loads((out / "results.json").read_bytes())
    assert data["meta"]["records"] == len(result.records)
    assert data["systems"]["tuned"]["metrics"]["rougeL"]["value"] == pytest.approx(
        result.intervals["tuned"]["rougeL"].value
    )
    first = data["records"][0]
    assert set(first["systems"]) == {"retrieval", "base", "tuned"}
    assert first["systems"]["tuned"]["text"] == result.runs["tuned"].outputs[0]
    assert 0 <= first["systems"]["base"]["rougeL"] <= 1
    assert "eos" not in first["systems"]["retrieval"]


def test_loss_curve_is_drawn_and_embedded(prepared, model_dir, fake_describer, tmp_path):
    history = [{"step": s, "loss": 3.0 / s, "epoch": s / 10} for s in range(1, 11)]
    history[4]["eval_loss"] = 0.9
    (model_dir / "loss_history.json").write_text(json.dumps(history))
    out = tmp_path / "out"
    evaluate(model_dir, prepared, out_dir=out, baselines=(), n_resamples=50)
    png = (out / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "![training loss](loss.png)" in (out / "report.md").read_text()


def test_malformed_loss_history_does_not_sink_the_report(model_dir, caplog):
    (model_dir / "loss_history.json").write_text("{not json")
    assert read_loss_history(model_dir) is None
    assert "not valid JSON" in caplog.text
    (model_dir / "loss_history.json").write_text('{"step": 1}')
    assert read_loss_history(model_dir) is None


def test_compare_without_base(prepared, model_dir, fake_describer, tmp_path):
    other = tmp_path / "model-b"
    other.mkdir()
    result = evaluate(model_dir, prepared, baselines=("retrieval",), compare=other, limit=5)
    assert list(result.runs) == ["retrieval", "tuned", "compare"]
    assert len(result.records) == 5
    assert [c["path"] for c in fake_describer.calls] == [model_dir, other]
    assert set(result.differences) == {"tuned - retrieval", "compare - tuned"}
    # B answers with the true descriptions: clearly better, and perfect
    assert result.differences["compare - tuned"]["rougeL"].low > 0
    assert result.intervals["compare"]["rougeL"] == (1.0, 1.0, 1.0)


def test_saved_index_is_used(prepared, model_dir, fake_describer, tmp_path):
    from productdesc.retrieval import RetrievalIndex

    data = tmp_path / "data"
    import shutil

    shutil.copytree(prepared, data)
    RetrievalIndex.from_prepared(data, show_progress=False).save(data / "retrieval")
    result = evaluate(model_dir, data, baselines=("retrieval",), n_resamples=10)
    assert result.runs["retrieval"].source == str(data / "retrieval")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baselines": ("base", "oracle")}, "unknown baseline"),
        ({"limit": 0}, "positive"),
        ({"split": "holdout"}, "no split 'holdout'"),
        ({"compare": "/nonexistent/model"}, "compare model directory not found"),
    ],
)
def test_bad_arguments_are_user_errors(prepared, model_dir, fake_describer, kwargs, message):
    with pytest.raises(UserError, match=message):
        evaluate(model_dir, prepared, **kwargs)
    with pytest.raises(UserError, match="model directory not found"):
        evaluate(model_dir / "missing", prepared)


def test_base_needs_an_adapter(prepared, model_dir, fake_describer):
    (model_dir / "adapter_config.json").unlink()  # a merged model: base and tuned are one
    with pytest.raises(UserError, match="no LoRA adapter"):
        evaluate(model_dir, prepared)
    assert fake_describer.calls == []  # refused before loading anything
    result = evaluate(model_dir, prepared, baselines=("retrieval",), n_resamples=10)
    assert list(result.runs) == ["retrieval", "tuned"]


def test_cli(prepared, model_dir, fake_describer, capsys):
    from productdesc.cli import main

    code = main(
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--data",
            str(prepared),
            "--limit",
            "4",
            "--no-base",
            "--max-new-tokens",
            "32",
        ]
    )
    assert code == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith("4 test records")
    assert [line.split()[0] for line in lines[2:]] == ["retrieval", "tuned"]
    assert (model_dir / "evaluation-test" / "report.html").is_file()
    assert fake_describer.calls[0]["generation"].max_new_tokens == 32
    assert main(["evaluate", "--model", str(model_dir), "--data", str(model_dir / "nope")]) == 2
    assert "data directory not found" in capsys.readouterr().err


def test_report_rebuilds_from_results(prepared, model_dir, fake_describer, tmp_path):
    # write_report is usable on its own (e.g. after changing the sample size)
    result = evaluate(model_dir, prepared, n_resamples=20)
    written = write_report(result, tmp_path / "again", title="SmolLM2 on 600 records")
    assert set(written) == set(REPORT_FILES) - {"loss.png"}
    assert all(path.is_file() for path in written.values())
    assert written["report.md"].read_text().startswith("# SmolLM2 on 600 records\n")
    assert "<h1>SmolLM2 on 600 records</h1>" in written["report.html"].read_text()


@pytest.fixture(scope="module")
def tiny_run(tiny_llama: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (few-step) LoraFineTuner run on the tiny random Llama and the prepared train split."""
    from productdesc.config import FineTuneConfig, LoraSettings, ModelConfig, TrainingConfig
    from productdesc.finetune import LoraFineTuner

    config = FineTuneConfig(
        backend="transformers",
        model=ModelConfig(model_name=str(tiny_llama), max_seq_length=256, load_in_4bit=False),
        lora=LoraSettings(r=8, lora_alpha=16, use_gradient_checkpointing=False),
        training=TrainingConfig(
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            max_steps=6,
            warmup_steps=0,
            learning_rate=5e-3,  # large, so six steps move the adapter away from the base
            logging_steps=1,
            save_steps=None,
        ),
    )
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    LoraFineTuner(config).train(prepared, output_dir=out)
    return out


@pytest.mark.slow
def test_report_from_a_tiny_run(prepared, tiny_run, tmp_path):
    out = tmp_path / "report"
    generation = GenerationConfig(max_new_tokens=12, batch_size=4)
    result = evaluate(tiny_run, prepared, out_dir=out, limit=6, generation=generation,
                      backend="transformers", n_resamples=100, progress=False)  # fmt: skip
    assert list(result.runs) == ["retrieval", "base", "tuned"]
    for name in ("base", "tuned"):
        run = result.runs[name]
        assert len(run.outputs) == 6
        assert all(0 < n <= 12 for n in run.new_tokens)
        assert all(
            n == 12 for n, eos in zip(run.new_tokens, run.stopped_at_eos, strict=True) if not eos
        )
    assert result.runs["base"].outputs != result.runs["tuned"].outputs  # the adapter is applied
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # loss.png included
    assert [row["step"] for row in result.loss_history] == [1, 2, 3, 4, 5, 6]
    page = (out / "report.html").read_text()
    for run in result.runs.values():
        assert f"<th>{run.label}</th>" in page
    data = orjson.loads((out / "results.json").read_bytes())
    assert data["meta"]["generation"]["max_new_tokens"] == 12
    assert "template" in data["meta"]["run_config"]
    assert set(data["systems"]["tuned"]["metrics"]) >= {"rougeL", "bleu", "chrf", "eos"}
