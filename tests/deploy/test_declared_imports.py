"""Every third-party module dmz_api imports is a dependency ``pyproject.toml`` declares, and
the plugin imports nothing maubot does not bring: the quick guard in front of
``test_plain_install.py``, which proves the same with real installs.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def top_level_imports(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", package.name}


@functools.cache
def module_owners() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def distribution(module: str) -> str:
    (dist, *_) = module_owners()[module]
    return normalize(dist)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(Requirement(requirement).name)


def requires(dist: str) -> set[str]:
    """``dist`` and everything it pulls in (its unconditional requirements, transitively)."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalize(req.name))
    return seen


def test_dmz_api_imports_only_declared_dependencies() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {requirement_name(r) for r in meta["project"]["dependencies"]}
    imported = {distribution(m) for m in top_level_imports(ROOT / "dmz_api")}
    assert imported, "no third-party import found: the scan is broken"
    assert imported <= declared, f"imported but not declared: {sorted(imported - declared)}"


def test_the_plugin_imports_only_what_maubot_brings() -> None:
    brought = requires("maubot")
    imported = {distribution(m) for m in top_level_imports(ROOT / "plugin")}
    assert {"maubot", "mautrix"} <= imported
    assert imported <= brought, f"not brought by maubot: {sorted(imported - brought)}"
