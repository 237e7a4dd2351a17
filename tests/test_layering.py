"""The package layers (docs/architecture.md), checked on the source: who may import whom.

    core                     records, errors, choice lists, I/O: imports no other spr_plugin package
    families                 model-family profiles: core, the frame and the record's placeholder only
    settings                 every run setting (dataclass fields with help): core and the frame only
    stages                   regions, generation, scoring, llamafactory: never inspect/evaluation/trl/pipeline/cli
    pipeline, cli            the build and the command line

No library module imports ``data_builders`` (the CLI entry may, inside a function) or the test scaffolding
``spr_plugin.testing`` (tiny checkpoints are for tests, benches and the demo).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spr_plugin"
STAGES = ("regions", "generation", "scoring", "llamafactory")
ABOVE_STAGES = ("inspect", "evaluation", "trl", "pipeline", "cli")
#: The LLaMA-Factory vocabulary a family's prompts are written in: the image frame and the record's placeholder.
FAMILY_MAY_READ = ("spr_plugin.llamafactory.image", "spr_plugin.llamafactory.sharegpt")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every absolute module an import statement of ``path`` names, and whether it sits at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, id(node) in top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append(("." * node.level + (node.module or ""), id(node) in top))
    return out


def _package(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _ours(module: str) -> str | None:
    """The spr_plugin sub-package (or top module) ``module`` belongs to, else None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "spr_plugin" and len(parts) > 1 else None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_the_layers(path: Path) -> None:
    pkg = _package(path)
    for module, top_level in _imports(path):
        assert not module.startswith("."), f"{path}: relative import {module}; the package uses absolute imports"
        target = _ours(module)
        if module.split(".")[0] == "data_builders":
            assert pkg == "cli" and not top_level, f"{path} imports {module}: only the CLI entry may, inside a function"
        if target == "testing":
            assert pkg == "testing", f"{path} imports the test scaffolding {module}"
        if target is None or target == pkg:
            continue
        if pkg == "core":
            raise AssertionError(f"{path}: core imports {module}; core is the bottom layer")
        if pkg == "families":
            assert target == "core" or module in FAMILY_MAY_READ, f"{path} imports {module}"
        if pkg == "settings":
            assert target == "core" or module == "spr_plugin.llamafactory.image", f"{path} imports {module}"
        if pkg in STAGES:
            assert target not in ABOVE_STAGES, f"{path}: a stage imports {module}, a layer above it"


def test_only_the_families_write_model_tokens() -> None:
    """A new model family touches families/ only: no other module spells a Qwen grounding token."""
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if _package(p) not in ("families",)
        and any(tok in p.read_text(encoding="utf-8") for tok in ("object_ref_start", "box_start"))
    ]
    assert offenders == []
