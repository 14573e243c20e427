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
              "random_ltd.plan_request"}
# Private names still shared by the class swap of TokenBypass (to go with the one mechanism).


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
