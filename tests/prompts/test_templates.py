"""Prompt templates: exact texts, EOS handling, parsing, question mixing, chat templates, registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import attrs
import pytest

from productdesc import plugins
from productdesc.errors import UserError
from productdesc.prompts import (
    QUESTIONS,
    ChatTemplate,
    PromptTemplate,
    TemplateError,
    get_template,
    templates,
)

TRAINING_TEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nDescribe the product\n\n"
    "### Input:\nNice for Mice\n\n"
    "### Response:\nA cheese-scented soap, 3 oz.</s>"
)
PROMPT_TEXT = TRAINING_TEXT.removesuffix("A cheese-scented soap, 3 oz.</s>")

# Zephyr-like: the assistant turn ends with EOS, then a newline the training text should drop.
ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# No EOS of its own, and a BOS up front, as Llama-3-style templates write.
PLAIN_WITH_BOS = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture
def alpaca() -> PromptTemplate:
    return PromptTemplate(eos_token="</s>")


@pytest.fixture
def tokenizer(tiny_llama):
    """A fresh tokenizer per test (tests change its chat template); eos ``</s>``, no template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def records(n: int) -> list[dict[str, str]]:
    return [{"title": f"Product number {i}", "content": f"Description {i}."} for i in range(n)]


# -- Alpaca: exact texts ------------------------------------------------------------------------
def test_training_text_is_the_classic_alpaca_prompt_with_eos(alpaca):
    text = alpaca.render("Nice for Mice", description="A cheese-scented soap, 3 oz.")
    assert text == TRAINING_TEXT


def test_inference_text_ends_right_after_the_response_header(alpaca):
    assert alpaca.render("Nice for Mice") == PROMPT_TEXT
    assert PROMPT_TEXT.endswith("### Response:\n")


def test_pair_splits_the_training_text_exactly(alpaca):
    pair = alpaca.render_pair("Nice for Mice", "A cheese-scented soap, 3 oz.")
    assert pair == {"prompt": PROMPT_TEXT, "completion": "A cheese-scented soap, 3 oz.</s>"}
    assert pair["prompt"] + pair["completion"] == TRAINING_TEXT


def test_question_replaces_the_instruction_and_the_title_stays_the_input(alpaca):
    pair = alpaca.render_pair("Tutu", "A pink tutu.", question="Is it good for toddlers?")
    assert pair["prompt"] == PROMPT_TEXT.replace(
        "Describe the product", "Is it good for toddlers?"
    ).replace("Nice for Mice", "Tutu")
    assert pair["prompt"] + pair["completion"] == alpaca.render(
        "Tutu", "Is it good for toddlers?", "A pink tutu."
    )


def test_custom_instruction(alpaca):
    text = attrs.evolve(alpaca, instruction="Write an ad").render("Tutu")
    assert "### Instruction:\nWrite an ad\n\n### Input:\nTutu\n\n" in text


def test_braces_in_titles_and_questions_are_text_not_fields(alpaca):
    pair = alpaca.render_pair("Mug {large}", "Holds {0} ml.", question="What is {title}?")
    assert "### Instruction:\nWhat is {title}?\n\n### Input:\nMug {large}\n\n" in pair["prompt"]
    assert pair["completion"] == "Holds {0} ml.</s>"


# -- EOS ----------------------------------------------------------------------------------------
def test_training_text_needs_an_eos():
    template = PromptTemplate()
    assert template.render("Tutu").endswith("### Response:\n")  # inference needs none
    with pytest.raises(TemplateError, match=r"eos_token.*for_tokenizer") as info:
        template.render("Tutu", description="A pink tutu.")
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)
    with pytest.raises(TemplateError, match="eos_token"):
        template.render_pair("Tutu", "A pink tutu.")
    with pytest.raises(TemplateError, match="eos_token"):
        template.training_pairs(records(1))  # at the call, not at the first record


def test_for_tokenizer_takes_the_tokenizers_eos_and_options():
    template = PromptTemplate.for_tokenizer(
        SimpleNamespace(eos_token="<|im_end|>"), instruction="Describe it"
    )
    assert template == PromptTemplate(eos_token="<|im_end|>", instruction="Describe it")
    assert template.render("Tutu", description="Pink.").endswith("### Response:\nPink.<|im_end|>")


