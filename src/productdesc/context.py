"""Moved: :mod:`productdesc.retrieval.store` (``open_index``, ``build_index``),
:mod:`productdesc.retrieval.neighbours` and :mod:`productdesc.prompts.context` (``bind_retriever``,
``check_retriever``, ``uses_context``); this path works, with a warning, until 0.2."""

from productdesc._moved import forward

__getattr__ = forward(
    __name__,
    "productdesc.retrieval.store",
    "productdesc.retrieval.neighbours",
    "productdesc.prompts.context",
)
