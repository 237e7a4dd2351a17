"""The package layers (docs/architecture.md), checked on the source: a rank table, no exceptions.

Each package (or top-level module) of ``spr_plugin`` has a rank; a module may import its own package and packages
of a *lower* rank only. Two packages of one rank (the stages) never import each other, so no package-level cycle
can form. The frame (``core/frame.py``) and the record vocabulary (``core/sharegpt.py``) are in ``core``, which
is why families, settings and the stages need no exception. CLI modules (``cli.py`` and ``*/cli.py``) only parse
flags and call the library: no library module imports one. ``data_builders`` (source builders for tests and
benches, not installed) is imported by no module of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spr_plugin"

#: package -> rank: a module imports only packages of a lower rank (and its own package).
RANKS = {
    "core": 0,  # records, errors, choice lists, I/O, the image frame, the ShareGPT record vocabulary
    "families": 1,  # model-family profiles, box syntax, prompts
    "settings": 2,  # every run setting as a dataclass field
    "regions": 3,  # the stages, side by side: none imports another of its rank
    "scoring": 3,
    "llamafactory": 3,
    "generation": 4,  # reads regions
    "inspect": 5,  # card, viewer, export-hf: read pairs and datasets
    "evaluation": 5,  # one model runner shared with generation
    "trl": 6,
    "pipeline": 6,  # the build: every stage in order
    "demo": 7,  # spr demo: a build on rendered scenes with a tiny local model
    "recipes": 7,  # shipped scripts (TRL examples) run by users, not imported
    "config_file": 7,  # spr CMD CONFIG.yaml key=value: a config file turned into flags, for the command line
    "cli": 8,  # the command line
    "testing": 9,  # test scaffolding: nothing in the package imports it
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[str]:
    """Every module an import statement of ``path`` names (relative ones with their leading dots)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
    return out


def _package(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _is_cli(module: str) -> bool:
    return module.split(".")[-1] == "cli"


def test_every_package_has_a_rank() -> None:
    packages = {_package(p) for p in _modules()} - {"__init__"}
    assert packages <= set(RANKS), f"add a rank for {sorted(packages - set(RANKS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_the_ranks(path: Path) -> None:
    pkg = _package(path)
    me = "spr_plugin." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    for module in _imports(path):
        assert not module.startswith("."), f"{path}: relative import {module}; the package uses absolute imports"
        parts = module.split(".")
        assert parts[0] != "data_builders", f"{path} imports {module}: data_builders is for tests and benches, not installed"
        if parts[0] != "spr_plugin" or len(parts) < 2:
            continue
        if _is_cli(module):
            assert _is_cli(me), f"{path} imports the CLI module {module}: a library module never does"
        target = parts[1]
        if target == pkg or pkg == "__init__":
            continue
        assert RANKS[target] < RANKS[pkg], f"{path} ({pkg}, rank {RANKS[pkg]}) imports {module} ({target}, rank {RANKS[target]})"


def test_only_the_families_write_model_tokens() -> None:
    """A new model family touches families/ only: no other module spells a Qwen grounding token."""
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if _package(p) not in ("families",)
        and any(tok in p.read_text(encoding="utf-8") for tok in ("object_ref_start", "box_start"))
    ]
    assert offenders == []
