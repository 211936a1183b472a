"""The server's routes over one describer: each reads a request (:mod:`.requests`), has its
answer made (:mod:`.answers`) and writes it as OpenAI's API does (:mod:`.responses`)."""

from __future__ import annotations

import contextlib
import copy
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from productdesc.errors import UserError
from productdesc.serve import responses
from productdesc.serve.answers import Answers
from productdesc.serve.requests import (
    RequestError,
    _chat_title,
    _check_lengths,
    _completion_titles,
    _max_tokens,
    _overrides,
    read_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

API_KEY_ENV = "PRODUCTDESC_API_KEY"
"""The environment variable ``productdesc serve`` reads the API key from."""
TIMED_OUT = "\n[stopped: the server's time limit for one answer was reached]"
"""What ends a ``/describe`` answer cut by the time limit."""

logger = logging.getLogger("productdesc.serve")  # the server's one logger


class Server:
    """The routes of :func:`productdesc.serve.create_app`, as methods over its options."""

    def __init__(
        self,
        answers: Answers,
        *,
        api_key: str | None,
        max_prompt_tokens: int,
        max_new_tokens_cap: int,
        model_name: str,
    ) -> None:
        self.answers = answers
        self.describer = answers.describer
        self.api_key = api_key
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens_cap = max_new_tokens_cap
        self.model_name = model_name
        self.created = int(time.time())
        # A copy for the event loop: the describer's own tokenizer runs in its generating
        # thread, and a fast tokenizer is not safe to share across threads.
        shared = getattr(self.describer, "tokenizer", None)
        self._tokenizer = copy.deepcopy(shared) if shared else None

    def routes(self) -> list[Route]:
        from starlette.routing import Route

        return [
            Route("/v1/completions", self._openai(self.completions), methods=["POST"]),
            Route("/v1/chat/completions", self._openai(self.chat_completions), methods=["POST"]),
            Route("/v1/models", self.models),
            Route("/v1/models/{model:path}", self.model),
            Route("/describe", self.describe),
            Route("/health", self.health),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        if self.api_key is None:
            logger.warning(
                "no authentication: no API key is set (--api-key or $%s), so anyone who can "
                "reach this server may use it",
                API_KEY_ENV,
            )
        else:
            logger.info("every route but /health wants 'Authorization: Bearer' with the API key")
        try:
            yield
        finally:
            self.answers.close()

    # -- what every route checks ----------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        if self.api_key is not None and not hmac.compare_digest(
            request.headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode()
        ):
            raise RequestError(
                401, "an 'Authorization: Bearer KEY' header with the key is required"
            )

    def prompt_tokens(self, pairs: list[tuple[str, str | None]]) -> int:
        """Renders each prompt as the describer will, and checks its length in tokens."""
        if self._tokenizer is None:
            self._tokenizer = copy.deepcopy(self.describer.tokenizer)
        total = 0
        for title, question in pairs:
            try:
                prompt = self.describer.template.render(title, question=question)
            except UserError as exc:
                raise RequestError(400, str(exc)) from None
            tokens = len(self._tokenizer(prompt)["input_ids"])
            if tokens > self.max_prompt_tokens:
                raise RequestError(
                    400, f"the prompt is {tokens} tokens; at most {self.max_prompt_tokens}"
                )
            total += tokens
        return total

    def _openai(self, handler: Callable[[dict[str, Any]], Any]) -> Callable[[Request], Any]:
        """A POST route that checks the key, reads the JSON body and answers errors as OpenAI."""

        async def endpoint(request: Request) -> Response:
            try:
                self.check_key(request)
                return await handler(await read_json(request))
            except RequestError as error:
                return responses.openai_error(error)

        return endpoint

    # -- the routes ------------------------------------------------------------------------------
    async def completions(self, body: dict[str, Any]) -> Response:
        overrides = _overrides(body, self.max_new_tokens_cap)
        pairs = _completion_titles(body)
        n_prompt = self.prompt_tokens(pairs)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
        }
        if body.get("stream"):
            if len(pairs) > 1:
                raise RequestError(400, "stream needs a single prompt", param="prompt")

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
                return {**head, "choices": [choice]}

            pieces = self.answers.stream(*pairs[0], overrides)
            return responses.event_stream(responses.events(pieces, chunk))
        details = await self.answers.batch(pairs, overrides)
        choices = [
            {
                "index": i,
                "text": d.text,
                "logprobs": None,
                "finish_reason": responses.finish_reason(d),
            }
            for i, d in enumerate(details)
        ]
        n_new = sum(d.new_tokens for d in details)
        return responses.json_response(
            {**head, "choices": choices, "usage": responses.usage(n_prompt, n_new)}
        )

    async def chat_completions(self, body: dict[str, Any]) -> Response:
        overrides = _overrides(body, self.max_new_tokens_cap)
        title, question = _chat_title(body)
        n_prompt = self.prompt_tokens([(title, question)])
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.get("stream"):
            head = {"id": ident, "object": "chat.completion.chunk", "created": now}
            head["model"] = self.model_name
            first = [True]

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                if first[0]:
                    delta["role"] = "assistant"
                    first[0] = False
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {**head, "choices": [choice]}

            pieces = self.answers.stream(title, question, overrides)
            return responses.event_stream(responses.events(pieces, chunk))
        (d,) = await self.answers.batch([(title, question)], overrides)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": d.text},
            "logprobs": None,
            "finish_reason": responses.finish_reason(d),
        }
        return responses.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": now,
                "model": self.model_name,
                "choices": [choice],
                "usage": responses.usage(n_prompt, d.new_tokens),
            }
        )

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "productdesc",
        }

    async def models(self, request: Request) -> Response:
        try:
            self.check_key(request)
        except RequestError as error:
            return responses.openai_error(error)
        return responses.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        try:
            self.check_key(request)
            if request.path_params["model"] != self.model_name:
                raise RequestError(
                    404,
                    f"no model {request.path_params['model']!r}; "
                    f"this server has {self.model_name!r}",
                )
        except RequestError as error:
            return responses.openai_error(error)
        return responses.json_response(self._model_card())

    async def describe(self, request: Request) -> Response:
        try:
            self.check_key(request)
            params = request.query_params
            title = params.get("title", "").strip()
            if not title:
                raise RequestError(400, "the 'title' query parameter is required")
            question = params.get("question") or None
            _check_lengths(title, question, "title")
            overrides: dict[str, Any] = {}
            if "max_new_tokens" in params:
                overrides["max_new_tokens"] = _max_tokens(
                    params["max_new_tokens"], self.max_new_tokens_cap, "max_new_tokens"
                )
            self.prompt_tokens([(title, question)])
            pieces = self.answers.stream(title, question, overrides)
        except RequestError as error:
            return responses.plain_error(error)

        async def text() -> AsyncIterator[str]:
            try:
                async for piece in pieces:
                    yield TIMED_OUT if piece is None else piece
            finally:
                await pieces.aclose()  # type: ignore[attr-defined]  # an async generator

        return responses.text_stream(text())

    async def health(self, request: Request) -> Response:
        return responses.text("ok")
