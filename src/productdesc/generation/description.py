"""What a call returns for each answer: :class:`Description`."""

from __future__ import annotations

import attrs

__all__ = ["Description"]


@attrs.frozen
class Description:
    """One generated answer with how generation ended.

    Attributes:
        text: The answer only (no prompt, no special tokens), as the template parses it.
        stopped_at_eos: The model ended the answer itself; ``False`` means ``max_new_tokens``
            cut it (or a stream was closed early).
        new_tokens: Tokens generated for this answer, counting the EOS token when there is one
            (so it is at most ``max_new_tokens``, and equal to it when ``stopped_at_eos`` is
            ``False``).
        source: ``"model"`` for a generated answer; ``"retrieval"`` for a known product's
            description that :class:`~productdesc.generation.hybrid.HybridDescriber` returned instead.
    """

    text: str
    stopped_at_eos: bool
    new_tokens: int
    source: str = "model"
