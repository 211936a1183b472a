"""The prompt travels with the model: the chat template saved by ``train`` (in ``run/``,
``run/merged/`` and the GGUF) and the Ollama Modelfile written by ``export`` give the training
prompt byte for byte.

Ollama itself cannot be installed here: its TEMPLATE is rendered by :func:`render_go`, which
runs the Go text/template subset the Modelfile uses (``{{ if .System }}``, ``{{ else }}``,
``{{ end }}``, fields, string literals) and cuts at ``{{ .Response }}`` as Ollama does for the
turn it generates.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import attrs
import pytest

from productdesc.config import FineTuneConfig
from productdesc.finetune import LoraFineTuner
from productdesc.prompts import ContextTemplate, PromptTemplate, seeded_question
from test_finetune import RECORDS, tiny_config

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
jinja2 = pytest.importorskip("jinja2")

QUESTION_SHARE = 0.5
SEED = 3407  # tiny_config's training.seed, which seeds the questions


def messages(title: str, question: str | None = None, answer: str | None = None) -> list[dict]:
    """A chat request as clients send it: the title, a question on the lines after it."""
    user = title if question is None else f"{title}\n{question}"
    turns = [{"role": "user", "content": user}]
    return turns if answer is None else [*turns, {"role": "assistant", "content": answer}]


def render_jinja(template: str, turns: list[dict], *, trim: bool = True) -> str:
    """A chat template rendered as transformers and llama.cpp do (``trim=True``) or plainly."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=turns, add_generation_prompt=True)


def render_go(template: str, **fields: str) -> str:
    """Ollama's rendering of the turn to generate: the template up to ``{{ .Response }}``."""
    template = template.split("{{ .Response }}", 1)[0]
    out, keep = [], [True]  # keep: whether each open {{ if }} branch writes
    for literal, action in re.findall(
        r'(.*?)(?:\{\{ ((?:"(?:\\.|[^"\\])*"|[^}])*?) \}\}|$)', template, re.S
    ):
        if all(keep):
            out.append(literal)
        if action.startswith("if ."):
            keep.append(bool(fields.get(action[4:], "")))
        elif action == "else":
            keep[-1] = not keep[-1]
        elif action == "end":
            keep.pop()
        elif action and all(keep):
            out.append(json.loads(action) if action.startswith('"') else fields.get(action[1:], ""))
    assert keep == [True], "unbalanced {{ if }} / {{ end }}"
    return "".join(out)


def parse_modelfile(path: Path) -> list[tuple[str, str]]:
    """``(instruction, argument)`` per instruction, as Ollama's parser reads a Modelfile:
    ``#`` comments, an argument in triple quotes spanning lines."""
    found = []
    lines = iter(path.read_text(encoding="utf-8").splitlines())
    for line in lines:
        if not line or line.startswith("#"):
            continue
        name, arg = line.split(" ", 1)
        assert name in {"FROM", "TEMPLATE", "PARAMETER"}, line
        if arg.startswith('"""'):
            arg = arg[3:]
            while not arg.endswith('"""'):
                arg += "\n" + next(lines)
            arg = arg[:-3]
        found.append((name, arg))
    return found


def check_modelfile(path: Path, template, eos: str) -> dict[str, list[str]]:
    """The Modelfile's FROM names a file beside it, its TEMPLATE renders the training prompts,
    its stops include EOS; returns its parameters."""
    lines = parse_modelfile(path)
    (source,) = [arg for name, arg in lines if name == "FROM"]
    assert source.startswith("./") and (path.parent / source).is_file()
    (go,) = [arg for name, arg in lines if name == "TEMPLATE"]
    for record in RECORDS:
        assert render_go(go, Prompt=record["title"]) == template.render(record["title"])
        question = "Is it good for toddlers?"
        assert render_go(go, Prompt=record["title"], System=question) == template.render(
            record["title"], question
        )
    parameters: dict[str, list[str]] = {}
    for name, arg in lines:
        if name == "PARAMETER":
            key, value = arg.split(" ", 1)
            parameters.setdefault(key, []).append(value)
    assert json.dumps(eos) in parameters["stop"]
    return parameters


def assert_renders_training_prompts(chat_template: str, template) -> None:
    """The saved template gives each training pair's prompt (title, or title and its seeded
    question) and, with the answer, the pair's whole text, with and without trim_blocks."""
    pairs = list(template.training_pairs(RECORDS, question_share=QUESTION_SHARE, seed=SEED))
    asked = 0
    for record, pair in zip(RECORDS, pairs, strict=True):
        question = seeded_question(
            record["title"], record["content"], share=QUESTION_SHARE, seed=SEED
        )
        asked += question is not None
        for trim in (True, False):
            turns = messages(record["title"], question)
            assert render_jinja(chat_template, turns, trim=trim) == pair["prompt"]
            full = messages(record["title"], question, record["content"])
            text = pair["prompt"] + pair["completion"]
            assert render_jinja(chat_template, full, trim=trim) == text
    assert 0 < asked < len(RECORDS)  # both forms were checked


# -- the templates alone -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template",
    [
        PromptTemplate(eos_token="</s>"),
        # fixed text that Jinja and Go would read as code, quotes, and non-ASCII
        PromptTemplate(eos_token="<|im_end|>", instruction='Décris {{ le }} "ça" {{% x %}} """ \\'),
        ContextTemplate(eos_token="</s>"),
    ],
    ids=["alpaca", "odd-instruction", "context"],
)
def test_templates_render_their_prompt_as_jinja_and_go(template) -> None:
    chat = template.chat_template()
    go = template.ollama_template()

    def prompt(title: str, question: str | None = None) -> str:
        # A chat client sends no retrieval context: the context template says none is known.
        if isinstance(template, ContextTemplate):
            return template.render(title, question, context=())
        return template.render(title, question)

    for title, question in [("Nice for Mice", None), ("Nice for Mice", "Is it for kids?")]:
        assert render_jinja(chat, messages(title, question)) == prompt(title, question)
        assert render_go(go, Prompt=title, System=question or "") == prompt(title, question)
    # a "Product:" label, blank space and earlier turns are read as productdesc serve reads them
    turns = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "an earlier product"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "  Product: Nice for Mice \n Is it for kids?\n"},
    ]
    assert render_jinja(chat, turns) == prompt("Nice for Mice", "Is it for kids?")
    with pytest.raises(jinja2.TemplateError, match="user message"):
        render_jinja(chat, [{"role": "system", "content": "no title"}])


def test_a_template_that_changes_the_title_has_no_chat_template() -> None:
    @attrs.frozen(kw_only=True)
    class Shouting(PromptTemplate):
        def render(self, title, question=None, description=None):
            return super().render(title.upper(), question, description)

    template = Shouting(eos_token="</s>")
    assert template.chat_template() is None and template.ollama_template() is None


# -- a training run on the tiny Llama --------------------------------------------------------------
def config_for(model: Path, template: str = "alpaca") -> FineTuneConfig:
    """A two-step run on ``model`` with a share of questions, as test_finetune's."""
    return attrs.evolve(
        tiny_config(model, max_steps=2), template=template, question_share=QUESTION_SHARE
    )


@pytest.fixture(scope="module")
def alpaca_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """A short alpaca run with merged/, exported (f32) with its Modelfile."""
    from productdesc.cli import main

    tuner = LoraFineTuner(config_for(tiny_llama))
    out = tmp_path_factory.mktemp("alpaca") / "run"
    tuner.train(RECORDS, output_dir=out, merge=True)
    gguf_file = out.parent / "export" / "tiny.gguf"
    assert main(["export", str(out), "--out", str(gguf_file), "--outtype", "f32"]) == 0
    return tuner, out, gguf_file


@pytest.mark.parametrize("where", ["run", "merged"])
def test_saved_tokenizer_renders_the_training_prompts(alpaca_run, where) -> None:
    from transformers import AutoTokenizer

    tuner, out, _ = alpaca_run
    directory = out if where == "run" else out / "merged"
    assert (directory / "chat_template.jinja").is_file()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    template = tuner.template
    for record in RECORDS:
        for question in (None, "Is it good for toddlers?"):
            rendered = tokenizer.apply_chat_template(
                messages(record["title"], question), add_generation_prompt=True, tokenize=False
            )
            assert rendered == template.render(record["title"], question)
    assert_renders_training_prompts(tokenizer.chat_template, template)


