"""The package's import graph, read from the source: no circles, no private names imported from
another module, and arithmetic modules that import nothing above them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
# Pure arithmetic: no torch model, no surgery. They may import each other and nothing else.
ARITHMETIC = {"random_ltd.errors", "random_ltd.search", "random_ltd.layer_selection", "random_ltd.schedules",
              "random_ltd.accounting", "random_ltd.lr", "random_ltd.planner", "random_ltd.deepspeed_config",
              "random_ltd.plan_request", "random_ltd.run"}
# docs/architecture.md's layers, bottom to top: a module imports only from its own layer or those below.
# A module is placed by its name or the package it is in; every module must have a place.
LAYERS = [
    {"random_ltd.errors"},
    ARITHMETIC - {"random_ltd.errors"},
    {"random_ltd.ops", "random_ltd.rng", "random_ltd.sharding"},
    {"random_ltd.swap", "random_ltd.calls", "random_ltd.gather", "random_ltd.strategies", "random_ltd.layer",
     "random_ltd.api", "random_ltd.attention", "random_ltd.adapters", "random_ltd.tokenbypass",
     "random_ltd.contexts", "random_ltd.routes", "random_ltd.span", "random_ltd.mod", "random_ltd.cache_keys"},
    {"random_ltd.driver", "random_ltd"},  # the package's own names (``import random_ltd``) sit with the driver
    {"random_ltd.integrations"},
    {"random_ltd.train", "random_ltd.bench", "random_ltd.ablate"},
    {"random_ltd.cli", "random_ltd.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def top_level_imports(name: str) -> list[tuple[str, list[str]]]:
    """``[(module, [names imported from it]), ...]`` of the module's top-level random_ltd imports
    (imports inside functions are deferred on purpose and cannot form a circle at import time)."""
    tree = ast.parse(MODULES[name].read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("random_ltd")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("random_ltd"):
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def edges(name: str) -> set[str]:
    targets = set()
    for module, names in top_level_imports(name):
        submodules = {f"{module}.{item}" for item in names} & MODULES.keys()
        targets |= submodules or {module}
        if len(submodules) < len(names):  # some names are attributes of the module itself
            targets.add(module)
    return targets - {name}


def find_cycle() -> list[str] | None:
    graph = {name: edges(name) for name in MODULES}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target] if target in path else path + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[name] = "done"
        return None

    for name in MODULES:
        if name not in state and (cycle := visit(name, [name])):
            return cycle
    return None


def test_no_import_circles():
    assert find_cycle() is None


def test_arithmetic_modules_import_nothing_above_them():
    for name in sorted(ARITHMETIC):
        above = edges(name) - ARITHMETIC
        assert not above, f"{name} imports {sorted(above)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def layer_of(name: str) -> int | None:
    """The index in ``LAYERS`` of the module or of the nearest package holding it (not the root package)."""
    parts = name.split(".")
    for length in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        prefix = ".".join(parts[:length])
        for index, members in enumerate(LAYERS):
            if prefix in members:
                return index
    return None


def test_every_module_has_a_layer():
    assert [name for name in MODULES if layer_of(name) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(name):
    above = sorted(target for target in edges(name) if (layer_of(target) or 0) > layer_of(name))
    assert not above, f"{name} (layer {layer_of(name)}) imports {above} from a layer above it"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_from_other_modules(name):
    for module, names in top_level_imports(name):
        private = [item for item in names if item.startswith("_") and not item.startswith("__")]
        assert not private, f"{name} imports {private} from {module}"


@pytest.mark.parametrize("path", sorted(str(path.relative_to(SOURCE.parent)) for folder in ("tests", "examples")
                                         for path in (SOURCE.parent / folder).rglob("*.py")))
def test_tests_and_examples_use_public_names(path):
    tree = ast.parse((SOURCE.parent / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("random_ltd"):
            private = [alias.name for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
            assert not private, f"{path} imports {private} from {node.module}"


def test_errors_have_one_home():
    import random_ltd
    from random_ltd import errors, schedules, train

    assert random_ltd.ConfigError is errors.ConfigError is schedules.ConfigError is train.ConfigError
    assert random_ltd.RandomLTDError is errors.RandomLTDError
    assert issubclass(errors.ConfigError, errors.RandomLTDError) and issubclass(errors.ConfigError, ValueError)
    defined = [name for name, path in MODULES.items()
               if any(isinstance(node, ast.ClassDef) and node.name in ("ConfigError", "RandomLTDError")
                      for node in ast.parse(path.read_text()).body)]
    assert defined == ["random_ltd.errors"]
