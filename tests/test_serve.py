"""``productdesc serve`` speaks OpenAI's API: the real ``openai`` client against a real uvicorn.

Every server here listens on a free localhost port, in a thread of this process (one in a
subprocess, started by the command line) and answers with the tiny random Llama; greedy
answers are compared with what the same :class:`~productdesc.Describer` gives directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from productdesc.serve import split_user_text

pytest.importorskip("starlette", reason="productdesc serve needs the [serve] extra")
pytest.importorskip("uvicorn", reason="productdesc serve needs the [serve] extra")
openai = pytest.importorskip("openai", reason="the tests talk to the server with openai")

NEW = 8  # answer length in tokens: short, so each request takes a fraction of a second


# -- without a model -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nice for Mice", ("Nice for Mice", None)),
        ("  Nice for Mice \n", ("Nice for Mice", None)),
        ("Product: Nice for Mice\nIs it for kids?", ("Nice for Mice", "Is it for kids?")),
        ("Soap\nIs it vegan?\nAnd cheap?", ("Soap", "Is it vegan?\nAnd cheap?")),
    ],
)
def test_a_users_text_is_a_title_and_an_optional_question(
    text: str, expected: tuple[str, str | None]
) -> None:
    assert split_user_text(text) == expected


def test_importing_the_module_imports_no_web_framework() -> None:
    code = "import sys, productdesc.serve; print(sorted({'starlette', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- a server in a thread ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def describer(tiny_llama: Path) -> Any:
    from productdesc import Describer

    return Describer.from_pretrained(tiny_llama, backend="transformers")


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on uvicorn, on a free localhost port, in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def client(url: str, key: str = "none") -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def url(describer: Any) -> Iterator[str]:
    from productdesc.serve import create_app

    with serving(create_app(describer, model_name="tiny")) as base:
        yield base


@pytest.mark.slow
def test_models_lists_the_one_model(url: str) -> None:
    models = client(url).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client(url).models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client(url).models.retrieve("gpt-4o")


@pytest.mark.slow
def test_completions_answer_as_the_describer_does(url: str, describer: Any) -> None:
    reply = client(url).completions.create(model="tiny", prompt="Nice for Mice", max_tokens=NEW)
    (choice,) = reply.choices
    assert choice.text == describer.describe("Nice for Mice", max_new_tokens=NEW)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= NEW and reply.usage.prompt_tokens > 10

    # a list of prompts is one batch; a second line is a question
    reply = client(url).completions.create(
        model="tiny", prompt=["Soap", "Soap\nIs it vegan?"], max_tokens=NEW
    )
    assert [c.text for c in reply.choices] == describer.describe_batch(
        ["Soap", "Soap"], [None, "Is it vegan?"], max_new_tokens=NEW
    )


@pytest.mark.slow
def test_chat_takes_the_last_user_message_and_streams_the_same_answer(
    url: str, describer: Any
) -> None:
    messages = [
        {"role": "system", "content": "You are a shop assistant."},
        {"role": "user", "content": "The Prophet"},
        {"role": "assistant", "content": "A book."},
        {"role": "user", "content": "Product: Nice for Mice\nIs it for kids?"},
    ]
    expected = describer.describe("Nice for Mice", "Is it for kids?", max_new_tokens=NEW)
    reply = client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=NEW)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected

    chunks = list(
        client(url).chat.completions.create(
            model="tiny", messages=messages, max_tokens=NEW, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


@pytest.mark.slow
def test_streamed_completions_join_to_the_answer(url: str, describer: Any) -> None:
    stream = client(url).completions.create(
        model="tiny", prompt="Nice for Mice", max_tokens=NEW, stream=True
    )
    pieces = [chunk.choices[0].text for chunk in stream]
    assert len(pieces) > 1 and "".join(pieces) == describer.describe(
        "Nice for Mice", max_new_tokens=NEW
    )


@pytest.mark.slow
def test_the_sse_body_ends_with_done(url: str) -> None:
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=b'{"model": "tiny", "prompt": "Soap", "max_tokens": 4, "stream": true}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": "soap" * 500}, "'title' is 2000 characters; at most 1000"),
        ({"prompt": "soap\n" + "why?" * 200}, "'question' is 800 characters; at most 500"),
        ({"prompt": "soap", "max_tokens": "²"}, "max_tokens must be an integer from 1 to 512"),
        ({"prompt": "soap", "max_tokens": 0}, "max_tokens must be an integer"),
        ({"prompt": "soap", "max_tokens": 10**6}, "max_tokens must be an integer"),
        ({"prompt": "soap", "max_tokens": True}, "max_tokens must be an integer"),
        ({"prompt": "soap", "temperature": 9}, "temperature must be a number from 0.0 to 2.0"),
        ({"prompt": "soap", "stop": ["\n"]}, "'stop' is not supported"),
        ({"prompt": "soap", "n": 2}, "only n=1 is supported"),
        ({"prompt": ""}, "prompt has no product title"),
        ({"prompt": [1, 2, 3]}, "'prompt' must be a string or a list of strings"),
    ],
)
def test_bad_completions_are_400_with_a_clear_message(
    url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).completions.create(model="tiny", **options)
    assert caught.value.status_code == 400
    assert message in caught.value.message


@pytest.mark.slow
@pytest.mark.parametrize(
    ("messages", "max_tokens", "message"),
    [
        ([{"role": "user", "content": "x" * 1001}], NEW, "'title' is 1001 characters"),
        ([{"role": "system", "content": "Soap"}], NEW, "'messages' has no user message"),
        ([{"role": "user", "content": "Soap"}], "²", "max_tokens must be an integer"),
    ],
)
def test_bad_chats_are_400(url: str, messages: list[Any], max_tokens: Any, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens)
    assert message in caught.value.message


@pytest.mark.slow
def test_a_prompt_over_the_token_cap_is_400(describer: Any) -> None:
    from productdesc.serve import create_app

    app = create_app(describer, max_prompt_tokens=20)
    with serving(app) as base, pytest.raises(openai.BadRequestError, match="tokens; at most 20"):
        client(base).completions.create(model="m", prompt="soft cotton blanket " * 10)


@pytest.mark.slow
def test_an_api_key_is_required_and_a_wrong_one_refused(describer: Any) -> None:
    from productdesc.serve import create_app

    with serving(create_app(describer, api_key="s3cret", model_name="tiny")) as base:
        for wrong in ("guess", "s3cret2"):
            with pytest.raises(openai.AuthenticationError):
                client(base, wrong).models.list()
            with pytest.raises(openai.AuthenticationError):
                client(base, wrong).completions.create(model="tiny", prompt="Soap", max_tokens=2)
        with pytest.raises(urllib.error.HTTPError) as caught:  # no header at all
            urllib.request.urlopen(f"{base}/describe?title=Soap", timeout=60)
        assert caught.value.code == 401
        reply = client(base, "s3cret").completions.create(model="tiny", prompt="Soap", max_tokens=2)
        assert reply.choices[0].text is not None
        with urllib.request.urlopen(f"{base}/health", timeout=60) as response:
            assert response.read() == b"ok"  # no key needed to see that it runs


@pytest.mark.slow
def test_without_a_key_startup_logs_that_there_is_no_authentication(
    describer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from productdesc.serve import create_app

    with caplog.at_level(logging.INFO, logger="productdesc.serve"):
        with serving(create_app(describer)):
            pass
        with serving(create_app(describer, api_key="k")):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "productdesc.serve"]
    assert sum("no authentication" in line for line in lines) == 1
    assert any("wants 'Authorization: Bearer'" in line for line in lines)


class Gated:
    """The describer, whose non-streamed calls wait for ``go`` once they reach the worker."""

    def __init__(self, describer: Any) -> None:
        self._describer = describer
        self.entered = threading.Event()
        self.go = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._describer, name)

    def describe_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.go.wait(60)
        return self._describer.describe_batch(*args, **kwargs)


@pytest.mark.slow
def test_a_full_queue_is_503_and_the_place_comes_back(describer: Any) -> None:
    from productdesc.serve import create_app

    gated = Gated(describer)
    with serving(create_app(gated, max_queue=1, model_name="tiny")) as base:
        first: list[Any] = []

        def ask() -> None:
            first.append(client(base).completions.create(model="t", prompt="Soap", max_tokens=2))

        thread = threading.Thread(target=ask)
        thread.start()
        assert gated.entered.wait(60)  # the first request holds the one place
        for call in (
            lambda: client(base).completions.create(model="t", prompt="Soap", max_tokens=2),
            lambda: client(base).chat.completions.create(
                model="t", messages=[{"role": "user", "content": "Soap"}], stream=True
            ),
        ):
            with pytest.raises(openai.InternalServerError) as caught:
                call()
            assert caught.value.status_code == 503 and "busy" in caught.value.message
            assert caught.value.response.headers["Retry-After"] == "5"
        gated.go.set()
        thread.join(60)
        assert first and first[0].choices[0].text is not None
        again = client(base).completions.create(model="t", prompt="Soap", max_tokens=2)
        assert again.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_the_time_limit_cuts_streams_and_fails_late_answers(describer: Any) -> None:
    from productdesc.serve import create_app

    with serving(create_app(describer, timeout_s=0.0)) as base:
        with pytest.raises(openai.APIStatusError) as caught:
            client(base).completions.create(model="t", prompt="Soap", max_tokens=NEW)
        assert caught.value.status_code == 504 and "time limit" in caught.value.message
        chunks = list(
            client(base).completions.create(model="t", prompt="Soap", max_tokens=50, stream=True)
        )
        assert chunks[-1].choices[0].finish_reason == "length"
        assert len([c for c in chunks if c.choices[0].text]) == 1  # cut after the first piece
        # the places came back: the late answer's when it ended, the stream's when it was cut
        for _ in range(100):
            try:
                client(base).models.list()
                break
            except openai.APIError:  # pragma: no cover - only while the late answer runs
                time.sleep(0.1)


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_serve_command_answers_with_the_key_from_the_environment(
    tiny_llama: Path, describer: Any
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PRODUCTDESC_API_KEY": "from-env", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "productdesc.cli", "serve", "--model", str(tiny_llama)]
    command += ["--port", str(port), "--backend", "transformers", "--max-new-tokens", str(NEW)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                assert time.monotonic() < deadline, "productdesc serve did not start"
                time.sleep(0.2)
        with pytest.raises(openai.AuthenticationError):
            client(base).models.list()
        keyed = client(base, "from-env")
        assert [m.id for m in keyed.models.list().data] == [tiny_llama.name]
        reply = keyed.chat.completions.create(
            model=tiny_llama.name, messages=[{"role": "user", "content": "Nice for Mice"}]
        )
        # --max-new-tokens is the server's default length; the rest is the library's decoding
        assert reply.choices[0].message.content == describer.describe(
            "Nice for Mice", max_new_tokens=NEW
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
        stderr = process.stderr.read()
    assert "no authentication" not in stderr


@pytest.mark.slow
def test_a_hybrid_serves_known_products_their_description(describer: Any) -> None:
    """``serve --hybrid``: a title retrieval is sure of gets the known description, streamed or
    not, with no new tokens counted; another title is the describer's answer."""
    from productdesc.generation.hybrid import HybridDescriber
    from productdesc.retrieval import RetrievalIndex
    from productdesc.serve import create_app

    known = "A cheese scented soap, 3 oz."
    index = RetrievalIndex.build(
        [{"uid": "k", "title": "Nice for Mice", "content": known}], show_progress=False
    )
    sure = index.search("Nice for Mice", 1)[0].score
    with serving(create_app(HybridDescriber(describer, index, sure), model_name="h")) as base:
        reply = client(base).completions.create(
            model="h", prompt=["Nice for Mice", "Wireless mouse"], max_tokens=NEW
        )
        assert [c.text for c in reply.choices] == [
            known,
            describer.describe("Wireless mouse", max_new_tokens=NEW),
        ]
        assert reply.choices[0].finish_reason == "stop"
        stream = client(base).chat.completions.create(
            model="h", messages=[{"role": "user", "content": "Nice for Mice"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == known
