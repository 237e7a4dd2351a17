"""One image frame from sampling to training to evaluation: a built dataset's frame, checked against a recipe.

Why: LLaMA-Factory resizes every image to its YAML's ``image_max_pixels`` / ``image_min_pixels`` before the
processor sees it. If candidates were sampled in one frame and the DPO run trains in another, Qwen2.5-VL's
pixel boxes point at the wrong place and every model sees a different visual grid than the one its
preferences were measured on; nothing fails, the numbers are just wrong. So each build writes its frame,
box format and template next to the dataset (``<dataset_dir>/<name>.spr.json``), and ``spr check-recipe``,
``spr build/export --recipe`` and ``spr eval --recipe/--dataset-dir`` refuse a mismatch with one line
naming both values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import atomic_write_text
from spr_plugin.core.options import BOX_FORMATS
from spr_plugin.families.profiles import get_profile
from spr_plugin.llamafactory.image import ImageFrame

META_SUFFIX = ".spr.json"


def meta_path(dataset_dir: str | Path, name: str) -> Path:
    return Path(dataset_dir) / f"{name}{META_SUFFIX}"


def write_meta(dataset_dir: str | Path, name: str, meta: dict[str, Any]) -> Path:
    path = meta_path(dataset_dir, name)
    atomic_write_text(path, json.dumps(meta, indent=2, default=str) + "\n")
    return path


def read_meta(dataset_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The dataset's build metadata, or None for a dataset spr did not build."""
    path = meta_path(dataset_dir, name)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise SPRError(f"{path} is not readable JSON ({exc}); rebuild the dataset or remove the file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frame"), dict):
        raise SPRError(f"{path} holds no 'frame' object; rebuild the dataset or remove the file")
    return meta


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A LLaMA-Factory training YAML as a dict."""
    p = Path(path)
    if not p.is_file():
        raise SPRError(f"recipe not found: {p}")
    try:
        recipe = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SPRError(f"{p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise SPRError(f"{p} must hold a mapping of LLaMA-Factory settings")
    return recipe


def recipe_frame(recipe: dict[str, Any], source: str | Path = "recipe") -> ImageFrame:
    """The frame a training YAML trains in (LLaMA-Factory's defaults where it sets none)."""
    try:
        return ImageFrame.from_dict(recipe)
    except ValueError as exc:
        raise SPRError(f"{source}: {exc}") from None


def check_frames(expected: ImageFrame, expected_from: str, actual: ImageFrame, actual_from: str) -> None:
    """Raise one line naming both values if the two frames differ."""
    diffs = expected.differences(actual)
    if diffs:
        key, want, got = diffs[0]
        raise SPRError(
            f"image frame mismatch: {expected_from} has {key}={want} but {actual_from} has {key}={got}; "
            "sampling, training and evaluation must use one frame"
        )


def check_recipe_frame(recipe_path: str | Path, frame: ImageFrame, what: str) -> None:
    """Refuse ``frame`` (of a build, export or evaluation: ``what``) if the recipe trains in another."""
    check_frames(recipe_frame(read_recipe(recipe_path), recipe_path), f"recipe {recipe_path}", frame, what)


def _accepted_templates(meta: dict[str, Any]) -> tuple[str, ...]:
    """The templates a dataset may be trained with: the one it was written for, and those that train its family with
    the same plugin and answer syntax (Qwen3-VL's thinking and non-thinking templates)."""
    box_format = meta.get("box_format")
    others = get_profile(box_format).templates if box_format in BOX_FORMATS else ()
    return (meta["template"], *(t for t in others if meta["template"] in others))


def check_recipe(recipe_path: str | Path, dataset_dir: str | Path | None = None) -> list[str]:
    """Check a training YAML against every dataset it names that spr built; returns one line per dataset.

    ``dataset_dir`` overrides the YAML's own (which, like LLaMA-Factory, is relative to the working directory).
    """
    recipe = read_recipe(recipe_path)
    frame = recipe_frame(recipe, recipe_path)
    directory = Path(dataset_dir) if dataset_dir is not None else Path(str(recipe.get("dataset_dir", "data")))
    names = [n.strip() for n in str(recipe.get("dataset") or "").split(",") if n.strip()]
    if not names:
        raise SPRError(f"{recipe_path} names no dataset (its 'dataset' key is empty)")
    lines = []
    for name in names:
        meta = read_meta(directory, name)
        if meta is None:
            lines.append(f"{name}: not built by spr (no {meta_path(directory, name)}), not checked")
            continue
        built = ImageFrame.from_dict(meta["frame"])
        check_frames(frame, f"recipe {recipe_path}", built, f"dataset {name!r} ({meta_path(directory, name)})")
        template = recipe.get("template")
        if meta.get("template") and template not in _accepted_templates(meta):
            raise SPRError(
                f"template mismatch: recipe {recipe_path} has template={template} but dataset {name!r} was "
                f"written for template={meta['template']} ({meta.get('box_format')} boxes)"
            )
        box_format = meta.get("box_format")
        if box_format in BOX_FORMATS and get_profile(box_format).reads_crop_to_patches and recipe.get("crop_to_patches"):
            raise SPRError(
                f"tiling mismatch: recipe {recipe_path} has crop_to_patches=true but dataset {name!r} was sampled "
                "with LLaMA-Factory's default (crop_to_patches=false); remove the key to train in the sampled frame"
            )
        lines.append(f"{name}: frame {built.to_dict()} and template {meta.get('template')} match")
    if all("not built by spr" in line for line in lines):
        raise SPRError(f"no dataset of {recipe_path} was built by spr in {directory} ({', '.join(names)}): nothing to check")
    return lines
