"""Answering with context from trn.json: the index, leave-one-out, the template, and its users."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from productdesc.config import (
    FineTuneConfig,
    GenerationConfig,
    LoraSettings,
    ModelConfig,
    TrainingConfig,
)
from productdesc.errors import UserError
from productdesc.prompts import ALPACA_PREAMBLE, ContextTemplate, TemplateError, get_template
from productdesc.prompts.context import bind_retriever
from productdesc.retrieval import Hit, RetrievalIndex, normalize_title
from productdesc.retrieval.neighbours import neighbours
from productdesc.retrieval.store import build_index, open_index

# Families of near-identical products, as in the real catalogue; words from the tiny
# tokenizer's corpus (productdesc.testing) so the tiny model's texts stay short.
CATALOGUE = [
    {"uid": "1", "title": "ballet tutu pink", "content": "pink tutu for girls dance"},
    {"uid": "2", "title": "ballet tutu blue", "content": "blue tutu for girls dance"},
    {"uid": "3", "title": "kitchen knife set", "content": "stainless steel set of six"},
    {"uid": "4", "title": "wireless mouse black", "content": "rechargeable usb mouse"},
    {"uid": "5", "title": "wireless mouse white", "content": "white usb mouse for office"},
    {"uid": "6", "title": "soft cotton blanket", "content": "warm blanket for babies"},
    # the same product as uid 1 under another uid and spelling: must never be 1's context
    {"uid": "7", "title": "Ballet  Tutu, PINK", "content": "a pink ballet tutu, soft"},
    # a duplicate listing of 2's description under another title
    {"uid": "8", "title": "ballet tutu for girls", "content": "blue tutu for girls  dance"},
]


@pytest.fixture(scope="module")
def index() -> RetrievalIndex:
    return RetrievalIndex.build(CATALOGUE, show_progress=False)


@pytest.fixture(scope="module")
def template(index: RetrievalIndex) -> ContextTemplate:
    return ContextTemplate(eos_token="</s>", k=3).with_retriever(index)


def _context(prompt: str) -> str:
    return prompt.split("### Context:\n", 1)[1].split("\n\n### Input:\n", 1)[0]


def _context_titles(prompt: str) -> list[str]:
    return [
        line.removeprefix("Product: ")
        for line in _context(prompt).splitlines()
        if line.startswith("Product: ")
    ]


def _context_descriptions(prompt: str) -> list[str]:
    return [
        line.removeprefix("Description: ")
        for line in _context(prompt).splitlines()
        if line.startswith("Description: ")
    ]


# -- the template ---------------------------------------------------------------------------------
def test_exact_text() -> None:
    t = ContextTemplate(eos_token="</s>", k=2, max_context_chars=40)
    hits = [
        Hit("1", "Girls Ballet Tutu  Neon Pink", "3 layer ballet tutu", 2.0),
        Hit("5", "Girls Ballet Tutu Blue", "blue tutu, 12 inches, with a satin waistband", 1.0),
        Hit("9", "Third Tutu", "never shown: k is 2", 0.5),
    ]
    text = t.render("Girls Ballet Tutu Pink", description="A pink tutu.", context=hits)
    assert text == (
        f"{ALPACA_PREAMBLE}\n\n"
        "### Instruction:\nDescribe the product\n\n"
        "### Context:\n"
        "Product: Girls Ballet Tutu Neon Pink\nDescription: 3 layer ballet tutu\n\n"
        # 40 characters shared: the short description takes 19, the long one gets 21
        "Product: Girls Ballet Tutu Blue\nDescription: blue tutu, 12…\n\n"
        "### Input:\nGirls Ballet Tutu Pink\n\n"
        "### Response:\nA pink tutu.</s>"
    )
    pair = t.render_pair("Girls Ballet Tutu Pink", "A pink tutu.", context=hits)
    assert pair["prompt"] + pair["completion"] == text
    assert pair["completion"] == "A pink tutu.</s>"
    asked = t.render("Tutu", question="Is it for girls?", context=[])
    assert (
        "### Instruction:\nIs it for girls?\n\n### Context:\nNo similar product is known." in asked
    )
    assert t.parse(pair["prompt"] + "A pink tutu.</s>\n### Input:\nmore") == "A pink tutu."


def test_budget_is_shared_and_cut_at_words() -> None:
    long = " ".join(f"word{i}" for i in range(200))
    t = ContextTemplate(eos_token="</s>", k=3, max_context_chars=300)
    hits = [{"title": f"t{i}", "content": long} for i in range(3)] + [
        {"title": "t3", "content": "short"}
    ]
    descriptions = _context_descriptions(t.render("x", context=hits))
    assert len(descriptions) == 3  # k
    assert sum(len(d) for d in descriptions) <= 300
    for d in descriptions:
        assert d.endswith("…") and long.startswith(d[:-1])
        assert d[:-1].split()[-1] in long.split()  # whole words only
        assert len(d) > 80  # an equal share each, most of it used
    # a short description leaves its share to the long one
    two = _context_descriptions(t.render("x", context=[hits[3], hits[0]]))
    assert two[0] == "short" and 280 < len(two[1]) <= 295


def test_registered_with_options(index: RetrievalIndex) -> None:
    t = get_template("context", k=1, max_context_chars=500, retriever=index)
    assert isinstance(t, ContextTemplate) and t.retriever is index
    assert t == ContextTemplate(k=1, max_context_chars=500)  # the index is not compared
    with pytest.raises(TemplateError, match="no option"):
        get_template("context", budget=3)
    with pytest.raises(ValueError, match="'k'"):
        ContextTemplate(k=0)


def test_no_retriever_is_a_clear_error() -> None:
    t = ContextTemplate(eos_token="</s>")
    with pytest.raises(TemplateError, match="no retriever"):
        t.render("ballet tutu")
    with pytest.raises(TemplateError, match="no retriever"):
        t.training_pairs(CATALOGUE)  # at once, not at the first record


# -- retrieval and leave-one-out ----------------------------------------------------------------
def test_finds_the_planted_neighbour(template: ContextTemplate) -> None:
    prompt = template.render("pink tutu")
    titles = _context_titles(prompt)
    assert titles[0] in {"ballet tutu pink", "Ballet Tutu, PINK"}
    assert set(titles) <= {"ballet tutu pink", "Ballet Tutu, PINK", "ballet tutu blue",
                           "ballet tutu for girls"}  # fmt: skip
    assert _context_titles(template.render("cordless mouse"))[:2] == [
        "wireless mouse black",
        "wireless mouse white",
    ]
    # nothing related: no unrelated filler, the section says so
    assert _context(template.render("zzz qqq")) == "No similar product is known."


def test_a_record_never_sees_itself(template: ContextTemplate) -> None:
    pairs = list(template.training_pairs(CATALOGUE))
    assert len(pairs) == len(CATALOGUE)
    for record, pair in zip(CATALOGUE, pairs, strict=True):
        titles = _context_titles(pair["prompt"])
        own = normalize_title(record["title"])
        assert own not in {normalize_title(t) for t in titles}
        own_text = " ".join(record["content"].split())
        assert own_text not in _context_descriptions(pair["prompt"])
        assert pair["completion"] == record["content"] + "</s>"
    by_uid = {r["uid"]: p for r, p in zip(CATALOGUE, pairs, strict=True)}
    # uid 1 and uid 7 are one product: neither is the other's context
    assert "Ballet Tutu, PINK" not in _context_titles(by_uid["1"]["prompt"])
    assert "ballet tutu pink" not in _context_titles(by_uid["7"]["prompt"])
    # uid 8 repeats uid 2's description: 2 may see 8's title, never its description
    assert "blue tutu for girls dance" not in _context_descriptions(by_uid["2"]["prompt"])
    # unless asked to keep them: 8 is another listing, not 2 itself
    keep = ContextTemplate(eos_token="</s>", k=8, leave_out_same_description=False)
    kept = next(keep.with_retriever(template.retriever).training_pairs([CATALOGUE[1]]))
    assert "blue tutu for girls dance" in _context_descriptions(kept["prompt"])
    assert "ballet tutu blue" not in _context_titles(kept["prompt"])  # itself: never
    # at answer time (no leave-out) the product itself is the best context
    assert _context_titles(template.render("ballet tutu blue"))[0] == "ballet tutu blue"


def test_leave_one_out_without_uids(index: RetrievalIndex) -> None:
    record = {"title": "ballet tutu pink", "content": "pink tutu for girls dance"}
    hits = neighbours(index, record["title"], 8, leave_out=record)
    assert {h.uid for h in hits}.isdisjoint({"1", "7"})
    assert hits and all(h.score > 0 for h in hits)
    # duplicates among the neighbours take one place only
    contents = [" ".join(h.content.split()) for h in hits]
    assert len(contents) == len(set(contents))
    # a listing without a description (raw data) is no context
    sparse = RetrievalIndex.build(
        [*CATALOGUE, {"uid": "e", "title": "ballet tutu pink", "content": " "}], show_progress=False
    )
    assert "e" not in {h.uid for h in neighbours(sparse, "ballet tutu pink", 8)}


def test_real_sample_leave_one_out(real_sample: Path) -> None:
    import orjson

    records = [orjson.loads(line) for line in real_sample.read_bytes().splitlines()]
    index = RetrievalIndex.build(records, show_progress=False)
    template = ContextTemplate(eos_token="</s>").with_retriever(index)
    seen = 0
    for record, pair in zip(records, template.training_pairs(records), strict=True):
        titles = {normalize_title(t) for t in _context_titles(pair["prompt"])}
        assert normalize_title(record["title"]) not in titles
        seen += bool(titles)
        # the descriptions behind the (possibly cut) context: never the record's own text
        own = " ".join(record["content"].split())
        hits = neighbours(index, record["title"], template.k, leave_out=record)
        assert [" ".join(h.title.split()) for h in hits] == _context_titles(pair["prompt"])
        assert all(" ".join(h.content.split()) != own for h in hits)
    assert seen > 0.9 * len(records)  # almost every product has some context


# -- the index on disk ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CATALOGUE x 6 variants, prepared into train/validation/test shards."""
    from productdesc.data.config import PrepareConfig
    from productdesc.data.dataset import AmazonTitlesDataset

    work = tmp_path_factory.mktemp("context-data")
    with (work / "trn.json").open("w") as fh:
        for i in range(6):
            for r in CATALOGUE:
                row = {"uid": f"{r['uid']}-{i}", "title": f"{r['title']} {i}",
                       "content": f"{r['content']} size {i}", "target_ind": [], "target_rel": []}  # fmt: skip
                fh.write(json.dumps(row) + "\n")
    AmazonTitlesDataset(work / "trn.json", PrepareConfig(split="70/10/20", workers=1)).prepare(
        work / "out", progress=False
    )
    return work / "out"


