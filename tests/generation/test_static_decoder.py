"""The static-cache greedy decoder gives generate()'s tokens (eagerly on CPU; compiled, with
CUDA graphs, where a GPU is present)."""

from __future__ import annotations

import contextlib
import logging

import pytest

torch = pytest.importorskip("torch")


def load(path):
    """The tiny Llama in eval mode and its tokenizer, padding on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    return AutoModelForCausalLM.from_pretrained(path).eval(), tok


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    return load(tiny_llama)


@pytest.fixture(params=["tiny_llama", "sentencepiece_llama"])
def either_llama(request):
    """The tiny Llama with SmolLM2's kind of tokenizer, then with TinyLlama's (adds BOS)."""
    return request.getfixturevalue(request.param)


def greedy(model, enc, **options):
    """``model.generate``'s greedy new tokens for ``enc``."""
    return model.generate(**enc, do_sample=False, **options)[:, enc.input_ids.shape[1] :]


def decode(decoder, enc, **options):
    """The decoder's new tokens for ``enc``."""
    return decoder.generate(enc.input_ids, enc.attention_mask, **options)


def options(tok, max_new_tokens):
    """Both calls' options: ``tok``'s EOS and pad, ``max_new_tokens``."""
    return dict(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=max_new_tokens
    )


def assert_same_as_generate(
    model, decoder, enc, *, eos, pad, max_new_tokens, min_new_tokens=0, **guard
):
    """The decoder's new tokens for ``enc`` equal ``model.generate``'s greedy ones, both with
    the ``guard`` given (``repetition_penalty``, ``no_repeat_ngram_size``); returns them."""
    kwargs = dict(
        eos_token_id=eos,
        pad_token_id=pad,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        **guard,
    )
    ref = greedy(model, enc, **kwargs)
    out = decode(decoder, enc, **kwargs)
    assert torch.equal(out, ref)
    return out


@pytest.mark.parametrize(
    ("min_new_tokens", "max_new_tokens", "check_every"),
    [(0, 16, 16), (12, 16, 16), (12, 16, 5), (1, 17, 4), (0, 1, 16), (1, 2, 16)],
)
def test_same_tokens_as_generate_on_a_left_padded_batch(
    model_and_tokenizer, min_new_tokens, max_new_tokens, check_every
):
    """Runs of check_every steps that do not divide the length are cut to it."""
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = model_and_tokenizer
    titles = [
        "soft cotton blanket",
        "mouse",
        "the prophet book hardcover edition great gift for kids",
    ]
    enc = tok(titles, return_tensors="pt", padding=True)
    decoder = StaticGreedyDecoder(
        model, compile_mode=None, length_bucket=8, check_every=check_every
    )
    for _ in range(2):  # the second call reuses the cache of the first
        assert_same_as_generate(
            model,
            decoder,
            enc,
            eos=tok.eos_token_id,
            pad=tok.pad_token_id,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
        )


@pytest.mark.parametrize("min_new_tokens", [0, 4])
def test_several_end_tokens_end_a_row_at_any_of_them(model_and_tokenizer, min_new_tokens):
    """As with SmolLM2 (<|im_end|> and <|endoftext|>): a token each row's plain greedy answer
    reaches early is made a second end token; rows end at either, as generate ends them."""
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = model_and_tokenizer
    enc = tok(TITLES, return_tensors="pt", padding=True)
    plain = greedy(model, enc, **options(tok, 16))
    second = int(plain[1, 2])  # row 1 ends at its third token (or earlier if it recurs)
    stops = [tok.eos_token_id, second]
    out = assert_same_as_generate(
        model,
        StaticGreedyDecoder(model, compile_mode=None, check_every=4),
        enc,
        eos=stops,
        pad=tok.pad_token_id,
        max_new_tokens=16,
        min_new_tokens=min_new_tokens,
    )
    if not min_new_tokens:  # the second end token ended row 1, by its third token
        assert out.shape[1] == 16 and out[1, 3:].eq(tok.pad_token_id).all()


GUARDS = [
    {"no_repeat_ngram_size": 3},
    {"no_repeat_ngram_size": 4},
    {"repetition_penalty": 1.1},
    {"repetition_penalty": 1.3},
    {"no_repeat_ngram_size": 3, "repetition_penalty": 1.3},
    {"no_repeat_ngram_size": 4, "repetition_penalty": 1.1},
    {"exponential_decay_length_penalty": (5, 1.5)},
    {"no_repeat_ngram_size": 4, "exponential_decay_length_penalty": (8, 1.2)},
]

TITLES = ["soft cotton blanket", "mouse", "the prophet book hardcover edition great gift for kids"]