@pytest.mark.parametrize("eos", [None, ""])
def test_for_tokenizer_without_eos_is_a_clear_error(eos):
    with pytest.raises(ValueError, match=r"has no eos_token; set tokenizer\.eos_token"):
        PromptTemplate.for_tokenizer(SimpleNamespace(eos_token=eos))


def test_eos_option_conflicts_with_the_tokenizer():
    with pytest.raises(TemplateError, match=r"set tokenizer\.eos_token instead"):
        PromptTemplate.for_tokenizer(SimpleNamespace(eos_token="</s>"), eos_token="<eos>")


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"title": ""}, "title"),
        ({"title": "  "}, "title"),
        ({"title": None}, "title"),
        ({"description": ""}, "description"),
        ({"question": "\n"}, "question"),
    ],
)
def test_empty_texts_are_rejected(alpaca, kwargs, what):
    args = {"title": "Tutu", "question": None, "description": "Pink."} | kwargs
    with pytest.raises(TemplateError, match=f"{what} must be non-empty text"):
        alpaca.render(**args)


@pytest.mark.parametrize(
    "options",
    [
        {"questions": ("What is {name}?",)},
        {"questions": ("Tell me {",)},
        {"questions": ()},
        {"instruction": "Describe {title}"},  # Alpaca's title goes in the input, not here
        {"eos_token": ""},
    ],
)
def test_bad_options_fail_at_construction(options):
    with pytest.raises((TemplateError, ValueError)):
        PromptTemplate(**options)


# -- parse --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "generated",
    [
        "A pink tutu.",  # only the new tokens, decoded without special tokens
        "  A pink tutu.</s>",
        "A pink tutu.</s>### Instruction:\nDescribe",
        "A pink tutu.\n\n### Instruction:\nDescribe the product\n\n### Response:\nMore.",
        "A pink tutu.\n### Response:\nAgain.",
        "A pink tutu.\n\nBelow is an instruction that describes a task, paired with an input",
        PROMPT_TEXT + "A pink tutu.</s></s>",  # the whole sequence: prompt echoed
        PROMPT_TEXT + "A pink tutu.",
        PROMPT_TEXT + "A pink tutu.\n\n### Input:\nTutu\n\n### Response:\nOther.",
        "<pad><pad><s>" + PROMPT_TEXT + "A pink tutu.</s><pad>",  # left-padded batch, raw decode
        "</s></s>" + PROMPT_TEXT + "A pink tutu.</s>",  # pad token = eos token
    ],
)
def test_parse_returns_only_the_answer(alpaca, generated):
    assert alpaca.parse(generated) == "A pink tutu."


@pytest.mark.parametrize("generated", ["", "</s>", "\n\n### Instruction:\nx", PROMPT_TEXT + "</s>"])
def test_parse_of_no_answer_is_empty(alpaca, generated):
    assert alpaca.parse(generated) == ""


def test_parse_keeps_multiline_answers(alpaca):
    assert alpaca.parse(PROMPT_TEXT + "Line one.\nLine two.\n</s>") == "Line one.\nLine two."


def test_parse_undoes_render_on_real_records(alpaca, real_sample):
    with real_sample.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    usable = [r for r in rows if r["title"].strip() and r["content"].strip()]
    assert len(usable) > 100
    for row, pair in zip(usable, alpaca.training_pairs(usable, question_share=0.5), strict=True):
        assert pair["completion"] == row["content"] + "</s>"
        assert f"### Input:\n{row['title']}\n\n### Response:\n" in pair["prompt"]
        assert alpaca.parse(pair["prompt"] + pair["completion"]) == row["content"].strip()


# -- question mixing ----------------------------------------------------------------------------
def test_share_zero_is_the_plain_instruction_for_every_record(alpaca):
    data = records(50)
    pairs = list(alpaca.training_pairs(data, question_share=0.0))
    assert pairs == [alpaca.render_pair(r["title"], r["content"]) for r in data]


def test_share_one_phrases_every_record_and_uses_every_phrasing(alpaca):
    data = records(400)
    pairs = list(alpaca.training_pairs(data, question_share=1.0, seed=1))
    asked = {q.format(title=r["title"]): q for r in data for q in QUESTIONS}
    used = set()
    for record, pair in zip(data, pairs, strict=True):
        instruction = pair["prompt"].split("### Instruction:\n")[1].split("\n\n### Input:")[0]
        assert instruction in asked and record["title"] in instruction
        used.add(asked[instruction])
        assert pair["completion"] == record["content"] + "</s>"
    assert used == set(QUESTIONS)