def test_index_round_trips_beside_the_shards(prepared: Path, capsys) -> None:
    from productdesc.cli import main
    from productdesc.data.dataset import AmazonTitlesDataset

    data = AmazonTitlesDataset.from_prepared(prepared)
    train = list(data.iter_split("train"))
    in_memory = open_index(prepared, show_progress=False)  # no saved index yet: built
    assert len(in_memory) == len(train)
    assert main(["index", str(prepared)]) == 0
    assert f"indexed {len(train)} train titles" in capsys.readouterr().out
    loaded = open_index(prepared)  # now the saved one, memory-mapped
    assert loaded is not in_memory and len(loaded) == len(train)
    assert open_index(prepared / "retrieval").search("ballet tutu", 4) == loaded.search(
        "ballet tutu", 4
    )
    for query in ("pink tutu", "usb mouse", "knife"):
        assert loaded.search(query, 3) == in_memory.search(query, 3)
    # the train split only: no test record can be its own context at evaluation
    train_uids = {r["uid"] for r in train}
    assert {h.uid for h in loaded.search("tutu mouse knife blanket", len(loaded))} == train_uids
    other = build_index(prepared, prepared.parent / "idx-valid", split="validation",
                        show_progress=False)  # fmt: skip
    assert len(open_index(prepared.parent / "idx-valid")) == len(other)
    with pytest.raises(UserError, match="neither a retrieval index nor a prepared"):
        open_index(prepared.parent)
    assert main(["index", str(prepared.parent)]) == 2


