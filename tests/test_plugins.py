"""Plugin registries, the ``productdesc plugins`` command, and the example plugin package.

Third-party plugins are faked the way pip installs them: a ``<name>-<version>.dist-info``
directory with ``METADATA`` and ``entry_points.txt`` next to the plugin's module, on
``sys.path``, where ``importlib.metadata`` finds it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from productdesc import plugins
from productdesc.backends import backends
from productdesc.cli import main
from productdesc.data import cleaners
from productdesc.plugins import PluginError, PluginWarning, Registry
from productdesc.prompts import templates

REGISTRIES = {"cleaners": cleaners, "templates": templates, "backends": backends}

GROUP = "productdesc_tests.cleaners"  # a group of our own, so installed plugins don't interfere
BUILTIN_TARGET = "productdesc.data.cleaning:HtmlUnescape"
EXAMPLE = "productdesc_plugin_example"

FakeDist = Callable[..., Path]


def _check(obj: object) -> str | None:
    return None if isinstance(obj, type) else f"expected a class, got {type(obj).__name__}"


def _registry(group: str = GROUP) -> Registry:
    from productdesc.data.cleaning import HtmlUnescape

    registry = Registry(group, "cleaning step", _check)
    registry.builtin("html_unescape")(HtmlUnescape)
    return registry


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDist:
    """Install a fake distribution: ``fake_dist(name, version, entry_points, modules)``.

    ``entry_points`` maps a group to ``{entry point name: "module:attr"}``; ``modules`` maps a
    module name to its source. Each call gets its own directory, prepended to ``sys.path``.
    """
    calls = 0

    def make(
        name: str,
        version: str,
        entry_points: dict[str, dict[str, str]],
        modules: dict[str, str] | None = None,
    ) -> Path:
        nonlocal calls
        calls += 1
        root = tmp_path / f"site-{calls}"
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
        sections = [
            f"[{group}]\n" + "".join(f"{ep} = {target}\n" for ep, target in eps.items())
            for group, eps in entry_points.items()
        ]
        (info / "entry_points.txt").write_text("\n".join(sections), encoding="utf-8")
        for module, source in (modules or {}).items():
            (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.syspath_prepend(str(root))
        return root

    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    return make


GOOD_STEP = """
    class Shout:
        def __call__(self, record):
            return {**record, "title": record["title"].upper()}