def questioned(template, data, **kwargs) -> list[bool]:
    return [
        "### Instruction:\nDescribe the product\n" not in p["prompt"]
        for p in template.training_pairs(data, **kwargs)
    ]


@pytest.mark.parametrize("share", [0.1, 0.3, 0.75])
def test_share_is_met_over_1000_records(alpaca, share):
    flags = questioned(alpaca, records(1000), question_share=share, seed=3407)
    assert abs(sum(flags) / 1000 - share) < 0.05  # about 3.5 standard deviations


def test_mixing_is_reproducible_and_independent_of_order_and_chunks(alpaca):
    data = records(300)
    full = list(alpaca.training_pairs(data, question_share=0.5, seed=7))
    assert full == list(alpaca.training_pairs(data, question_share=0.5, seed=7))
    chunked = [
        pair
        for start in range(0, 300, 64)
        for pair in alpaca.training_pairs(data[start : start + 64], question_share=0.5, seed=7)
    ]
    assert chunked == full
    backwards = list(alpaca.training_pairs(data[::-1], question_share=0.5, seed=7))
    assert backwards[::-1] == full
    other_seed = list(alpaca.training_pairs(data, question_share=0.5, seed=8))
    assert other_seed != full


def test_mixing_is_the_same_in_another_process(alpaca):
    code = (
        "import json, sys; from productdesc.prompts import PromptTemplate; "
        "data = [{'title': f'Product number {i}', 'content': f'Description {i}.'} for i in range(200)]; "
        "pairs = PromptTemplate(eos_token='</s>').training_pairs(data, question_share=0.5, seed=11); "
        "json.dump(list(pairs), sys.stdout)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # str hashes differ; our draws must not
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == list(
        alpaca.training_pairs(records(200), question_share=0.5, seed=11)
    )


def test_larger_share_keeps_the_questions_of_a_smaller_one(alpaca):
    data = records(500)
    small = list(alpaca.training_pairs(data, question_share=0.2))
    large = list(alpaca.training_pairs(data, question_share=0.6))
    plain = [alpaca.render_pair(r["title"], r["content"]) for r in data]
    for s, big, p in zip(small, large, plain, strict=True):
        if s != p:
            assert big == s


@pytest.mark.parametrize("share", [-0.1, 1.5, True, "0.5", None])
def test_bad_share_fails_at_the_call(alpaca, share):
    with pytest.raises(TemplateError, match="question_share"):
        alpaca.training_pairs(records(1), question_share=share)


@pytest.mark.parametrize(
    "bad", [{"title": "Tutu"}, {"title": "Tutu", "content": ""}, {"content": "x", "title": 3}]
)
def test_bad_record_names_its_position(alpaca, bad):
    pairs = alpaca.training_pairs([*records(2), bad])
    assert len([next(pairs), next(pairs)]) == 2
    with pytest.raises(TemplateError, match=r"record 2: .*must be non-empty text"):
        next(pairs)


def test_custom_phrasings(alpaca):
    template = attrs.evolve(alpaca, questions=["Is {title} any good?"])
    pair = next(template.training_pairs(records(1), question_share=1.0))
    assert "### Instruction:\nIs Product number 0 any good?\n\n" in pair["prompt"]


# -- chat template ------------------------------------------------------------------------------
def test_chat_with_a_template_that_ends_answers_with_eos(tokenizer):
    tokenizer.chat_template = ZEPHYR
    chat = ChatTemplate.for_tokenizer(tokenizer, system="You sell things.")
    prompt = "<|system|>\nYou sell things.\n<|user|>\nDescribe the product: Tutu\n<|assistant|>\n"
    assert chat.render("Tutu") == prompt
    assert chat.render("Tutu", description="A pink tutu.") == prompt + "A pink tutu.</s>"
    pair = chat.render_pair("Tutu", "A pink tutu.")
    assert pair == {"prompt": prompt, "completion": "A pink tutu.</s>"}  # EOS once, not twice


def test_chat_appends_eos_when_the_template_does_not(tokenizer):
    tokenizer.chat_template = PLAIN_WITH_BOS
    chat = ChatTemplate.for_tokenizer(tokenizer)
    pair = chat.render_pair("Tutu", "A pink tutu.", question="Is it for toddlers?")
    assert pair == {
        "prompt": "<s>[user] Product: Tutu\nIs it for toddlers?\n[assistant] ",
        "completion": "A pink tutu.\n</s>",
    }
    assert pair["prompt"] + pair["completion"] == chat.render(
        "Tutu", "Is it for toddlers?", "A pink tutu."
    )


def test_chat_drops_the_templates_bos_when_the_tokenizer_adds_one(tokenizer):
    tokenizer.chat_template = PLAIN_WITH_BOS
    tokenizer.add_bos_token = True
    chat = ChatTemplate.for_tokenizer(tokenizer)
    prompt = chat.render("Tutu")
    assert prompt == "[user] Describe the product: Tutu\n[assistant] "
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]


