"""The package's public face: ``__all__`` names what users import and receive, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import productdesc


def test_every_public_name_resolves() -> None:
    for name in productdesc.__all__:
        assert getattr(productdesc, name) is not None, name
    assert {"TrainResult", "Description", "Manifest", "UserError", "BaseTemplate"} <= set(
        productdesc.__all__
    )


def test_all_is_what_the_package_loads_lazily() -> None:
    assert sorted(productdesc.__all__) == sorted(["__version__", *productdesc._LAZY])
    assert len(set(productdesc.__all__)) == len(productdesc.__all__)


def test_returned_types_are_the_classes_their_modules_define() -> None:
    from productdesc.data.manifest import Manifest
    from productdesc.errors import UserError
    from productdesc.finetune import TrainResult
    from productdesc.generation.describer import Description
    from productdesc.prompts import BaseTemplate

    assert productdesc.TrainResult is TrainResult
    assert productdesc.Description is Description
    assert productdesc.Manifest is Manifest
    assert productdesc.UserError is UserError
    assert productdesc.BaseTemplate is BaseTemplate


def test_import_productdesc_imports_no_torch() -> None:
    # A fresh process: this one has long imported torch for other tests.
    code = (
        "import sys, productdesc\n"
        "heavy = {'torch', 'transformers', 'peft', 'trl', 'datasets'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_and_the_templates_import_no_numpy() -> None:
    """``--help`` and rendering prompts do not wait for numpy (about 0.2 s): retrieval imports
    it where an index is built, read or searched."""
    code = (
        "import sys, productdesc.cli, productdesc.prompts, productdesc.export\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        productdesc.Nope  # noqa: B018