"""


# -- registry behaviour -----------------------------------------------------------------------
def test_third_party_plugin_is_registered_with_its_distribution(fake_dist: FakeDist) -> None:
    fake_dist(
        "acme-steps", "1.2.0", {GROUP: {"shout": "acme_steps:Shout"}}, {"acme_steps": GOOD_STEP}
    )
    registry = _registry()

    assert registry.names() == ["html_unescape", "shout"]  # built-ins first
    infos = {info.name: info for info in registry.infos()}
    assert infos["shout"].source == "acme-steps 1.2.0"
    assert infos["shout"].target == "acme_steps:Shout"
    assert infos["html_unescape"].source == "productdesc (built-in)"
    step = registry.get("shout")()
    assert step({"title": "mice", "content": "x"})["title"] == "MICE"


def test_plugin_reusing_a_builtin_name_is_skipped_with_a_warning_naming_both(
    fake_dist: FakeDist,
) -> None:
    fake_dist(
        "acme-steps",
        "1.2.0",
        {GROUP: {"html_unescape": "acme_steps:Shout"}},
        {"acme_steps": GOOD_STEP},
    )
    registry = _registry()
    with pytest.warns(PluginWarning) as caught:
        assert registry.names() == ["html_unescape"]
    (warning,) = caught
    message = str(warning.message)
    assert "'html_unescape' is registered twice" in message
    assert "productdesc (built-in)" in message and BUILTIN_TARGET in message
    assert "acme-steps 1.2.0" in message and "acme_steps:Shout" in message
    # The built-in keeps its name: installing a plugin never changes what a name means.
    assert registry.get("html_unescape").__module__ == "productdesc.data.cleaning"


def test_two_plugins_with_one_name_warn_naming_both(fake_dist: FakeDist) -> None:
    fake_dist("acme-a", "1.0", {GROUP: {"shout": "acme_a:Shout"}}, {"acme_a": GOOD_STEP})
    fake_dist("acme-b", "2.0", {GROUP: {"shout": "acme_b:Shout"}}, {"acme_b": GOOD_STEP})
    registry = _registry()
    with pytest.warns(PluginWarning, match=r"'shout' is registered twice") as caught:
        assert registry.names() == ["html_unescape", "shout"]
    (warning,) = caught
    assert "acme-a 1.0" in str(warning.message) and "acme-b 2.0" in str(warning.message)
    (kept,) = [i.source for i in registry.infos() if i.name == "shout"]
    assert kept in ("acme-a 1.0", "acme-b 2.0")


@pytest.mark.parametrize(
    ("target", "module", "problem"),
    [
        ("acme_broken:Step", "import numpy_that_does_not_exist\n", "ModuleNotFoundError"),
        ("acme_broken:Step", "raise RuntimeError('boom at import')\n", "boom at import"),
        ("acme_broken:Missing", "class Step: ...\n", "AttributeError"),
        ("acme_broken:step", "def step(record):\n    return record\n", "expected a class"),
    ],
    ids=["import-error", "raises-on-import", "missing-attribute", "wrong-type"],
)
def test_broken_plugin_is_skipped_with_a_warning_naming_it(
    fake_dist: FakeDist, target: str, module: str, problem: str
) -> None:
    fake_dist("acme-broken", "0.3", {GROUP: {"broken": target}}, {"acme_broken": module})
    registry = _registry()

    with pytest.warns(PluginWarning) as caught:
        names = registry.names()

    assert names == ["html_unescape"]  # the built-ins still load
    (warning,) = caught
    message = str(warning.message)
    assert "'broken'" in message and target in message
    assert "acme-broken 0.3" in message
    assert problem in message
    with pytest.raises(PluginError, match="unknown cleaning step 'broken'; known: html_unescape"):
        registry.get("broken")


def test_disable_autoload_keeps_only_builtins(
    fake_dist: FakeDist, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dist(
        "acme-steps", "1.2.0", {GROUP: {"shout": "acme_steps:Shout"}}, {"acme_steps": GOOD_STEP}
    )
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    registry = _registry()

    assert registry.names() == ["html_unescape"]
    assert "shout" not in registry
    assert "acme_steps" not in sys.modules  # the plugin was not even imported


def test_register_in_code_checks_type_and_name() -> None:
    registry = _registry()

    class Upper:
        def __call__(self, record):
            return record

    assert registry.register("upper", Upper) is Upper
    assert registry.get("upper") is Upper
    with pytest.raises(PluginError, match="'upper' is registered twice"):
        registry.register("upper", Upper)
    with pytest.raises(PluginError, match="expected a class"):
        registry.register("not_a_class", Upper())
    registry.unregister("upper")
    assert registry.names() == ["html_unescape"]


def test_builtins_are_registered_like_plugins() -> None:
    expected = {
        "cleaners": {"html_unescape", "normalize_unicode", "keep_chars", "drop_short", "dedupe"},
        "templates": {"alpaca", "chat", "context"},
        "backends": {"transformers", "unsloth"},
    }
    for group, names in expected.items():
        builtin = {
            i.name for i in REGISTRIES[group].infos() if i.source == "productdesc (built-in)"
        }
        assert builtin == names, group
    from productdesc.prompts import PromptTemplate

    assert templates.get("alpaca") is PromptTemplate


def test_a_builtin_registers_where_it_is_defined() -> None:
    """Each built-in names the module it lives in, and that module's package holds its
    registry: plugins.py knows none of them."""
    homes = {
        "cleaners": "productdesc.data.",
        "templates": "productdesc.prompts.",
        "backends": "productdesc.backends.",
    }
    for group, registry in REGISTRIES.items():
        assert registry.group == f"productdesc.{group}"  # entry-point group names stay
        for info in registry.infos():
            if info.source == "productdesc (built-in)":
                assert info.obj.__module__.startswith(homes[group]), info
                assert info.target == f"{info.obj.__module__}:{info.obj.__qualname__}", info
    source = Path(plugins.__file__).read_text(encoding="utf-8")
    imports = re.findall(r"^from (productdesc[.\w]*) import", source, flags=re.M)
    assert sorted(imports) == ["productdesc._moved", "productdesc.errors"]


def test_a_builtin_registered_after_the_registry_was_read_is_refused() -> None:
    from productdesc.data.cleaning import HtmlUnescape

    registry = _registry()
    registry.names()
    with pytest.raises(RuntimeError, match="registered after"):
        registry.builtin("late")(HtmlUnescape)
    with pytest.raises(PluginError, match="expected a class"):
        Registry(GROUP, "cleaning step", _check).builtin("f")(len)


def test_the_old_registry_paths_warn_and_give_the_same_registries() -> None:
    for name, registry in REGISTRIES.items():
        with pytest.warns(DeprecationWarning, match=rf"productdesc\.plugins\.{name} moved"):
            assert getattr(plugins, name) is registry


# -- the real registries in a fresh process ---------------------------------------------------
def _run(code: str, extra_path: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != plugins.DISABLE_AUTOLOAD_ENV}
    if extra_path is not None:
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(extra_path), environ.get("PYTHONPATH")])
        )
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300
    )


CLI = "import sys; from productdesc.cli import main; sys.exit(main(['plugins']))"


def test_broken_plugin_never_breaks_import_or_the_cli(fake_dist: FakeDist) -> None:
    root = fake_dist(
        "acme-broken",
        "0.3",
        {"productdesc.cleaners": {"broken": "acme_broken:Step"}},
        {"acme_broken": "import numpy_that_does_not_exist\n"},
    )

    imported = _run("import productdesc, sys; print(productdesc.__version__)", root)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == productdesc_version()

    listed = _run(CLI, root)
    assert listed.returncode == 1  # a broken plugin is worth a failing status in CI
    assert "html_unescape" in listed.stdout and "alpaca" in listed.stdout
    assert "broken" not in listed.stdout
    assert "'broken'" in listed.stderr and "acme-broken 0.3" in listed.stderr
    assert "ModuleNotFoundError" in listed.stderr
    assert "Traceback" not in listed.stderr

    disabled = _run(CLI, root, **{plugins.DISABLE_AUTOLOAD_ENV: "1"})
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stderr == ""
    assert EXAMPLE not in disabled.stdout  # only built-ins, even with the example installed


def test_duplicate_plugin_is_reported_by_the_cli(fake_dist: FakeDist) -> None:
    root = fake_dist(
        "acme-steps",
        "1.2.0",
        {"productdesc.cleaners": {"dedupe": "acme_steps:Shout"}},
        {"acme_steps": GOOD_STEP},
    )
    listed = _run(CLI, root)
    assert listed.returncode == 1
    assert "acme_steps:Shout" not in listed.stdout  # "dedupe" is still the built-in
    assert "cleaning step 'dedupe' is registered twice" in listed.stderr
    assert "productdesc (built-in)" in listed.stderr and "acme-steps 1.2.0" in listed.stderr


def productdesc_version() -> str:
    from productdesc import __version__

    return __version__


# -- the CLI's listing ------------------------------------------------------------------------
def test_cli_lists_every_plugin_with_source_and_target(capsys: pytest.CaptureFixture) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for group in ("cleaners", "templates", "backends"):
        registry = getattr(plugins, group)
        heading = next(i for i, line in enumerate(lines) if line.startswith(registry.group + ":"))
        assert lines[heading + 1].split() == ["NAME", "SOURCE", "TARGET"]
        rows = lines[heading + 2 : heading + 2 + len(registry.names())]
        for info, row in zip(registry.infos(), rows, strict=True):
            assert row.split()[0] == info.name
            assert info.source in row and row.endswith(info.target)
    # One table: the SOURCE and TARGET columns start at the same place on every row.
    table = [line for line in lines if line.startswith("  ")]
    header = table[0]
    for column in ("SOURCE", "TARGET"):
        start = header.index(column)
        assert all(row[start - 2 : start] == "  " and row[start] != " " for row in table)


def test_cli_group_filter(capsys: pytest.CaptureFixture) -> None:
    assert main(["plugins", "--group", "templates"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("productdesc.templates:")
    assert "html_unescape" not in out and "transformers" not in out


# -- the example plugin package (examples/plugin_example) -------------------------------------
needs_example = pytest.mark.skipif(
    importlib.util.find_spec(EXAMPLE) is None,
    reason="examples/plugin_example is not installed (pip install --no-deps -e examples/plugin_example)",
)

BOILERPLATE_RECORDS = [
    {
        "uid": "B001",
        "title": "Nice for Mice",
        "content": "Amazon.com Review A picture book about two mice who find a soap. Read more",
    },
    {
        "uid": "B002",
        "title": "A History of the Alps",
        "content": "Mountains, passes and people.--This text refers to thePaperbackedition.",
    },
    {"uid": "B003", "title": "Only Boilerplate", "content": "Amazon.com Review ... Read more"},
    {"uid": "B004", "title": "Plain Soap", "content": "A bar of plain soap."},
]
WITH_STEP = ("html_unescape", "normalize_unicode", "strip_boilerplate", "keep_chars", "drop_short")


def _prepare(tmp_path: Path, name: str, source: Path, steps: tuple[str, ...]) -> tuple[list, dict]:
    from productdesc import AmazonTitlesDataset, PrepareConfig

    config = PrepareConfig(steps=steps, split=(100, 0, 0), workers=1)
    manifest = AmazonTitlesDataset(source, config).prepare(tmp_path / name, progress=False)
    records = list(AmazonTitlesDataset.from_prepared(tmp_path / name).iter_split("train"))
    return records, dict(manifest.dropped)


@needs_example
def test_example_plugins_are_picked_up() -> None:
    sources = {
        info.name: info.source for registry in (cleaners, templates) for info in registry.infos()
    }
    assert sources["strip_boilerplate"].startswith("productdesc-plugin-example ")
    assert sources["alpaca_pt"].startswith("productdesc-plugin-example ")


@needs_example
def test_example_step_strips_boilerplate_in_prepare(tmp_path: Path) -> None:
    source = tmp_path / "trn.json"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in BOILERPLATE_RECORDS))

    without, _ = _prepare(
        tmp_path, "plain", source, tuple(s for s in WITH_STEP if s != "strip_boilerplate")
    )
    assert any("Read more" in r["content"] for r in without)  # the default pipeline keeps it

    records, dropped = _prepare(tmp_path, "stripped", source, WITH_STEP)
    assert {r["uid"]: r["content"] for r in records} == {
        "B001": "A picture book about two mice who find a soap.",
        "B002": "Mountains, passes and people.",
        "B004": "A bar of plain soap.",
    }
    assert dropped == {"empty_content": 1}  # B003 was nothing but boilerplate
    manifest = orjson.loads((tmp_path / "stripped" / "manifest.json").read_bytes())
    assert [s["step"] for s in manifest["config"]["steps"]] == list(WITH_STEP)


@needs_example
def test_example_step_on_real_records(tmp_path: Path, real_sample: Path) -> None:
    marker = "This text refers to"
    plain, _ = _prepare(
        tmp_path, "plain", real_sample, tuple(s for s in WITH_STEP if s != "strip_boilerplate")
    )
    stripped, _ = _prepare(tmp_path, "stripped", real_sample, WITH_STEP)
    assert sum(marker in r["content"] for r in plain) > 50  # common in the dump
    assert [r["content"] for r in stripped if marker in r["content"]] == []
    assert len(stripped) == len(plain)  # no real description was only boilerplate


@needs_example
def test_example_portuguese_template_renders_and_trains() -> None:
    from productdesc.prompts import PromptTemplate, get_template

    template = get_template("alpaca_pt", eos_token="</s>")
    assert isinstance(template, PromptTemplate) and template.name == "alpaca_pt"

    prompt = template.render("Sabonete de queijo")
    assert "### Instruction:\nDescreva o produto\n\n### Input:\nSabonete de queijo\n" in prompt
    pair = template.render_pair("Sabonete de queijo", "Um sabonete com cheiro de queijo.")
    assert pair["completion"] == "Um sabonete com cheiro de queijo.</s>"
    assert (
        template.parse(pair["prompt"] + pair["completion"]) == "Um sabonete com cheiro de queijo."
    )

    records = [{"title": f"Produto {i}", "content": f"Descrição {i}."} for i in range(20)]
    questions = [p["prompt"] for p in template.training_pairs(records, question_share=1.0)]
    phrasings = {
        q.split("### Instruction:\n")[1].split("\n")[0].split(" Produto")[0] for q in questions
    }
    assert phrasings <= {
        "O que é", "Fale-me sobre", "Descreva", "Pode descrever", "O que você pode me dizer sobre",
        "Escreva uma descrição de produto para",
    }  # fmt: skip


@needs_example
def test_example_template_drives_finetuning_and_describing(tiny_llama: Path) -> None:
    from productdesc import (
        Describer,
        FineTuneConfig,
        LoraFineTuner,
        LoraSettings,
        ModelConfig,
    )

    config = FineTuneConfig(
        model=ModelConfig(model_name=str(tiny_llama), load_in_4bit=False, max_seq_length=128),
        lora=LoraSettings(use_gradient_checkpointing=False),
        backend="transformers",
        template="alpaca_pt",
        question_share=0.5,
    )
    tuner = LoraFineTuner(config)
    model, tokenizer = tuner.load()
    assert tuner.template.name == "alpaca_pt"
    records = [{"title": f"Sabonete {i}", "content": f"Um sabonete numero {i}."} for i in range(8)]
    train, _ = tuner.datasets(records)
    prompts = train["prompt"]
    assert all("### Instruction:" in p for p in prompts)
    instructions = {p.split("### Instruction:\n")[1].split("\n")[0] for p in prompts}
    from productdesc_plugin_example.templates import PERGUNTAS

    asked = instructions - {"Descreva o produto"}
    assert asked and len(asked) < len(instructions)  # some instructions, some questions
    assert asked <= {q.format(title=r["title"]) for q in PERGUNTAS for r in records}
    assert all(c.endswith(tokenizer.eos_token) for c in train["completion"])

    describer = Describer(model, tokenizer, template="alpaca_pt")
    assert describer.template.name == "alpaca_pt"
    assert describer.template.eos_token == tokenizer.eos_token  # bound to the model's tokenizer
    assert "Descreva o produto" in describer.template.render("Sabonete de queijo")
