"""An answer streamed in pieces while a background thread generates it.

It knows how to run a generation in a thread and release its text as the template's parse
grows, not which model or path generates (the caller's ``run``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["stream_answer"]


def stream_answer(
    run: Callable[..., Any], tokenizer: Any, parse: Callable[[str], str], lock: threading.Lock
) -> Iterator[str]:
    """The answer ``run(streamer=..., stopping_criteria=...)`` generates, piece by piece.

    ``run`` is called in a background thread that holds ``lock`` (taken before the thread
    starts, released when it ends), with a ``TextIteratorStreamer`` of ``tokenizer`` and a
    stopping criterion that ends generation once the consumer closes this iterator. A piece is
    what ``parse`` of the text so far adds to the pieces already sent; an error in ``run`` is
    raised here, in the consumer's thread.
    """
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    closed = threading.Event()
    failure: list[BaseException] = []
    lock.acquire()
    try:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

        def work() -> None:
            try:
                run(
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenSet(closed)]),
                )
            except BaseException as exc:  # re-raised in the consumer's thread below
                failure.append(exc)
                streamer.end()  # wake the consumer
            finally:
                lock.release()

        thread = threading.Thread(target=work, name="productdesc-stream", daemon=True)
        thread.start()
    except BaseException:
        lock.release()
        raise
    try:
        raw = emitted = ""
        for piece in streamer:
            raw += piece
            fresh = _extension(emitted, parse(raw))
            if fresh:
                emitted += fresh
                yield fresh
        if failure:
            raise failure[0]
        fresh = _extension(emitted, parse(raw))
        if fresh:
            yield fresh
    finally:
        closed.set()  # consumer done or gone: stop generating at the next token
        thread.join()


def _extension(emitted: str, parsed: str) -> str:
    """What ``parsed`` adds after ``emitted``; nothing while it does not extend it.

    The template's ``parse`` may trim trailing whitespace that the next token continues, so
    a streamed answer is released only where it grows the text already sent.
    """
    return parsed[len(emitted) :] if parsed.startswith(emitted) else ""


class _StopWhenSet:
    """A ``StoppingCriteria`` that ends generation once an event is set (stream closed)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )
