"""The recipes spr ships (``spr_plugin/recipes/``): found by name, written out with ``spr recipes``.

Why package data: ``pip install spr-plugin`` users have no clone, so a ``recipes/`` folder next to the code is
all they can have. The package folder is the one source of truth; a clone's top-level ``recipes/`` is a link to
it, so ``llamafactory-cli train recipes/spr_qwen2vl.yaml`` keeps working from the repo root and the two can
never diverge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import atomic_output

#: The shipped recipes: LLaMA-Factory YAMLs, the dataset_info.json entries, DeepSpeed configs, the TRL scripts.
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
_SHIPPED_SUFFIXES = (".yaml", ".yml", ".json", ".py")


def shipped_files() -> list[Path]:
    """Every shipped recipe file, relative to :data:`RECIPES_DIR`, sorted."""
    return sorted(
        p.relative_to(RECIPES_DIR)
        for p in RECIPES_DIR.rglob("*")
        if p.is_file() and p.suffix in _SHIPPED_SUFFIXES and "__pycache__" not in p.parts and p.name != "__init__.py"
    )


def shipped_recipe_names() -> list[str]:
    """The training recipes by name (``spr_qwen2vl``, ...): the top-level YAML files."""
    return [p.stem for p in shipped_files() if p.parent == Path(".") and p.suffix in (".yaml", ".yml")]


def resolve_recipe(recipe: str | os.PathLike) -> Path:
    """A recipe path as given, else the shipped recipe of that name (``spr_qwen2vl`` or ``spr_qwen2vl.yaml``).

    A file at the given path always wins, so a user's own ``spr_qwen2vl.yaml`` is never shadowed.
    """
    path = Path(recipe)
    if path.exists() or len(path.parts) != 1:
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if stem in shipped_recipe_names():
        return RECIPES_DIR / f"{stem}.yaml"
    return path


@dataclass(frozen=True)
class WrittenRecipes:
    written: list[Path]
    unchanged: list[Path]


def write_recipes(out_dir: str | os.PathLike) -> WrittenRecipes:
    """Copy every shipped recipe file into ``out_dir`` (same layout), for editing and for the TRL scripts.

    Refuses, before writing anything, a file in the way that differs from the shipped one (the user's edits are
    never replaced) or a link (never written through); identical files are left as they are.
    """
    out = Path(out_dir)
    todo, unchanged = [], []
    for rel in shipped_files():
        source, dest = RECIPES_DIR / rel, out / rel
        if dest.is_symlink():
            raise SPRError(f"{dest} is a symbolic link; spr does not write through it (remove it or choose another --out)")
        if dest.exists():
            if dest.is_file() and dest.read_bytes() == source.read_bytes():
                unchanged.append(dest)
                continue
            raise SPRError(f"{dest} exists and differs from the shipped {rel}; spr does not replace it (choose another --out)")
        todo.append((source, dest))
    for parent in {dest.parent for _, dest in todo}:
        if parent.is_symlink():
            raise SPRError(f"{parent} is a symbolic link; spr does not write through it (choose another --out)")
    written = []
    for source, dest in todo:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest, "wb") as f:
            f.write(source.read_bytes())
        written.append(dest)
    return WrittenRecipes(written, unchanged)
