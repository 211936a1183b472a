"""The package's layout: modules import one way, so no two depend on each other."""

from __future__ import annotations

import ast
from pathlib import Path

import productdesc

SRC = Path(productdesc.__file__).parent.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The productdesc modules ``path`` imports, at module level or inside functions alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & modules


def _related(a: str, b: str) -> bool:
    # Importing a submodule runs its package's __init__ first: that edge is Python's, not ours.
    return a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in (SRC / "productdesc").rglob("*.py")}
    modules = set(paths)
    return {
        name: {dep for dep in _imports(path, modules) if dep != name and not _related(name, dep)}
        for name, path in paths.items()
    }


def _a_circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for dep in sorted(graph[name]):
            circle = visit(dep, [*path, name])
            if circle:
                return circle
        done.add(name)
        return None

    for name in sorted(graph):
        circle = visit(name, [])
        if circle:
            return circle
    return None


def test_no_import_circle() -> None:
    assert _a_circle(_graph()) is None


def test_the_circle_finder_finds_one() -> None:
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_circle({"a": {"b"}, "b": set()}) is None


def _floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each package's floor (1: imports nothing of ours), counting a top-level package or
    module of productdesc as one node, as a newcomer reads the tree."""

    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for name, deps in graph.items():
        packages.setdefault(top(name), set()).update(top(d) for d in deps if top(d) != top(name))
    floors: dict[str, int] = {}

    def floor(name: str) -> int:
        if name not in floors:
            floors[name] = 1 + max((floor(d) for d in packages[name]), default=0)
        return floors[name]

    for name in packages:
        floor(name)
    return floors


def test_the_package_is_at_most_eight_floors_tall() -> None:
    floors = _floors(_graph())
    assert max(floors.values()) <= 8, sorted(floors.items(), key=lambda kv: -kv[1])[:4]
    assert floors["productdesc.errors"] == 1


def test_the_floor_count_sees_a_chain() -> None:
    graph = {"productdesc.a": {"productdesc.b.x"}, "productdesc.b.x": {"productdesc.c"}}
    assert _floors({**graph, "productdesc.c": set()}) == {
        "productdesc.a": 3,
        "productdesc.b": 2,
        "productdesc.c": 1,
    }


def test_the_trainer_setup_and_the_report_sit_below_what_calls_them() -> None:
    graph = _graph()
    assert "productdesc.backends.base" not in graph["productdesc.backends._sft"]
    assert "productdesc.evaluate.runner" not in graph["productdesc.evaluate.report"]


# The GPU stack: imported inside the functions that need it, so that `import productdesc`, the
# CLI's --help and the data and prompt modules stay fast and work without it.
HEAVY = {"torch", "transformers", "unsloth", "unsloth_zoo", "trl", "peft", "triton", "bitsandbytes"}
# A Triton kernel is defined at module level with triton's decorators: the module is the
# function, and only the fusion module imports it, inside a function.
KERNEL_MODULES = {"productdesc.generation.fused_decode"}


def test_the_gpu_stack_is_imported_inside_functions_only() -> None:
    top_level = {}
    for path in (SRC / "productdesc").rglob("*.py"):
        name = _module_name(path)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                found = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = {node.module}
            else:
                continue
            heavy = {m for m in found if m.split(".")[0] in HEAVY}
            if heavy and name not in KERNEL_MODULES:
                top_level[f"{name}:{node.lineno}"] = sorted(heavy)
    assert top_level == {}
    kernel_users = {name for name, deps in _graph().items() if KERNEL_MODULES & deps}
    assert kernel_users == {"productdesc.generation.fusion"}


# Inside a function the package imports its own modules only where the import itself is the
# point: the Triton kernel module, whose import compiles nothing but needs triton.
LOCAL_OWN_IMPORTS = {
    "productdesc.generation.fusion": {"productdesc.generation.fused_decode"},
}


def test_own_modules_are_imported_at_the_top_outside_the_cli() -> None:
    local: dict[str, set[str]] = {}
    modules = set(_graph())
    for path in (SRC / "productdesc").rglob("*.py"):
        name = _module_name(path)
        if name.startswith("productdesc.cli"):
            continue  # a command imports what it runs, so --help stays instant
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    found = {alias.name for alias in node.names}
                else:
                    continue
                own = {m for m in found & modules if m.startswith("productdesc")}
                if own:
                    local.setdefault(name, set()).update(own)
    # The deepest name that was imported: `from productdesc.data import x` names the package.
    local = {
        name: {m for m in deps if not any(o.startswith(f"{m}.") for o in deps)}
        for name, deps in local.items()
    }
    assert local == LOCAL_OWN_IMPORTS


# Sizes a newcomer can read (issue 21). A Triton kernel splits too: its @triton.jit helpers are
# inlined into the one GPU program.
LONG_MODULES: set[str] = set()
LONG_FUNCTIONS: set[str] = set()
SHORT_FUNCTION_PACKAGES = (
    "productdesc.finetune",
    "productdesc.evaluate",
    "productdesc.generation",
    "productdesc.serve",
)


def test_modules_and_functions_stay_short() -> None:
    long_modules, long_functions = set(), set()
    for path in (SRC / "productdesc").rglob("*.py"):
        name = _module_name(path)
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 500:
            long_modules.add(name)
        if not name.startswith(SHORT_FUNCTION_PACKAGES):
            continue
        for node in ast.walk(ast.parse(text)):
            function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if function and node.end_lineno - node.lineno + 1 > 60:
                long_functions.add(f"{name}.{node.name}")
    assert long_modules == LONG_MODULES
    assert long_functions == LONG_FUNCTIONS
