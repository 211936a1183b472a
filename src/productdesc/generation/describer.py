"""Generate product descriptions with a fine-tuned model: one title, a batch, or a stream.

Usage::

    from productdesc import Describer

    describer = Describer.from_pretrained("runs/smollm2-lora")
    describer.describe("Nice for Mice")                          # -> "A charming picture book ..."
    describer.describe("Nice for Mice", "Is it good for toddlers?")
    describer.describe_batch(titles, progress=True)              # left-padded, length-sorted
    for piece in describer.stream("Nice for Mice"):
        print(piece, end="", flush=True)

    # a model trained with the "context" template answers from the nearest known products
    describer = Describer.from_pretrained("runs/context-lora", retriever="data/prepared/retrieval")

Every public method goes through one private step, :meth:`Describer._generate_padded`, which
runs ``generate`` on one left-padded batch; a faster CUDA path (static KV cache, CUDA graphs,
:mod:`~productdesc.generation.static_decoder`) replaces that step and nothing else.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from productdesc.backends import get_backend
from productdesc.config import GenerationConfig
from productdesc.errors import UserError
from productdesc.generation.decoding import (
    evolve_generation,
    hf_generation_config,
    length_penalty,
    model_processors,
    stop_and_pad_ids,
)
from productdesc.generation.description import Description
from productdesc.generation.loading import load_for_describer
from productdesc.generation.static_decoder import StaticGreedyDecoder
from productdesc.generation.streaming import stream_answer
from productdesc.prompts import get_template
from productdesc.prompts.context import bind_retriever

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Describer", "Description", "evolve_generation"]

logger = logging.getLogger(__name__)

#: With ``fast=None`` and ``torch_compile=True``, a call takes the fast path once it asks for
#: at least this many new tokens (titles x ``max_new_tokens``), or once the path is compiled:
#: below it, the compilation costs more than the faster decoding saves (the break-even,
#: measured, is on the benchmarks page, "Cold start and the per-call choice").
FAST_MIN_NEW_TOKENS = 400_000


class Describer:
    """Answers questions about product titles with a (fine-tuned) causal LM.

    The prompt is the template the model was trained with (Alpaca by default); generation stops
    at the tokenizer's EOS token, and only the answer is returned.

    Thread safety:
        One ``Describer`` may be shared by many threads (a web service): :meth:`describe`,
        :meth:`describe_batch` and :meth:`stream` are safe to call concurrently. They are
        *serialised* by one lock per instance, because ``generate`` on one model, and a fast
        tokenizer's padding and truncation state, are not safe to use from several threads at
        once. So concurrent calls wait for each other; for throughput send many titles in one
        :meth:`describe_batch` call instead of many threads. :meth:`describe_batch` takes the lock
        per batch of ``batch_size`` titles, so other callers interleave between its batches. A
        :meth:`stream` holds the lock from its first ``next()`` until generation ends; closing
        the iterator early (``break``, ``close()``) stops generation at the next token and
        releases it.

        Not thread-safe: reassigning :attr:`generation`, :attr:`template`, :attr:`model` or
        :attr:`tokenizer` while calls run; using the same model or tokenizer outside this
        ``Describer`` (or in a second ``Describer``, which has its own lock) at the same time.
        Sampling (``do_sample=True``) draws from torch's global random generator, so sampled
        outputs depend on the order in which concurrent calls run.

    Args:
        model: A causal LM (``transformers`` or a PEFT model around one), already on its device.
            It is put in eval mode.
        tokenizer: Its tokenizer. When it has no pad token, or pads with EOS, a distinct pad
            token is set on it (the unknown token, else a new ``<|pad|>``) and logged.
        template: A prompt template object, a registered template name, or ``None`` for
            ``"alpaca"``; names are bound to ``tokenizer`` with ``for_tokenizer``.
        generation: Default decoding settings; each call may override single fields.
        backend: A backend object or name (see :mod:`productdesc.backends`) whose
            ``prepare_for_inference`` is applied to ``model`` once (Unsloth's
            ``for_inference``); ``None`` uses the model as given.
        retriever: For a template that shows context (``"context"``): the retrieval index the
            nearest known products come from at answer time, or its directory (see
            :func:`productdesc.retrieval.store.open_index`). With ``template=None`` it selects the
            ``"context"`` template.
        fast: Greedy, non-streamed calls decode with
            :class:`~productdesc.generation.static_decoder.StaticGreedyDecoder` (static KV cache, runs of
            one-token steps recorded as CUDA graphs and replayed, early exit). ``True``: every
            such call; ``False``: never; ``None`` (the default): where the model is on a CUDA
            GPU, except under Unsloth, whose inference mode patches the model. The first call
            of each shape (batch size, prompt length rounded up to 32 tokens,
            ``max_new_tokens``) runs its steps eagerly once and records them, about a second;
            later calls replay them. The start all prompts of a batch share (the template's
            instruction) is computed once and kept (see ``share_prefix`` there); weights
            changed through ``.data`` after the first call are not seen (build a new
            ``Describer``). The model is changed in place, computing the same values: its
            SDPA attention is switched to
            :func:`~productdesc.generation.fusion.grouped_decode_attention`, and the q/k/v and gate/up
            weights of its Llama layers become views of one tensor each (``state_dict``
            unchanged). Models with sliding-window layers decode with ``generate`` (with
            ``fast=True`` they raise). ``repetition_penalty``, ``no_repeat_ngram_size`` and
            ``exponential_decay_length_penalty`` are computed inside the fast path's step, as
            ``generate`` computes them; sampling and :meth:`stream` always use ``generate``.
        torch_compile: Compile the fast path's step and the prompt's forward with
            ``torch.compile`` before recording them: about twice the decoding speed, for a
            warm-up of minutes on a GPU (:doc:`/benchmarks`, "Cold start";
            :mod:`productdesc.generation.compile_cache` keeps the result on disk for later processes).
            torch compiles again while sizes turn symbolic, so with ``fast=None`` a call takes
            the fast path only once it is big enough to repay compiling
            (:data:`FAST_MIN_NEW_TOKENS`), and every call after it; each choice is logged. A
            service calls :meth:`warm_up` before it takes traffic.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        template: Any = None,
        generation: GenerationConfig | None = None,
        backend: Any = None,
        fast: bool | None = None,
        torch_compile: bool = False,
        retriever: Any = None,
    ) -> None:

        if template is None and retriever is not None:
            template = "context"
        if isinstance(backend, str):
            backend = get_backend(backend)
        if backend is not None:
            model = backend.prepare_for_inference(model)
        model.eval()  # a model straight from training would keep LoRA dropout on
        self.model = model
        self.tokenizer = tokenizer
        self.backend = backend
        self._stop_ids, self._pad_id = stop_and_pad_ids(model, tokenizer)
        self.template = bind_retriever(_resolve_template(template, tokenizer), retriever)
        self.generation = generation if generation is not None else GenerationConfig()
        if not isinstance(self.generation, GenerationConfig):
            raise TypeError(
                f"generation must be a GenerationConfig, not {type(self.generation).__name__}"
            )
        self._lock = threading.Lock()
        cuda = model.device.type == "cuda"
        required = fast is True
        if fast is None:
            fast = cuda and getattr(backend, "name", None) != "unsloth"
        self._fast = None
        self.torch_compile = torch_compile
        # Whether every greedy call takes the fast path; with fast=None and torch_compile it
        # becomes true once the compilation is paid for. Without torch_compile there is none
        # to pay for: recording a shape's CUDA graphs costs less than one call of generate.
        self._fast_always = required or not torch_compile
        if fast:
            try:
                # On CPU, compiling costs more than a job saves: the static-cache loop runs
                # eagerly.
                compile_mode = "default" if cuda and torch_compile else None
                self._fast = StaticGreedyDecoder(model, compile_mode=compile_mode)
            except ValueError as exc:
                if required:
                    raise UserError(f"fast=True: {exc}") from exc
                logger.info("greedy decoding uses generate: %s", exc)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str = "auto",
        base_only: bool = False,
        load_in_4bit: bool = False,
        dtype: str = "auto",
        merge_lora: bool | None = None,
        generation: GenerationConfig | None = None,
        template: Any = None,
        fast: bool | None = None,
        torch_compile: bool = False,
        retriever: Any = None,
    ) -> Describer:
        """Load a training output directory (LoRA adapter) or a merged model directory.

        An adapter directory's base model is resolved from its adapter config. When the
        directory holds ``productdesc_config.toml`` (every training run writes it), its
        ``template`` and ``backend`` are used unless given here.

        Args:
            path: The directory.
            backend: A backend name; ``"auto"`` takes the one the run was trained with, else
                Unsloth when installed, else transformers.
            base_only: Load the base model *without* the adapter, with the same prompt (the
                zero-shot baseline for evaluation).
            load_in_4bit: Load the base in 4-bit NF4 (needs bitsandbytes).
            dtype: The weights' dtype, a :data:`~productdesc.config.DTYPES` name (``"auto"``:
                bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU).
            merge_lora: Merge the adapter into the weights (``merge_and_unload``): faster
                generation, same outputs within float tolerance. Not possible in 4-bit.
                ``None``: merge on a CUDA GPU unless ``load_in_4bit``.
            generation: Default decoding settings (``None``: the seed's, greedy and 128 tokens).
            template: A template object or name (``None``: the run's, else ``"alpaca"``).
            fast: The CUDA fast path (see :class:`Describer`); ``None``: on where CUDA is.
            torch_compile: Compile the fast path's step with ``torch.compile`` (see
                :class:`Describer`).
            retriever: The retrieval index (or its directory) for a run trained with the
                ``"context"`` template; see :class:`Describer`.

        Raises:
            UserError: The directory is missing, ``merge_lora`` is asked for in 4-bit, or the
                template needs a retriever and none is given (checked before loading).
        """
        model, tokenizer, found = load_for_describer(
            path,
            backend=backend,
            base_only=base_only,
            load_in_4bit=load_in_4bit,
            dtype=dtype,
            merge_lora=merge_lora,
            template=template,
            retriever=retriever,
        )
        return cls(
            model, tokenizer, generation=generation, fast=fast, torch_compile=torch_compile, **found
        )

    # -- public API ----------------------------------------------------------------------------
    def describe(self, title: str, question: str | None = None, **overrides: Any) -> str:
        """The answer for one title (and an optional question about it).

        Args:
            title: The product title.
            question: A question about the product; ``None`` asks for a description.
            **overrides: :class:`~productdesc.config.GenerationConfig` fields for this call.

        Raises:
            UserError: A bad override (the message names the field).
        """
        gen = evolve_generation(self.generation, **overrides)
        return self._describe_prompts([self._render(title, question)], gen, 1, False)[0].text

    def describe_batch(
        self,
        titles: Sequence[str],
        questions: Sequence[str | None] | None = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        return_details: bool = False,
        **overrides: Any,
    ) -> list[str] | list[Description]:
        """Answers for many titles, in input order.

        Prompts are sorted by token length and generated ``batch_size`` at a time with left
        padding, so each batch wastes little compute on padding; greedy answers are the same as
        :meth:`describe` gives one title at a time (within float tolerance of batched kernels).

        Args:
            titles: Product titles.
            questions: ``None``, or one question (or ``None``) per title.
            batch_size: Titles per ``generate`` call (``None``: ``generation.batch_size``).
            progress: Show a tqdm bar on stderr.
            return_details: Return :class:`Description` objects instead of strings.
            **overrides: :class:`~productdesc.config.GenerationConfig` fields for this call.

        Raises:
            UserError: ``questions`` has another length than ``titles``, or a bad override.
        """
        if batch_size is not None:
            overrides["batch_size"] = batch_size
        gen = evolve_generation(self.generation, **overrides)
        if questions is None:
            questions = [None] * len(titles)
        elif len(questions) != len(titles):
            raise UserError(f"got {len(titles)} titles but {len(questions)} questions")
        prompts = [self._render(t, q) for t, q in zip(titles, questions, strict=True)]
        details = self._describe_prompts(prompts, gen, gen.batch_size, progress)
        return details if return_details else [d.text for d in details]

    def warm_up(self) -> None:
        """Ready the fast path for any later batch size, prompt length and answer length.

        Three greedy calls (one short prompt, one a length bucket longer, then both
        together) load the attention kernel and record their CUDA graphs; the last also
        leaves the template's start computed, so later batches run their forward over the
        title and what follows only. With ``torch_compile``, torch compiles the first shape
        as it is, then makes a size symbolic each time one changes, and each compilation
        takes tens of seconds on a GPU (see :doc:`/benchmarks`): these three calls leave
        every size symbolic, so that afterwards no call compiles and a new shape only
        records its graphs. A service calls this before it takes traffic. Without the fast
        path (see ``fast``) it does nothing.
        """
        fast = self._fast
        if fast is None:
            return
        short = self._render("warm up", None)
        # Titles with different first words: their batch keeps the template's own start
        # (the fast path's ``share_prefix``) for later batches.
        longer = self._render(" ".join(["ready"] * fast.length_bucket), None)
        # Greedy (the defaults), and long enough to run the decode step and record a graph:
        # min_new_tokens keeps EOS back.
        n_new = 1 + fast.check_every
        gen = type(self.generation)(max_new_tokens=n_new, min_new_tokens=n_new)
        with self._lock:
            rows = self._encode([short, longer])
            for batch in ([rows[0]], [rows[1]], rows):
                self._generate_padded(*self._left_pad(batch), gen, fast=True)
            self._fast_always = True
        logger.info("fast path warmed up: later shapes record graphs without compiling")

    def stream(self, title: str, question: str | None = None, **overrides: Any) -> Iterator[str]:
        """Yield the answer in pieces as it is generated (for greedy decoding, the pieces
        joined are exactly :meth:`describe`'s answer).

        Generation runs in a background thread (``TextIteratorStreamer``); closing the iterator
        early stops it. Options are checked here, before the first piece is asked for.

        Pieces are released as the template's ``parse`` of the text so far grows, so whitespace
        it trims and a following ``"### "`` section are never sent. The one case where the joined
        pieces can differ from :meth:`describe`: text that ``parse`` cuts only once more of it
        arrives (a model that writes the Alpaca preamble into its answer) may have been sent.

        Raises:
            UserError: A bad override (the message names the field).
        """
        gen = evolve_generation(self.generation, **overrides)
        return self._stream(self._render(title, question), gen)

    # -- internals -----------------------------------------------------------------------------
    def _render(self, title: str, question: str | None) -> str:
        if not isinstance(title, str):
            raise UserError(f"a title must be a string, not {type(title).__name__}")
        return self.template.render(title, question=question)

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        # Caller holds the lock: a fast tokenizer's Rust state is not safe across threads.
        return self.tokenizer(prompts, padding=False, truncation=False)["input_ids"]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            # Left padding: every row's last prompt token sits in the last column, so the
            # first generated token of every row is predicted from the same position.
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        device = self.model.device
        return ids.to(device), mask.to(device)

    def _generate_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        gen: GenerationConfig,
        *,
        fast: bool = False,
        streamer: Any = None,
        stopping_criteria: Any = None,
    ) -> torch.Tensor:
        """Generate for one left-padded batch; returns only the new tokens, ``(B, T_new)``.

        The single place that runs the model: a fast path (static cache, CUDA graphs)
        replaces this method and must keep its contract: rows finished at EOS are filled with
        the pad id after it, ``streamer`` (batch of 1) gets ``put`` per step and ``end``,
        and ``stopping_criteria`` is honoured. ``fast``: take the fast path where it can
        decode with ``gen`` (see :meth:`_takes_fast_path`). Caller holds the lock.
        """
        import torch

        greedy = not gen.do_sample and not model_processors(self.model)
        fast = fast and self._fast is not None
        if fast and greedy and streamer is None and stopping_criteria is None:
            return self._fast.generate(
                input_ids,
                attention_mask,
                max_new_tokens=gen.max_new_tokens,
                min_new_tokens=gen.min_new_tokens,
                eos_token_id=self._stop_ids,
                pad_token_id=self._pad_id,
                repetition_penalty=gen.repetition_penalty,
                no_repeat_ngram_size=gen.no_repeat_ngram_size,
                exponential_decay_length_penalty=length_penalty(gen),
            )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=hf_generation_config(gen, self._stop_ids, self._pad_id),
                streamer=streamer,
                stopping_criteria=stopping_criteria,
            )
        return out[:, input_ids.shape[1] :]

    def _finish(self, new_ids: list[int]) -> Description:
        # Rows that stopped early are padded after their EOS; cut at the first EOS, not at the
        # first pad id, because a model may generate the pad id as an ordinary token.
        ends = [i for i, token in enumerate(new_ids) if token in self._stop_ids]
        stopped = bool(ends)
        n = ends[0] + 1 if stopped else len(new_ids)
        raw = self.tokenizer.decode(new_ids[:n], skip_special_tokens=True)
        return Description(text=self.template.parse(raw), stopped_at_eos=stopped, new_tokens=n)

    def _describe_prompts(
        self, prompts: list[str], gen: GenerationConfig, batch_size: int, progress: bool
    ) -> list[Description]:
        from tqdm.auto import tqdm

        if not prompts:
            return []
        with self._lock:
            rows = self._encode(prompts)
        # Longest first: similar lengths share a batch (little padding), and an out-of-memory
        # error shows in the first batch rather than after an hour.
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        results: list[Description | None] = [None] * len(rows)
        fast = self._takes_fast_path(len(rows), gen)
        with tqdm(total=len(rows), disable=not progress, unit="title", desc="describing") as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                with self._lock:
                    ids, mask = self._left_pad([rows[i] for i in chunk])
                    new = self._generate_padded(ids, mask, gen, fast=fast).tolist()
                    for i, new_ids in zip(chunk, new, strict=True):
                        results[i] = self._finish(new_ids)
                bar.update(len(chunk))
        return results  # type: ignore[return-value]  # every slot was filled above

    def _takes_fast_path(self, n_prompts: int, gen: GenerationConfig) -> bool:
        """Whether a call of ``n_prompts`` prompts decodes on the fast path (see ``fast``)."""
        if self._fast is None or self._fast_always:
            return self._fast is not None
        budget = n_prompts * gen.max_new_tokens
        if budget < FAST_MIN_NEW_TOKENS:
            logger.info(
                "decoding with generate: %d prompts x %d new tokens is less than the %d new "
                "tokens that repay the fast path's compilation (Describer(fast=True) or "
                "--fast forces it)",
                n_prompts,
                gen.max_new_tokens,
                FAST_MIN_NEW_TOKENS,
            )
            return False
        logger.info(
            "decoding on the fast path: %d prompts x %d new tokens", n_prompts, gen.max_new_tokens
        )
        self._fast_always = True  # compiled by this call: later calls reuse it
        return True

    def _stream(self, prompt: str, gen: GenerationConfig) -> Iterator[str]:
        def run(**hooks: Any) -> None:
            # In the streaming thread, which holds the lock: a fast tokenizer's Rust state is
            # not safe across threads.
            self._generate_padded(*self._left_pad(self._encode([prompt])), gen, **hooks)

        return stream_answer(run, self.tokenizer, self.template.parse, self._lock)


def _resolve_template(template: Any, tokenizer: Any) -> Any:

    if template is None:
        template = "alpaca"
    if isinstance(template, str):
        return get_template(template, tokenizer=tokenizer)
    return template