def test_chat_parse(tokenizer):
    tokenizer.chat_template = ZEPHYR
    chat = ChatTemplate.for_tokenizer(tokenizer)
    prompt = chat.render("Tutu")
    assert chat.parse(" A pink tutu.</s>\n<|user|>\nMore") == "A pink tutu."
    assert chat.parse(prompt + "A pink tutu.</s>") == "A pink tutu."
    assert chat.parse("<pad><pad>" + prompt + "A pink tutu.") == "A pink tutu."
    assert chat.parse(prompt + "</s>") == ""


def test_chat_needs_a_chat_template_and_a_tokenizer(tokenizer):
    assert tokenizer.chat_template is None
    with pytest.raises(ValueError, match="has no chat_template; use the 'alpaca' template"):
        ChatTemplate.for_tokenizer(tokenizer)
    with pytest.raises(TemplateError, match=r"ChatTemplate\.for_tokenizer"):
        ChatTemplate(eos_token="</s>").render("Tutu")


def test_chat_tokenizer_is_kept_out_of_repr_and_equality(tokenizer):
    tokenizer.chat_template = ZEPHYR
    chat = ChatTemplate.for_tokenizer(tokenizer)
    assert chat == ChatTemplate(eos_token="</s>")
    assert "tokenizer=" not in repr(chat)


def test_chat_training_pairs(tokenizer):
    tokenizer.chat_template = ZEPHYR
    chat = ChatTemplate.for_tokenizer(tokenizer)
    pairs = list(chat.training_pairs(records(200), question_share=0.5, seed=3))
    for record, pair in zip(records(200), pairs, strict=True):
        assert pair["completion"] == record["content"] + "</s>"
        assert record["title"] in pair["prompt"]
    assert 60 < sum("Describe the product:" not in p["prompt"] for p in pairs) < 140


# -- registry and contract ----------------------------------------------------------------------
def test_builtins_are_registered_by_name():
    assert templates.get("alpaca") is PromptTemplate
    assert templates.get("chat") is ChatTemplate


@pytest.mark.parametrize("name", ["alpaca", "chat"])
def test_every_template_offers_the_contract(name):
    cls = templates.get(name)
    assert cls.name == name
    for method in ("for_tokenizer", "render", "render_pair", "parse", "training_pairs"):
        assert callable(getattr(cls, method))


def test_get_template(tokenizer):
    assert get_template("alpaca") == PromptTemplate()
    assert get_template("alpaca", tokenizer, instruction="Sell it") == PromptTemplate(
        eos_token="</s>", instruction="Sell it"
    )
    tokenizer.chat_template = ZEPHYR
    chat = get_template("chat", tokenizer)
    assert isinstance(chat, ChatTemplate) and chat.tokenizer is tokenizer
    with pytest.raises(plugins.PluginError, match="unknown prompt template 'vicuna'"):
        get_template("vicuna")
    with pytest.raises(
        TemplateError, match=r"has no option instructions; its options: .*instruction"
    ):
        get_template("alpaca", instructions="x")


def test_templates_are_frozen(alpaca):
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        alpaca.instruction = "x"


def test_importing_prompts_loads_no_torch_or_transformers():
    code = (
        "import sys, productdesc.prompts; "
        "bad = {'torch', 'transformers', 'unsloth'} & set(sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