def test_gguf_metadata_renders_the_training_prompts(alpaca_run) -> None:
    tuner, _, gguf_file = alpaca_run
    field = gguf.GGUFReader(gguf_file).fields["tokenizer.chat_template"]
    chat_template = field.contents()
    assert chat_template == tuner.template.chat_template()
    assert_renders_training_prompts(chat_template, tuner.template)


def test_modelfile_points_to_the_gguf_and_renders_the_prompt(alpaca_run) -> None:
    from productdesc.config import GenerationConfig

    tuner, _, gguf_file = alpaca_run
    parameters = check_modelfile(gguf_file.parent / "Modelfile", tuner.template, "</s>")
    defaults = GenerationConfig()
    assert parameters == {
        "stop": ['"</s>"'],
        "num_predict": [str(defaults.max_new_tokens)],
        "temperature": ["0"],  # greedy
        "repeat_penalty": ["1"],  # Ollama's own default is 1.1
    }
    text = (gguf_file.parent / "Modelfile").read_text()
    assert f"no_repeat_ngram_size {defaults.no_repeat_ngram_size}" in text  # said, not set


def test_a_merged_dir_exports_with_its_runs_template(alpaca_run, tmp_path) -> None:
    from productdesc.export import export_gguf

    tuner, out, _ = alpaca_run
    gguf_file = export_gguf(out / "merged", tmp_path / "merged.gguf", outtype="f32")
    check_modelfile(tmp_path / "Modelfile", tuner.template, "</s>")
    assert gguf_file.is_file()
    # a model directory that is no run's: Ollama is left to the GGUF's chat template
    shutil.copytree(out / "merged", tmp_path / "plain")
    export_gguf(tmp_path / "plain", tmp_path / "plain" / "plain.gguf", outtype="f32")
    names = [name for name, _ in parse_modelfile(tmp_path / "plain" / "Modelfile")]
    assert names[0] == "FROM" and "TEMPLATE" not in names


def test_chat_template_run_keeps_the_tokenizers_own(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    own = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    (base / "chat_template.jinja").write_text(own)
    tuner = LoraFineTuner(config_for(base, "chat"))
    out = tmp_path / "run"
    tuner.train(RECORDS, output_dir=out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == own
    # what training sent through it: the user's message as the template wrote it
    pair = tuner.template.render_pair(RECORDS[0]["title"], RECORDS[0]["content"])
    turns = [{"role": "user", "content": f"Describe the product: {RECORDS[0]['title']}"}]
    rendered = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert rendered == pair["prompt"]
    # Ollama's TEMPLATE is that chat template around the title alone
    go = tuner.template.ollama_template()
    assert render_go(go, Prompt=RECORDS[0]["title"]) == pair["prompt"]
    question = "Is it good for toddlers?"
    assert render_go(go, Prompt=RECORDS[0]["title"], System=question) == (
        tuner.template.render(RECORDS[0]["title"], question)
    )


# -- the real SmolLM2 ------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_run_and_gguf_carry_the_alpaca_prompt(smollm2_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from productdesc.export import export_gguf

    base_template = AutoTokenizer.from_pretrained(smollm2_dir).chat_template
    assert "<|im_start|>" in base_template  # ChatML, which the adapter never saw
    tuner = LoraFineTuner(config_for(smollm2_dir))
    out = tmp_path / "run"
    tuner.train(RECORDS, output_dir=out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for question in (None, "Is it good for toddlers?"):
        rendered = tokenizer.apply_chat_template(
            messages("Nice for Mice", question), add_generation_prompt=True, tokenize=False
        )
        assert rendered == tuner.template.render("Nice for Mice", question)
    assert_renders_training_prompts(tokenizer.chat_template, tuner.template)
    gguf_file = export_gguf(out, tmp_path / "export" / "smollm2.gguf", outtype="q8_0")
    chat_template = gguf.GGUFReader(gguf_file).fields["tokenizer.chat_template"].contents()
    assert_renders_training_prompts(chat_template, tuner.template)
    parameters = check_modelfile(gguf_file.parent / "Modelfile", tuner.template, "<|im_end|>")
    assert parameters["stop"][0] == '"<|im_end|>"'
