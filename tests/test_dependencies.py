"""Dependencies as declared: what runs imports is in pyproject, the runtime lock has no dev tool."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from feastflow.settings import PROJECT_ROOT

RUNTIME_PACKAGES = ("feastflow", "pipelines", "registry", "serving", "feature_repo")
# Declared but never imported by name, each for a reason.
USED_WITHOUT_IMPORT = {
    "uvloop": "uvicorn's loop, chosen by name (loop='uvloop')",
    "httptools": "uvicorn's HTTP parser, chosen by name (http='httptools')",
}
# Imported, and installed by an extra of a declared package rather than declared itself.
VIA_EXTRA = {"ibis-framework": "feast[duckdb]"}
# Imported only when a spec asks for them, and then installed by hand (feastflow/ann.py says how).
OPTIONAL_IMPORTS = {"usearch": "an alternative ANN index library",
                    "faiss": "an alternative ANN index library"}
DEV_TOOLS = ("pytest", "hypothesis", "ruff", "nbclient", "nbformat", "ipykernel")


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins(lock: Path) -> dict[str, str]:
    return dict(line.split("==", 1) for line in lock.read_text().splitlines()
                if re.match(r"^[a-z0-9]", line))


def _pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def _runtime_imports() -> set[str]:
    first_party = set(RUNTIME_PACKAGES)
    found: set[str] = set()
    for package in RUNTIME_PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.partition(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in first_party}


def _distributions_by_import() -> dict[str, set[str]]:
    """Each third-party module imported at run time: the distributions that provide it."""
    by_module = packages_distributions()  # `mlflow` and `google` come from several
    return {module: {d.lower().replace("_", "-") for d in by_module.get(module, [module])}
            for module in _runtime_imports()}


def _imported_distributions() -> set[str]:
    return set().union(*_distributions_by_import().values())


def test_every_distribution_imported_at_run_time_is_declared() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    optional = {_name(r) for name, reqs in extras.items() if name != "dev" for r in reqs}
    declared = {_name(r) for r in _pyproject()["project"]["dependencies"]} | set(VIA_EXTRA) | optional
    missing = {module: dists for module, dists in _distributions_by_import().items()
               if not dists & declared and module not in OPTIONAL_IMPORTS}
    assert not missing, f"imported at run time but not in pyproject's dependencies or extras: {missing}"
    assert "starlette" in declared  # the server is a Starlette app


def test_every_declared_dependency_is_used_at_run_time() -> None:
    declared = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    unused = declared - _imported_distributions() - set(USED_WITHOUT_IMPORT)
    assert not unused, f"declared but never imported at run time: {unused}"


def test_the_runtime_lock_has_no_dev_tools_and_the_dev_lock_the_same_pins() -> None:
    runtime = _pins(PROJECT_ROOT / "requirements.lock")
    dev = _pins(PROJECT_ROOT / "requirements-dev.lock")
    assert not [tool for tool in DEV_TOOLS if tool in runtime]
    assert all(tool in dev for tool in DEV_TOOLS)
    assert {name: dev.get(name) for name in runtime} == runtime  # a superset at the same versions
    # and each lock pins what pyproject pins
    for requirement in _pyproject()["project"]["dependencies"]:
        name, _, version = requirement.partition("==")
        if version:
            assert runtime[_name(name)] == version.split()[0], requirement


def test_feast_ui_s_grpc_dependencies_are_in_the_runtime_lock() -> None:
    runtime = _pins(PROJECT_ROOT / "requirements.lock")
    assert {"grpcio", "grpcio-health-checking", "grpcio-reflection"} <= set(runtime)
