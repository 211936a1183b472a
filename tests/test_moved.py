"""Old import paths of moved modules keep working for one release, and say where to go."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("productdesc.describe", "Describer", "productdesc.generation.describer"),
    ("productdesc.describe", "FAST_MIN_NEW_TOKENS", "productdesc.generation.describer"),
    ("productdesc.fastgen", "StaticGreedyDecoder", "productdesc.generation.static_decoder"),
    ("productdesc.fastgen", "grouped_decode_attention", "productdesc.generation.fusion"),
    ("productdesc.compile_cache", "use_compile_cache", "productdesc.generation.compile_cache"),
    ("productdesc.hybrid", "HybridDescriber", "productdesc.generation.hybrid"),
    ("productdesc.context", "open_index", "productdesc.retrieval.store"),
    ("productdesc.gguf_export", "export_gguf", "productdesc.export"),
    ("productdesc.context", "neighbours", "productdesc.retrieval.neighbours"),
    ("productdesc.context", "bind_retriever", "productdesc.prompts.context"),
    ("productdesc.backends.distributed", "is_main_process", "productdesc.distributed"),
    ("productdesc.data.cleaning", "Pipeline", "productdesc.data.pipeline"),
    ("productdesc.data.cleaning", "step_name", "productdesc.data.pipeline"),
    ("productdesc.models", "tokenizer_adds_bos", "productdesc.tokenizers"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_an_old_path_gives_the_same_object_and_warns(old: str, name: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_import_of_an_old_path_works() -> None:
    with pytest.warns(DeprecationWarning, match="productdesc.generation.describer"):
        from productdesc.describe import Describer
    import productdesc

    assert Describer is productdesc.Describer


def test_a_name_that_never_was_is_an_attribute_error() -> None:
    import productdesc.describe

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        productdesc.describe.Nope  # noqa: B018


def test_the_package_itself_imports_no_old_path() -> None:
    """The library's own code uses the new paths: a user sees a warning only for theirs."""
    from test_layout import _graph

    old = {
        f"productdesc.{m}"
        for m in (
            "describe",
            "fastgen",
            "fused_decode",
            "compile_cache",
            "hybrid",
            "context",
            "gguf_export",
            "backends.distributed",
        )
    }
    users = {name for name, deps in _graph().items() if deps & old}
    assert users == set()