@pytest.mark.parametrize("guard", GUARDS, ids=str)
def test_a_guard_against_loops_gives_generates_tokens(model_and_tokenizer, guard):
    """The tiny model loops (its greedy answers repeat a token six times, a pair of tokens
    seven times), so every guard changes the answers. Runs of 7 steps do not divide the
    length; EOS is held back for 3 tokens. The decoder alternates guarded and plain calls of
    one shape: each keeps its own buffers."""
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = model_and_tokenizer
    enc = tok(TITLES, return_tensors="pt", padding=True)
    decoder = StaticGreedyDecoder(model, compile_mode=None, length_bucket=8, check_every=7)
    settings = {**options(tok, 40), "min_new_tokens": 3}
    plain = greedy(model, enc, **settings)
    guarded = greedy(model, enc, **settings, **guard)
    assert not torch.equal(guarded, plain)
    for _ in range(2):  # the second round reuses both shapes' buffers
        assert torch.equal(decode(decoder, enc, **settings, **guard), guarded)
        assert torch.equal(decode(decoder, enc, **settings), plain)


# The length penalty counts new tokens only, which padding does not change.
COUNTING_GUARDS = [g for g in GUARDS if g.keys() != {"exponential_decay_length_penalty"}]


@pytest.mark.parametrize("guard", COUNTING_GUARDS, ids=str)
def test_a_guard_counts_the_left_padding_as_generate_does(tiny_llama, guard):
    """generate's processors see the padded batch: the pad is a token a padded row holds
    (penalised) and n-grams run over its padding. With the pad made a likely token, some
    padded row's guarded answer differs from its answer decoded alone (plain greedy ones do
    not, nor does the unpadded row's), and the decoder gives the batch's. So it does with
    more padding than the longest row needs, of which it keeps what counts."""
    from transformers import BatchEncoding

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = load(tiny_llama)
    with torch.no_grad():
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.lm_head.bias[tok.pad_token_id] = 0.7
    enc = tok(TITLES, return_tensors="pt", padding=True)
    decoder = StaticGreedyDecoder(model, compile_mode=None, length_bucket=8, check_every=5)
    settings = {**options(tok, 12), **guard}

    def alone(**settings):
        return [greedy(model, tok([t], return_tensors="pt"), **settings)[0] for t in TITLES]

    plain = greedy(model, enc, **options(tok, 12))
    assert all(torch.equal(a, b) for a, b in zip(alone(**options(tok, 12)), plain, strict=True))
    out = greedy(model, enc, **settings)
    assert torch.equal(decode(decoder, enc, **settings), out)
    same = [torch.equal(a, b) for a, b in zip(alone(**settings), out, strict=True)]
    padded = (enc.attention_mask[:, 0] == 0).tolist()
    assert not all(s for s, p in zip(same, padded, strict=True) if p)
    assert all(s for s, p in zip(same, padded, strict=True) if not p)

    wider = BatchEncoding(
        {
            "input_ids": torch.nn.functional.pad(enc.input_ids, (11, 0), value=tok.pad_token_id),
            "attention_mask": torch.nn.functional.pad(enc.attention_mask, (11, 0), value=0),
        }
    )
    assert torch.equal(decode(decoder, wider, **settings), greedy(model, wider, **settings))


@pytest.mark.parametrize(("ngram", "penalty"), [(1, None), (2, None), (3, 1.3), (4, 0.8), (0, 1.1)])
def test_the_guard_computes_transformers_processors(ngram, penalty):
    """On random rows over six tokens (n-grams recur), every length from one token, shorter
    than the n-gram included, and unused cells before and after the row holding the
    vocabulary size, as the decoder's buffer does."""
    from transformers import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    from productdesc.generation.guard import guarded as _guarded

    torch.manual_seed(0)
    vocab, rows, width, start = 6, 4, 16, 3
    processors = LogitsProcessorList()
    if penalty is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty))
    if ngram:
        processors.append(NoRepeatNGramLogitsProcessor(ngram))
    changed = 0
    for length in range(1, width):
        ids = torch.randint(vocab, (rows, length))
        scores = torch.randn(rows, vocab)
        seen = torch.full((rows, start + width), vocab)
        seen[:, start : start + length] = ids
        got = _guarded(
            scores.clone(),
            seen,
            torch.tensor([start + length]),
            None if penalty is None else torch.tensor(penalty),
            ngram,
        )
        want = processors(ids, scores.clone())
        assert torch.equal(got, want), length
        changed += not torch.equal(got, scores)
    assert changed > width // 2


HEAD = "Below is an instruction that describes a task. Describe the product in one line.\n"


def sharp(path):
    """``load(path)`` with sharper attention. Random weights attend almost evenly, so wrong
    positions or a wrong cache would hardly change an answer; here they do."""
    model, tok = load(path)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight *= 8
            layer.self_attn.k_proj.weight *= 8
    return model, tok


@contextlib.contextmanager
def fed(model):
    """The ``input_ids`` shapes of the model's forward calls inside the block."""
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    try:
        yield shapes
    finally:
        hook.remove()


@pytest.mark.parametrize("titles", [["soft cotton blanket", "mouse", "knife set"], ["mouse"] * 3])
def test_a_shared_prompt_start_is_computed_once_for_one_row(either_llama, titles):
    """Prompts that start alike (a template's instruction): one row computes the start, the
    batch's forward runs over the rest, and the answers are generate's. Identical prompts
    keep their last token each."""
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = sharp(either_llama)
    enc = tok([HEAD + t for t in titles], return_tensors="pt", padding=True)
    ref = greedy(model, enc, **options(tok, 9))
    for share in (True, False):
        decoder = StaticGreedyDecoder(
            model, compile_mode=None, length_bucket=8, check_every=4, share_prefix=share
        )
        with fed(model) as shapes:
            assert torch.equal(decode(decoder, enc, **options(tok, 9)), ref)
        if share:
            head_len = len(tok(HEAD).input_ids)
            longest = max(len(tok(t, add_special_tokens=False).input_ids) for t in titles)
            (one, start), (batch, rest), *_ = shapes
            # The start: the head, cut to whole length buckets (8 tokens); the rest: what is
            # left, padded to a bucket.
            assert one == 1 and head_len - 8 < start <= head_len and start % 8 == 0
            assert batch == len(titles) and rest < (head_len - start) + longest + 8
        else:  # the batch's forward runs over the whole prompts
            assert shapes[0][0] == len(titles) and shapes[0][1] >= enc.input_ids.shape[1]


def test_a_kept_prompt_start_serves_later_batches_until_the_weights_change(tiny_llama):
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = sharp(tiny_llama)
    decoder = StaticGreedyDecoder(model, compile_mode=None, length_bucket=8, check_every=4)

    def batch(*titles):
        return tok([HEAD + t for t in titles], return_tensors="pt", padding=True)

    first = batch("soft cotton blanket", "mouse")
    assert torch.equal(
        decode(decoder, first, **options(tok, 9)), greedy(model, first, **options(tok, 9))
    )
    # These share more than the head ("wool"), but the kept start serves them: no forward of
    # one row, and the batch's forward starts after it.
    later = batch("wool socks", "wool hat")
    ref = greedy(model, later, **options(tok, 9))
    with fed(model) as shapes:
        assert torch.equal(decode(decoder, later, **options(tok, 9)), ref)
    assert shapes[0][0] == 2 and shapes[0][1] < later.input_ids.shape[1]

    with torch.no_grad():  # as a training step would, in place
        model.model.layers[0].self_attn.k_proj.weight.mul_(-1)
    changed = greedy(model, later, **options(tok, 9))
    assert not torch.equal(changed, ref)
    with fed(model) as shapes:
        assert torch.equal(decode(decoder, later, **options(tok, 9)), changed)
    assert shapes[0][0] == 1  # the start computed again, for one row


def test_a_peft_adapter_switched_off_and_on_between_calls(tiny_llama):
    """Switching an unmerged LoRA adapter off changes the answers without changing a weight:
    kept starts (and recorded graphs) must not outlive the switch."""
    from peft import LoraConfig, get_peft_model

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = sharp(tiny_llama)
    lora = LoraConfig(r=4, target_modules=["q_proj", "k_proj"], init_lora_weights=False)
    model = get_peft_model(model, lora).eval()
    decoder = StaticGreedyDecoder(model, compile_mode=None, length_bucket=8, check_every=4)
    enc = tok([HEAD + "soft cotton blanket", HEAD + "mouse"], return_tensors="pt", padding=True)
    with_adapter = greedy(model, enc, **options(tok, 9))
    assert torch.equal(decode(decoder, enc, **options(tok, 9)), with_adapter)
    with model.disable_adapter():
        without = greedy(model, enc, **options(tok, 9))
        assert not torch.equal(without, with_adapter)
        assert torch.equal(decode(decoder, enc, **options(tok, 9)), without)
    assert torch.equal(decode(decoder, enc, **options(tok, 9)), with_adapter)


