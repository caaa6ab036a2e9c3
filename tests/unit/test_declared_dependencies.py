"""A plain `pip install selfinstruct` must bring every module the API and the workers import.

An import the package does not declare works in a dev environment (the test extra or another
package pulls it in) and fails on a clean install, e.g. kombu's Redis transport needs `packaging`
without declaring it, so a worker on Redis could not start.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
SCANNED_PACKAGES = ("app", "workers")
FIRST_PARTY = {"app", "workers", "migrations", "tests"}
# Imported by our dependencies' code paths we use but not declared by them.
TRANSITIVE_NEEDS = {"packaging"}  # kombu's Redis transport (kombu 5.7)


def _normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _declared(requirements: list[str]) -> set[str]:
    return {_normalize(Requirement(line).name) for line in requirements}


def _main_distributions() -> set[str]:
    return _declared(_pyproject()["project"]["dependencies"])


def _extra_distributions() -> set[str]:
    extras = _pyproject()["project"].get("optional-dependencies", {})
    return {name for lines in extras.values() for name in _declared(lines)}


def _guarded_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside a `try` whose handlers catch ImportError: optional imports."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = ast.unparse(ast.Tuple([h.type for h in node.handlers if h.type], ast.Load()))
        if "ImportError" in caught or "ModuleNotFoundError" in caught:
            for statement in node.body:
                guarded.update(range(statement.lineno, (statement.end_lineno or 0) + 1))
    return guarded


def _third_party_imports() -> tuple[dict[str, str], dict[str, str]]:
    """(required, optional): top-level module name -> one file importing it."""
    required: dict[str, str] = {}
    optional: dict[str, str] = {}
    for package in SCANNED_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            guarded = _guarded_lines(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY:
                        continue
                    target = optional if node.lineno in guarded else required
                    target.setdefault(top, str(path.relative_to(REPO)))
    return required, optional


@lru_cache(maxsize=1)
def _installed_modules() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions_of(module: str) -> set[str]:
    return {_normalize(d) for d in _installed_modules().get(module, [])}


def test_every_unguarded_third_party_import_is_a_main_dependency() -> None:
    declared = _main_distributions()
    required, _ = _third_party_imports()
    assert "fastapi" in required and "celery" in required  # the scan sees real imports
    undeclared = {
        module: f"{where} (from {sorted(_distributions_of(module)) or 'not installed'})"
        for module, where in required.items()
        if not _distributions_of(module) & declared
    }
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"


def test_optional_imports_are_declared_somewhere() -> None:
    declared = _main_distributions() | _extra_distributions()
    _, optional = _third_party_imports()
    undeclared = {m: w for m, w in optional.items() if not _distributions_of(m) & declared}
    assert not undeclared, f"optional imports declared in no extra: {undeclared}"


def test_modules_our_dependencies_need_undeclared_are_main_dependencies() -> None:
    declared = _main_distributions()
    for module in TRANSITIVE_NEEDS:
        assert _distributions_of(module) & declared, f"{module} is not a main dependency"