def test_retriever_and_template_must_match(index: RetrievalIndex) -> None:
    alpaca = get_template("alpaca", eos_token="</s>")
    assert bind_retriever(alpaca) is alpaca
    with pytest.raises(UserError, match="shows no context"):
        bind_retriever(alpaca, index)
    with pytest.raises(UserError, match="needs a retrieval index"):
        bind_retriever(ContextTemplate())
    assert bind_retriever(ContextTemplate(), index).retriever is index


# -- the fine-tuner and the describer, on the tiny model ----------------------------------------
def tiny_config(tiny_llama: Path) -> FineTuneConfig:
    return FineTuneConfig(
        backend="transformers",
        template="context",
        model=ModelConfig(model_name=str(tiny_llama), max_seq_length=512, load_in_4bit=False),
        lora=LoraSettings(r=8, lora_alpha=16, use_gradient_checkpointing=False),
        training=TrainingConfig(
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            max_steps=3,
            warmup_steps=0,
            learning_rate=5e-3,
            logging_steps=1,
            save_steps=None,
            packing=False,
        ),
    )


@pytest.fixture(scope="module")
def context_run(tiny_llama: Path, prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    from productdesc.finetune import LoraFineTuner

    tuner = LoraFineTuner(tiny_config(tiny_llama))  # the index: the prepared data's own
    result = tuner.train(prepared, output_dir=tmp_path_factory.mktemp("ctx") / "run")
    return tuner, result


@pytest.mark.slow  # trains the tiny model (a few seconds)
def test_finetuner_trains_on_context_pairs(context_run, prepared: Path) -> None:
    from productdesc.data.dataset import AmazonTitlesDataset

    tuner, result = context_run
    assert result.global_step == 3 and result.first_loss is not None
    assert result.eval_loss is not None  # the validation split got context too
    train_ds, _ = tuner.datasets(prepared)
    records = list(AmazonTitlesDataset.from_prepared(prepared).iter_split("train"))
    assert len(train_ds) == len(records)
    with_context = 0
    for record, row in zip(records, train_ds, strict=True):
        assert row["prompt"].endswith(f"### Input:\n{record['title']}\n\n### Response:\n")
        titles = _context_titles(row["prompt"])
        assert normalize_title(record["title"]) not in {normalize_title(t) for t in titles}
        with_context += bool(titles)
    assert with_context == len(records)  # every product has family members in train
    assert 'template = "context"' in (result.output_dir / "productdesc_config.toml").read_text()


def test_finetuner_takes_records_with_a_retriever(tiny_llama: Path, index: RetrievalIndex) -> None:
    from productdesc.finetune import LoraFineTuner

    tuner = LoraFineTuner(tiny_config(tiny_llama), retriever=index)
    train_ds, _ = tuner.datasets(CATALOGUE)
    assert "Product: ballet tutu blue" in train_ds[0]["prompt"]
    with pytest.raises(UserError, match="needs a retrieval index"):
        LoraFineTuner(tiny_config(tiny_llama)).datasets(CATALOGUE)  # records: no default index


@pytest.mark.slow  # trains the tiny model (a few seconds)
def test_describer_renders_context_into_the_prompt(context_run, prepared: Path) -> None:
    from productdesc.generation.describer import Describer

    _, result = context_run
    with pytest.raises(UserError, match="needs a retrieval index"):
        Describer.from_pretrained(result.output_dir, backend="transformers")
    describer = Describer.from_pretrained(
        result.output_dir,
        backend="transformers",
        retriever=prepared,
        generation=GenerationConfig(max_new_tokens=6),
    )
    assert isinstance(describer.template, ContextTemplate)
    prompt = describer.template.render("wireless mouse")
    assert _context_titles(prompt)[0].startswith("wireless mouse")
    model, tokenizer = describer.model, describer.tokenizer
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=6, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    expected = describer.template.parse(
        tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    )
    assert describer.describe("wireless mouse") == expected
    # a plain model refuses an index it would ignore
    with pytest.raises(UserError, match="shows no context"):
        Describer(model, tokenizer, template="alpaca", retriever=prepared)


@pytest.mark.slow  # trains the tiny model (a few seconds)
def test_cli_describe_needs_the_index(context_run, prepared: Path, capsys) -> None:
    from productdesc.cli import main

    _, result = context_run
    assert main(["describe", "--model", str(result.output_dir), "wireless mouse"]) == 2
    assert "--context INDEX" in capsys.readouterr().err
    code = main(["describe", "--model", str(result.output_dir), "--context", str(prepared),
                 "--max-new-tokens", "4", "--backend", "transformers", "wireless mouse"])  # fmt: skip
    assert code == 0


# -- evaluation -------------------------------------------------------------------------------
class FakeDescriber:
    """Answers with the nearest neighbour's description when given an index, else nonsense."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, retriever: Any) -> None:
        self.retriever = retriever

    @classmethod
    def from_pretrained(cls, path: Any, **kwargs: Any) -> FakeDescriber:
        cls.calls.append({"path": Path(path), **kwargs})
        return cls(kwargs.get("retriever"))

    def describe_batch(
        self, titles: list[str], questions: Any = None, *, progress: bool, return_details: bool
    ) -> list:
        from productdesc.generation.describer import Description

        texts = [
            self.retriever.search(t, 1)[0].content if self.retriever else "product product"
            for t in titles
        ]
        return [Description(t, stopped_at_eos=True, new_tokens=len(t.split())) for t in texts]


def test_evaluate_reports_tuned_plus_context(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    import productdesc.evaluate.systems
    from productdesc.cli import main
    from productdesc.data.dataset import AmazonTitlesDataset
    from productdesc.evaluate import evaluate

    FakeDescriber.calls = []
    monkeypatch.setattr(
        productdesc.evaluate.systems, "Describer", FakeDescriber
    )  # what evaluate calls
    plain, with_context = tmp_path / "plain", tmp_path / "ctx"
    for path, template in ((plain, "alpaca"), (with_context, "context")):
        path.mkdir()
        (path / "adapter_config.json").write_text("{}")
        FineTuneConfig(template=template).to_toml(path / "productdesc_config.toml")

    result = evaluate(plain, prepared, context_model=with_context, out_dir=tmp_path / "report",
                      n_resamples=50, progress=False)  # fmt: skip
    assert list(result.runs) == ["retrieval", "base", "tuned", "context"]
    assert result.runs["context"].label == "tuned + context"
    # the same index (the train split's) for the baseline and the context; none for the rest
    given = [c.get("retriever") for c in FakeDescriber.calls]
    assert given[:2] == [None, None] and isinstance(given[2], RetrievalIndex)
    train = {r["content"] for r in AmazonTitlesDataset.from_prepared(prepared).iter_split("train")}
    assert set(result.runs["context"].outputs) <= train  # answered from the index
    context, base = result.intervals["context"]["rougeL"], result.intervals["base"]["rougeL"]
    assert context.low > base.high
    assert {"context - retrieval", "context - tuned"} <= set(result.differences)
    assert "| tuned + context |" in (tmp_path / "report" / "report.md").read_text()

    with pytest.raises(UserError, match="not trained with a template that shows context"):
        evaluate(plain, prepared, context_model=plain)
    code = main(["evaluate", "--model", str(plain), "--data", str(prepared), "--context",
                 str(with_context), "--no-base", "--out", str(tmp_path / "cli")])  # fmt: skip
    assert code == 0
    systems = json.loads((tmp_path / "cli" / "results.json").read_text())["systems"]
    assert list(systems) == ["retrieval", "tuned", "context"]