def test_shared_starts_of_token_rows_that_differ_anywhere(tiny_llama):
    """Rows given as tokens: a kept start that one row lacks, a row that is exactly a kept
    start, a third row that differs early, several kept starts (the longest that fits is
    used; beyond max_shapes the least recently used is dropped). Every answer is generate's."""
    from transformers import BatchEncoding

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = sharp(tiny_llama)
    pad = tok.pad_token_id

    def left_padded(rows):
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})

    def check(decoder, rows):
        enc = left_padded(rows)
        ref = greedy(model, enc, **options(tok, 6))
        with fed(model) as shapes:
            assert torch.equal(decode(decoder, enc, **options(tok, 6)), ref)
        return shapes

    k, x = list(range(100, 116)), list(range(300, 316))  # two 16-token starts
    longer = [*k, *range(200, 208)]
    decoder = StaticGreedyDecoder(
        model, compile_mode=None, length_bucket=8, check_every=4, max_shapes=2
    )
    assert check(decoder, [[*longer, 5], [*longer, 6, 7]])[0] == (1, 24)  # kept
    assert check(decoder, [[*k, 9, 9, 9], [*x, 9, 9, 9]])[0] == (2, 24)  # nothing shared
    assert check(decoder, [[*k, 5], [*k, 6]])[0] == (1, 16)  # k kept too
    # Both kept starts fit: the longer one is used, leaving one token (a bucket of 8).
    assert check(decoder, [[*longer, 8], [*longer, 9]])[0] == (2, 8)
    # A row that is exactly k keeps its last token: 8 tokens shared, a third start kept,
    # and k, the least recently used, dropped.
    assert check(decoder, [k, [*k, 7, 8, 9]])[0] == (1, 8)
    assert check(decoder, [[*k, 5], [*k, 6]])[0] == (2, 16)  # the 8-token start serves
    assert check(decoder, [[*k, 5], [*k, 6], [*x, 7]])[0] == (3, 24)  # the third row differs


def test_a_batch_of_one_runs_its_whole_prompt(tiny_llama):
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = sharp(tiny_llama)
    decoder = StaticGreedyDecoder(model, compile_mode=None, length_bucket=8, check_every=4)
    two = tok([HEAD + "soft cotton blanket", HEAD + "mouse"], return_tensors="pt", padding=True)
    decode(decoder, two, **options(tok, 4))  # keeps the head
    one = tok([HEAD + "wool socks"], return_tensors="pt")
    with fed(model) as shapes:
        assert torch.equal(
            decode(decoder, one, **options(tok, 9)), greedy(model, one, **options(tok, 9))
        )
    assert shapes[0] == (1, one.input_ids.shape[1] + (-one.input_ids.shape[1] % 8))


@pytest.mark.parametrize("min_new_tokens", [0, 3])
def test_stops_early_once_every_sequence_has_ended(model_and_tokenizer, min_new_tokens):
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = model_and_tokenizer
    enc = tok(["blanket", "knife set"], return_tensors="pt", padding=True)
    # Make EOS the argmax everywhere: every sequence ends as soon as min_new_tokens allows.
    with torch.no_grad():
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.lm_head.bias[tok.eos_token_id] = 1e4
    try:
        out = assert_same_as_generate(
            model,
            StaticGreedyDecoder(model, compile_mode=None, check_every=2),
            enc,
            eos=tok.eos_token_id,
            pad=tok.pad_token_id,
            max_new_tokens=50,
            min_new_tokens=min_new_tokens,
        )
    finally:
        model.lm_head.bias = None
    assert out.shape == (2, min_new_tokens + 1)
    assert out[:, -1].tolist() == [tok.eos_token_id] * 2


