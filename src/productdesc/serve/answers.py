"""Answers off the event loop: at most ``max_queue`` at once, each within the time limit.

Non-streamed answers run on one worker thread of the server's own, so queued requests that
time out never reach the model; streamed ones run in the describer's stream thread, pulled
piece by piece. The describer's lock serialises the two. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from productdesc.errors import UserError
from productdesc.serve.requests import RequestError

logger = logging.getLogger("productdesc.serve")  # the server's one logger
_DONE = object()


class _Slot:
    """One taken place in the queue; released once, at the latest when it is garbage."""

    def __init__(self, semaphore: threading.BoundedSemaphore) -> None:
        self._semaphore: threading.BoundedSemaphore | None = semaphore

    def release(self) -> None:
        semaphore, self._semaphore = self._semaphore, None
        if semaphore is not None:
            semaphore.release()

    # A streamed response whose body never started (the client left first) frees its place.
    __del__ = release


class Answers:
    """Where a request's answer is made: :meth:`batch` for whole answers, :meth:`stream` for
    pieces. A request over the queue's size is a 503, one past the time limit a 504 (or a cut
    stream), and a :class:`~productdesc.errors.UserError` from the describer a 400."""

    def __init__(self, describer: Any, *, timeout_s: float, max_queue: int) -> None:
        self.describer = describer
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self._slots = threading.BoundedSemaphore(max_queue)
        self._worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="productdesc-serve"
        )

    def close(self) -> None:
        """Stops the worker; answers still queued are cancelled."""
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _take_slot(self) -> _Slot:
        if not self._slots.acquire(blocking=False):
            raise RequestError(
                503, f"busy: {self.max_queue} requests are being answered or waiting; retry"
            )
        return _Slot(self._slots)

    async def batch(
        self, pairs: list[tuple[str, str | None]], overrides: dict[str, Any]
    ) -> list[Any]:
        """The answers to ``(title, question)`` pairs, with details (``describe_batch``'s)."""
        slot = self._take_slot()
        try:
            future = self._worker.submit(
                self.describer.describe_batch,
                [title for title, _ in pairs],
                [question for _, question in pairs],
                return_details=True,
                **overrides,
            )
        except BaseException:
            slot.release()
            raise
        # Released when the answer is done, or when a queued request is cancelled below; an
        # answer already generating when time runs out keeps its slot until it ends.
        future.add_done_callback(lambda _: slot.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            logger.warning("an answer was not ready within the time limit (%s s)", self.timeout_s)
            raise RequestError(
                504, f"no answer within the server's time limit of {self.timeout_s} s"
            ) from None
        except UserError as exc:
            raise RequestError(400, str(exc)) from None

    def stream(
        self, title: str, question: str | None, overrides: dict[str, Any]
    ) -> AsyncIterator[str | None]:
        """``describer.stream``'s pieces as an async iterator, ending with one ``None`` where
        the time limit cuts it; takes a slot at once (503 if none)."""
        try:
            # stream() checks its options at once; generation starts on the first piece.
            pieces = self.describer.stream(title, question, **overrides)
        except UserError as exc:
            raise RequestError(400, str(exc)) from None
        try:
            slot = self._take_slot()
        except RequestError:
            pieces.close()
            raise
        return _pieces_until(pieces, time.monotonic() + self.timeout_s, slot)


async def _pieces_until(
    pieces: Iterator[str], deadline: float, slot: _Slot
) -> AsyncIterator[str | None]:
    """``pieces``, pulled in worker threads, until ``deadline`` (then one ``None``).

    However the answer ends (done, cut, client gone), the stream is closed, which stops
    its generation at the next token, and the request's slot is freed.
    """
    import anyio

    try:
        while True:
            piece = await anyio.to_thread.run_sync(next, pieces, _DONE)
            if piece is _DONE:
                return
            yield piece
            if time.monotonic() > deadline:
                logger.warning("an answer reached the time limit and was cut")
                yield None
                return
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pieces.close)
        slot.release()
