"""Every third-party import comes from a declared dependency: the package's from its base requirements or an extra,
the tests' from the `test` extra. A package installed by hand on a developer's machine would otherwise keep the suite
green there and fail on a user's fresh install (the fresh-venv CI catches it too, later and slower)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from qscore_hf.extras import EXTRA_MODULES

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OWN = {"qscore_hf", "conftest", "training", *(path.stem for path in (ROOT / "tests").glob("*.py"))}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requirements(extra: str | None, seen: frozenset = frozenset()) -> set[str]:
    """The distributions of the base install plus ``extra`` (following ``qscore-hf[other]`` references)."""
    names = {_name(r) for r in PYPROJECT["dependencies"]}
    for requirement in PYPROJECT["optional-dependencies"].get(extra, []) if extra else []:
        if _name(requirement) == "qscore-hf":
            for inner in re.findall(r"\[(.*)\]", requirement)[0].split(","):
                if inner not in seen:
                    names |= _requirements(inner.strip(), seen | {extra})
        else:
            names.add(_name(requirement))
    return names


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - OWN - {"__future__"}


def _undeclared(files: list[Path], declared: set[str]) -> dict[str, list[str]]:
    distributions = packages_distributions()
    undeclared: dict[str, list[str]] = {}
    for path in files:
        for module in _imports(path):
            owners = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
            if not owners & declared:
                undeclared.setdefault(module, []).append(str(path.relative_to(ROOT)))
    return undeclared


def test_the_tests_import_only_what_the_test_extra_installs():
    assert _undeclared(sorted((ROOT / "tests").glob("*.py")), _requirements("test")) == {}


@pytest.mark.parametrize("folder", ["qscore_hf", "training"])
def test_the_package_and_scripts_import_only_declared_dependencies(folder):
    every_extra = set().union(*(_requirements(extra) for extra in PYPROJECT["optional-dependencies"]))
    assert _undeclared(sorted((ROOT / folder).rglob("*.py")), every_extra) == {}


def test_extra_modules_named_by_error_messages_are_the_extras_own():
    distributions = packages_distributions()
    for extra, modules in EXTRA_MODULES.items():
        declared = {_name(r) for r in PYPROJECT["optional-dependencies"][extra]}
        for module in modules:
            assert {d.lower() for d in distributions[module]} & declared, (extra, module)