def test_with_torch_compile_a_call_too_small_to_repay_compiling_uses_generate(
    tiny_llama, caplog, monkeypatch
):
    """fast=None with torch_compile on a GPU (here: a fast path built on CPU, left to decide
    per call): small calls decode with generate and say why; a big one takes the fast path,
    and so does every call after it (the compilation is paid). The answers are the plain
    path's each time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc.generation import describer as describe

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    monkeypatch.setattr(describe, "FAST_MIN_NEW_TOKENS", 100)
    auto = describe.Describer(model, tok, fast=True, torch_compile=True)
    auto._fast_always = False  # what fast=None gives on a CUDA model
    plain = describe.Describer(model, tok, fast=False)

    def call(titles):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="productdesc"):
            got = auto.describe_batch(titles, max_new_tokens=24)
        assert got == plain.describe_batch(titles, max_new_tokens=24)
        return "fast path decodes" in caplog.text, caplog.text

    taken, log = call(TITLES)  # 3 x 24 = 72 new tokens
    assert not taken
    assert "3 prompts x 24 new tokens is less than the 100 new tokens" in log
    assert "fast=True" in log  # how to force it
    taken, log = call([*TITLES, "lamp", "desk chair"])  # 5 x 24 = 120
    assert taken and "decoding on the fast path: 5 prompts" in log
    assert call(TITLES[:1])[0]


def test_describer_fast_path_gives_the_plain_path_answers(either_llama, caplog):
    """Plain greedy and guarded settings (each changes the answers) decode on the fast path,
    as its log line says, with generate's answers; sampling and a model's own processors
    fall back to generate, which the fast path's log does not mention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc.generation.describer import Describer

    model = AutoModelForCausalLM.from_pretrained(either_llama)
    tok = AutoTokenizer.from_pretrained(either_llama)
    titles = ["Girls Ballet Tutu Neon Pink", "Mouse", "Stainless steel kitchen knife set of six"]
    fast = Describer(model, tok, fast=True)
    assert fast._fast is not None
    plain = Describer(model, tok, fast=False)

    def fast_path_taken(**settings):
        """The fast path's answers, checked against the plain path's; whether it decoded."""
        want = plain.describe_batch(titles, max_new_tokens=24, return_details=True, **settings)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="productdesc.generation.static_decoder"):
            got = fast.describe_batch(titles, max_new_tokens=24, return_details=True, **settings)
        assert got == want
        return "fast path decodes 3 rows" in caplog.text, [d.text for d in want]

    answers = set()
    for settings in (
        {"no_repeat_ngram_size": 0},
        {"no_repeat_ngram_size": 3},
        {"no_repeat_ngram_size": 0, "repetition_penalty": 1.3},
        {"no_repeat_ngram_size": 4, "repetition_penalty": 1.1},
    ):
        taken, texts = fast_path_taken(**settings)
        assert taken, settings
        answers.add(tuple(texts))
    assert len(answers) == 4
    # sampling is not the fast path's job: it falls back to generate and still works
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="productdesc.generation.static_decoder"):
        assert len(fast.describe_batch(titles, max_new_tokens=4, do_sample=True)) == 3
    assert "fast path" not in caplog.text

    # A model's own generation_config may suppress tokens: generate honours it, so the fast
    # path steps aside and both give the same (changed) answers.
    prompt = tok(fast.template.render(titles[0]), return_tensors="pt")
    first = model.generate(**prompt, max_new_tokens=1, do_sample=False)[0, -1]
    model.generation_config.suppress_tokens = [int(first)]
    try:
        taken, suppressed = fast_path_taken(no_repeat_ngram_size=0)
        assert not taken and tuple(suppressed) not in answers
    finally:
        model.generation_config.suppress_tokens = None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_grouped_decode_attention_equals_sdpa_with_expanded_heads(mask_kind, dtype):
    """float32 takes the grouped matmuls, 16-bit torch's SDPA with enable_gqa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from productdesc.generation.fusion import grouped_decode_attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 4, True
    query = torch.randn(3, 8, 1, 16, dtype=dtype)
    key = torch.randn(3, 2, 10, 16, dtype=dtype)
    value = torch.randn(3, 2, 10, 16, dtype=dtype)
    keep = torch.rand(3, 1, 1, 10) > 0.3
    keep[..., -1] = True  # every row sees at least its own token
    mask = {
        "bool": keep,
        "additive": torch.where(keep, 0.0, torch.finfo(dtype).min).to(dtype),
        "none": None,
    }[mask_kind]
    got, _ = grouped_decode_attention(module, query, key, value, mask, scaling=0.25)
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert got.shape == want.shape == (3, 1, 8, 16)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


def test_fused_projections_keep_outputs_weights_and_training(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from productdesc.generation.fusion import _fuse_projections, _fused_products, _patch_norms

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.tensor([[5, 9, 3, 17, 2, 8]])
    with torch.no_grad():
        before = model(ids).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}

    layers = model.config.num_hidden_layers
    assert _fuse_projections(model) == 2 * layers  # attention and MLP of every layer
    assert _fuse_projections(model) == 0  # already fused
    # two norms a layer, the final norm, and each layer (its residual add joins its second norm)
    assert _patch_norms(model) == 3 * layers + 1
    assert _patch_norms(model) == 0
    with torch.no_grad():  # without a kernel module (on CPU), the norms are transformers'
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.untyped_storage().data_ptr() == (
        attn.q_proj.weight.untyped_storage().data_ptr()
    )
    with torch.no_grad(), _fused_products():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(v, state[k]) for k, v in reloaded.state_dict().items())

    # With gradients on, the unfused forward runs: every projection still gets its gradient.
    with _fused_products():
        model(ids, labels=ids).loss.backward()
    assert attn.v_proj.weight.grad is not None
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None

    # Cast afterwards, the views no longer share the fused tensor: outside the decoder the
    # model computes as before, and fusing again restores the one product.
    model.to(torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before.double(), rtol=1e-5, atol=1e-5)
    assert _fuse_projections(model) == 2 * layers
    with torch.no_grad(), _fused_products():
        torch.testing.assert_close(model(ids).logits, before.double(), rtol=1e-5, atol=1e-5)


def test_cache_takes_the_keys_dtype_not_the_models(tiny_llama):
    """Embeddings in bf16, layers in fp32 (``model.dtype`` says bf16, the keys come out fp32):
    the decoder's cache follows the keys, as generate's does."""

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = load(tiny_llama)
    model.get_input_embeddings().to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    enc = tok(["soft cotton blanket", "mouse"], return_tensors="pt", padding=True)
    assert_same_as_generate(
        model,
        StaticGreedyDecoder(model, compile_mode=None, check_every=4),
        enc,
        eos=tok.eos_token_id,
        pad=tok.pad_token_id,
        max_new_tokens=9,
    )


def test_decoder_notices_moved_weights_and_changed_eos(tiny_llama):
    """Recorded shapes are dropped when the parameters move; EOS may change between calls."""

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = load(tiny_llama)
    enc = tok(["soft cotton blanket", "mouse"], return_tensors="pt", padding=True)
    decoder = StaticGreedyDecoder(model, compile_mode=None, length_bucket=8)
    # A second "EOS": the token the model emits first, which min_new_tokens must hold back.
    first = model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
    eos_ids = (tok.eos_token_id, int(first[0, -1]))
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        for eos in eos_ids:
            assert_same_as_generate(
                model,
                decoder,
                enc,
                eos=eos,
                pad=tok.pad_token_id,
                max_new_tokens=10,
                min_new_tokens=3,
            )


def test_refuses_a_model_with_sliding_window_layers(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc.errors import UserError
    from productdesc.generation.describer import Describer
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model.config.sliding_window = 4
    with pytest.raises(ValueError, match="sliding-window"):
        StaticGreedyDecoder(model, compile_mode=None)
    with pytest.raises(UserError, match=r"fast=True: .*sliding-window"):
        Describer(model, tok, fast=True)


def test_the_attention_kernel_is_taken_only_where_it_computes_the_same(tiny_llama):
    """A decode step of a fused Llama layer on a static cache, with a boolean or no mask, takes
    the kernel; anything else (a float mask, a prompt, another cache or layer, training, an
    unsupported dtype or head size, no kernel) takes transformers' path."""
    import types

    from transformers import DynamicCache, StaticCache
    from transformers.cache_utils import StaticSlidingWindowLayer

    from productdesc.generation.fusion import _decode_kernel, _fuse_projections, _fused_products

    model, _ = load(tiny_llama)
    _fuse_projections(model)
    module = model.model.layers[0].self_attn
    module.config._attn_implementation = "productdesc_grouped_decode"
    dim, length = module.head_dim, 12
    served = []
    kernel = types.SimpleNamespace(
        supported=lambda dtype, device, head_dim: served.append(head_dim) or True,
        decode_attention=object(),
    )

    class Subclass(StaticCache):
        pass

    def static(kind=StaticCache, layer=None, written=True):
        cache = kind(config=model.config, max_cache_len=length)
        cache.layers[0] = layer or cache.layers[0]
        kv = torch.zeros(2, model.config.num_key_value_heads, 1, dim)
        if written:
            cache.layers[0].lazy_initialization(kv, kv)
        return cache

    base = dict(
        hidden_states=torch.zeros(2, 1, model.config.hidden_size),
        cos=torch.zeros(2, 1, dim),
        mask=torch.ones(2, 1, 1, length, dtype=torch.bool),
        cache=static(),
        kwargs={"cache_position": torch.tensor([3])},
    )

    def taken(**changes):
        with _fused_products(kernel):
            return _decode_kernel(module, **{**base, **changes}) is kernel.decode_attention

    assert taken() and taken(mask=None) and served == [dim, dim]
    assert not _decode_kernel(module, **base)  # outside the decoder's calls
    offloading = static()
    offloading.offloading = True
    for change in (
        dict(mask=torch.zeros(2, 1, 1, length)),  # additive
        dict(hidden_states=torch.zeros(2, 3, model.config.hidden_size)),
        dict(kwargs={}),
        dict(cos=torch.zeros(2, 1, dim // 2)),  # rotary over part of the head
        dict(cache=DynamicCache(config=model.config)),
        dict(cache=static(written=False)),
        dict(cache=static(layer=StaticSlidingWindowLayer(max_cache_len=length, sliding_window=4))),
        dict(cache=static(kind=Subclass)),
        dict(cache=offloading),
    ):
        assert not taken(**change), change
    module.train()
    assert not taken()
    module.eval()
    kernel.supported = lambda *args: False
    assert not taken()


def test_fused_calls_of_two_threads_do_not_mix():
    """The switches that compiled code reads are one thread's at a time, and restored after."""
    import threading
    import time

    from productdesc.generation import fusion

    inside, seen = threading.Event(), {}

    def use(kernel, wait):
        with fusion._fused_products(kernel):
            inside.set()
            time.sleep(wait)
            seen[kernel] = fusion._attention_kernel

    # Unserialised, the second would switch the first's kernel, the first's exit would switch
    # off the second's, and the second's exit would leave the first's on for good.
    first = threading.Thread(target=use, args=("first", 0.2))
    first.start()
    inside.wait()
    second = threading.Thread(target=use, args=("second", 0.4))
    second.start()
    first.join()
    second.join()
    assert seen == {"first": "first", "second": "second"}
    assert (fusion._fusion_on, fusion._attention_kernel) == (False, None)


def test_keeps_at_most_max_shapes_caches_and_rebuilds_dropped_ones(model_and_tokenizer):
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = model_and_tokenizer
    decoder = StaticGreedyDecoder(model, compile_mode=None, max_shapes=2)
    titles = ["soft cotton blanket", "mouse", "knife set"]
    for n in (1, 2, 3, 1):  # batch sizes: the fourth call rebuilds the shape dropped third
        enc = tok(titles[:n], return_tensors="pt", padding=True)
        assert_same_as_generate(
            model, decoder, enc, eos=tok.eos_token_id, pad=tok.pad_token_id, max_new_tokens=6
        )
        assert len(decoder._slots) <= 2
    assert [key[0] for key in decoder._slots] == [3, 1]


@pytest.mark.slow
def test_compiled_decoder_gives_generates_tokens(tiny_llama):
    """The compiled path (prompt forward and one-token step; on a GPU, recorded as CUDA
    graphs): shapes A, B, A with one kept (each built again), lengths that are and are not
    whole runs, min_new_tokens, and EOS changing between calls."""

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load(tiny_llama)
    model.to(device)
    decoder = StaticGreedyDecoder(model, check_every=4, max_shapes=1)
    a = tok(["soft cotton blanket", "mouse"], return_tensors="pt", padding=True).to(device)
    b = tok(["knife set"], return_tensors="pt", padding=True).to(device)
    first = model.generate(**a, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
    for enc, max_new, min_new, eos in [
        (a, 17, 3, tok.eos_token_id),
        (b, 1, 0, tok.eos_token_id),
        (a, 17, 3, int(first[0, -1])),
        (b, 9, 9, tok.eos_token_id),
    ]:
        assert_same_as_generate(
            model,
            decoder,
            enc,
            eos=eos,
            pad=tok.pad_token_id,
            max_new_tokens=max_new,
            min_new_tokens=min_new,
        )


@pytest.mark.slow
def test_compiled_decoder_with_a_guard_gives_generates_tokens(tiny_llama):
    """The compiled step with the guard's operations in its graph (fullgraph; on a GPU,
    recorded as CUDA graphs), for two shapes. The penalty's value lives in a tensor:
    changing it compiles nothing."""
    from torch._dynamo.utils import counters

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load(tiny_llama)
    model.to(device)
    decoder = StaticGreedyDecoder(model, check_every=4)
    a = tok(TITLES, return_tensors="pt", padding=True).to(device)
    b = tok(TITLES[:1], return_tensors="pt").to(device)
    kwargs = {"eos": tok.eos_token_id, "pad": tok.pad_token_id, "max_new_tokens": 17}
    for enc in (a, b):
        assert_same_as_generate(
            model, decoder, enc, no_repeat_ngram_size=3, repetition_penalty=1.1, **kwargs
        )
    compiled = counters["stats"]["unique_graphs"]
    out = assert_same_as_generate(
        model, decoder, a, no_repeat_ngram_size=3, repetition_penalty=1.3, **kwargs
    )
    assert counters["stats"]["unique_graphs"] == compiled
    assert not torch.equal(out, greedy(model, a, **options(tok, 17)))


@pytest.mark.slow
def test_compiled_decoder_compiles_a_shape_once(tiny_llama):
    """A second call of the same shape, on the cache kept from the first, compiles nothing
    (a cache allocated on its first write used to make it compile the prompt's forward)."""
    from torch._dynamo.utils import counters

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    model, tok = load(tiny_llama)
    decoder = StaticGreedyDecoder(model, check_every=4)
    enc = tok(["soft cotton blanket", "mouse"], return_tensors="pt", padding=True)
    kwargs = {"eos": tok.eos_token_id, "pad": tok.pad_token_id, "max_new_tokens": 9}
    assert_same_as_generate(model, decoder, enc, **kwargs)
    compiled = counters["stats"]["unique_graphs"]
    assert_same_as_generate(model, decoder, enc, **kwargs)
    assert counters["stats"]["unique_graphs"] == compiled


@pytest.mark.slow
def test_after_warm_up_no_call_compiles(tiny_llama):
    """Describer.warm_up compiles for every later shape: new batch sizes, prompt lengths and
    answer lengths afterwards compile nothing, and answer as the plain path does."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc.generation.describer import Describer
    from productdesc.generation.static_decoder import StaticGreedyDecoder

    # Another dtype than the other tests' models: its compiled code starts empty.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    describer = Describer(model, tok, fast=True)
    describer._fast = StaticGreedyDecoder(model, check_every=4, length_bucket=8)  # compiled
    plain = Describer(model, tok, fast=False)
    describer.warm_up()
    compiled = counters["stats"]["unique_graphs"]
    titles = ["Mouse", "Girls Ballet Tutu Neon Pink " * 6, "Stainless steel knife set", "Mug"]
    for batch, n_new in [(3, 7), (1, 30), (4, 12), (2, 1)]:
        got = describer.describe_batch(titles[:batch], batch_size=batch, max_new_tokens=n_new)
        assert got == plain.describe_batch(titles[:batch], max_new_tokens=n_new)
    assert counters["stats"]["unique_graphs"] == compiled
    # The warm-up kept the template's start (up to the title, cut to whole length buckets),
    # which every prompt begins with.
    wool, mouse = (tok(describer.template.render(t)).input_ids for t in ("Wool socks", "Mouse"))
    common = next(i for i, (a, b) in enumerate(zip(wool, mouse, strict=False)) if a != b)
    assert any(
        wool[: len(start)] == mouse[: len(start)] == list(start) and common - len(start) < 8
        for start in describer._fast._prefixes
    )


@pytest.mark.slow
def test_compiled_decoders_of_several_models_in_one_process(tiny_llama):
    """Five models of different sizes, two batch shapes each: each size keeps its own
    compiled code, so together they stay under torch's limit of 8 compilations per function
    (shared, the fifth model's step failed with FailOnRecompileLimitHit). Another model of a
    size already seen compiles nothing."""
    from torch._dynamo.utils import counters
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from productdesc.generation.static_decoder import StaticGreedyDecoder

    tok = AutoTokenizer.from_pretrained(tiny_llama, padding_side="left")
    one = tok(["mouse"], return_tensors="pt")
    two = tok(["soft cotton blanket", "mouse"], return_tensors="pt", padding=True)

    def decode_with(hidden: int) -> None:
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model = LlamaForCausalLM(config).eval()
        # The step is what fails (fullgraph); compiling the prompt's forward only adds time.
        decoder = StaticGreedyDecoder(model, check_every=4, compile_prefill=False)
        for enc in (one, two):
            assert_same_as_generate(
                model, decoder, enc, eos=tok.eos_token_id, pad=tok.pad_token_id, max_new_tokens=5
            )

    for hidden in (32, 48, 64, 80, 96):
        decode_with(hidden)
    compiled = counters["stats"]["unique_graphs"]
    decode_with(32)
    assert counters["stats"]["unique_graphs"] == compiled


@pytest.mark.slow
def test_fast_path_gives_generates_text_with_smollm2s_real_weights(smollm2_dir):
    """A pretrained Llama (9 query heads on 3 KV heads, tied embeddings), fused, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from productdesc.generation.describer import Describer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    titles = ["Girls Ballet Tutu Neon Pink", "Stainless steel kitchen knife set of six", "Mouse"]
    plain = Describer(model, tok, fast=False).describe_batch(titles, max_new_tokens=32)
    fast = Describer(model, tok, fast=True)
    assert fast.describe_batch(titles, max_new_tokens=32) == plain
    layers = model.config.num_hidden_layers
    assert all("_pd_fused" in vars(layer.mlp) for layer in model.model.layers[:layers])
    assert all(answer.strip() for answer in plain)


@pytest.mark.parametrize(("start", "factor"), [(0, 1.05), (3, 1.5), (6, 0.9)])
def test_the_length_penalty_computes_transformers_processor(start, factor):
    """For the token after each count of new tokens, before, at and past ``start``; two end
    ids, and scores of both signs (the penalty grows an end id's score by its size)."""
    from transformers import ExponentialDecayLengthPenalty as Decay

    from productdesc.generation.guard import decayed

    torch.manual_seed(0)
    vocab, rows, prompt_len, ends = 7, 3, 4, [2, 5]
    stops = torch.zeros(vocab, dtype=torch.bool)
    stops[ends] = True
    processor = Decay((start, factor), ends, prompt_len)
    changed = 0
    for new in range(12):
        scores = torch.randn(rows, vocab) * 3
        ids = torch.zeros(rows, prompt_len + new, dtype=torch.long)
        got = decayed(
            scores.clone(),
            stops,
            torch.tensor(new),
            torch.tensor(start),
            torch.tensor(factor, dtype=torch.float64),
        )
        want = processor(ids, scores.clone())
        assert torch.equal(got, want), new
        changed += not torch.equal(got, scores)
    assert changed == 11 - start  # every count past start, and only those
