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

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import NOT_GIVEN, ImageFrame
from spr_plugin.core.jsonl import atomic_write_text, dumps, read_json
from spr_plugin.core.options import BOX_FORMATS
from spr_plugin.core.paths import contained_path, require_real_inside
from spr_plugin.core.yaml_safe import load_yaml
from spr_plugin.families.profiles import get_profile
from spr_plugin.llamafactory.shipped_recipes import resolve_recipe, shipped_recipe_names

META_SUFFIX = ".spr.json"


def meta_path(dataset_dir: str | Path, name: str) -> Path:
    return Path(dataset_dir) / f"{name}{META_SUFFIX}"


def meta_text(meta: dict[str, Any]) -> str:
    """The content of a ``<name>.spr.json`` (the export writes it through its own checked writer)."""
    return dumps(meta, indent=2, default=str) + "\n"


def write_meta(dataset_dir: str | Path, name: str, meta: dict[str, Any]) -> Path:
    path = meta_path(dataset_dir, name)
    atomic_write_text(path, meta_text(meta))
    return path


def read_meta(dataset_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The dataset's build metadata, or None for a dataset spr did not build.

    ``name`` comes from a file (a ``dataset_info.json`` key, a recipe's ``dataset``): a name such as ``../../x`` or a
    ``<name>.spr.json`` that is a symlink leading out of ``dataset_dir`` is refused in one line, never read.
    """
    path = contained_path(dataset_dir, f"{name}{META_SUFFIX}", f"dataset name {name!r}:")
    if not path.is_file():
        return None
    require_real_inside(dataset_dir, path, where=f"the dataset folder {dataset_dir}")
    meta = read_json(path, "dataset metadata file", strict=False, hint="; rebuild the dataset or remove the file")
    if not isinstance(meta, dict) or not isinstance(meta.get("frame"), dict):
        raise SPRError(f"{path} holds no 'frame' object; rebuild the dataset or remove the file")
    return meta


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A LLaMA-Factory training YAML as a dict (a shipped recipe's name works too: ``spr_qwen2vl``)."""
    p = resolve_recipe(path)
    if not p.is_file():
        shipped = f" (shipped recipes, by name: {', '.join(shipped_recipe_names())})" if len(p.parts) == 1 else ""
        raise SPRError(f"recipe not found: {p}{shipped}")
    recipe = load_yaml(p, "recipe")  # size and alias-expansion budget: a hostile YAML is one short line
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


FRAME_KEYS = ("image_max_pixels", "image_min_pixels")


def given_bounds(a: argparse.Namespace) -> dict[str, int | None]:
    """The pixel bounds the command line states (flags whose default is ``NOT_GIVEN`` and were not given are left out)."""
    return {k: getattr(a, k) for k in FRAME_KEYS if getattr(a, k, NOT_GIVEN) is not NOT_GIVEN}


def resolve_frame(given: Mapping[str, int | None], sources: Sequence[tuple[str, ImageFrame]]) -> ImageFrame:
    """The one frame of a command: per bound, the command line's value, else the sources' (a recipe, what an input
    file recorded), else LLaMA-Factory's default.

    Why: ``--recipe`` and a recorded frame are statements of the frame, so a user who gives them and no flag means
    that frame, and silently taking LLaMA-Factory's default instead would build or check the wrong one. Any two
    that disagree (flag and source, or two sources) are refused with one line naming both values.
    """
    default = ImageFrame().to_dict()
    values = {}
    for key in FRAME_KEYS:
        stated = [(f"--{key.replace('_', '-')}", given[key])] if key in given else []
        stated += [(label, frame.to_dict()[key]) for label, frame in sources]
        for label, value in stated[1:]:
            if value != stated[0][1]:
                raise SPRError(
                    f"image frame mismatch: {stated[0][0]} has {key}={stated[0][1]} but {label} has {key}={value}; "
                    "sampling, training and evaluation must use one frame"
                )
        values[key] = stated[0][1] if stated else default[key]
    return ImageFrame(values["image_max_pixels"], values["image_min_pixels"])


def adopt_frame(a: argparse.Namespace, sources: Sequence[tuple[str, ImageFrame]]) -> ImageFrame:
    """:func:`resolve_frame` for a parsed command line, written back into ``a`` so every later reader of the flags
    (the generation settings, the eval configs) sees the frame in force."""
    frame = resolve_frame(given_bounds(a), sources)
    a.image_max_pixels, a.image_min_pixels = frame.image_max_pixels, frame.image_min_pixels
    return frame


def recipe_source(recipe_path: str | Path | None) -> list[tuple[str, ImageFrame]]:
    """``[(label, frame)]`` of a ``--recipe`` (empty without one), for :func:`resolve_frame`."""
    if recipe_path is None:
        return []
    return [(f"recipe {recipe_path}", recipe_frame(read_recipe(recipe_path), recipe_path))]


def check_recipe_frame(recipe_path: str | Path, frame: ImageFrame, what: str) -> None:
    """Refuse ``frame`` (of a build, export or evaluation: ``what``) if the recipe trains in another."""
    check_frames(recipe_frame(read_recipe(recipe_path), recipe_path), f"recipe {recipe_path}", frame, what)


def _accepted_templates(meta: dict[str, Any]) -> tuple[str, ...]:
    """The templates a dataset may be trained with: the one it was written for, and those that train its family with
    the same plugin and answer syntax (Qwen3-VL's thinking and non-thinking templates)."""
    box_format = meta.get("box_format")
    others = get_profile(box_format).templates if box_format in BOX_FORMATS else ()
    return (meta["template"], *(t for t in others if meta["template"] in others))


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def recipe_settings(recipe_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The settings ``llamafactory-cli train RECIPE key=value ...`` trains with, read the way LLaMA-Factory 0.9.5
    reads them (``hparams/parser.py: read_args``): the YAML (or JSON) file, then ``OmegaConf.from_cli`` of the
    overrides merged over it, unresolved. So ``image_max_pixels=12544``, ``dataset=a,b`` or ``dataset_dir=/x``
    are judged as the training will see them, with OmegaConf's typing of the values.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = resolve_recipe(recipe_path)
    read_recipe(path)  # a missing file, invalid YAML or a non-mapping: the one-line errors
    if path.suffix not in CONFIG_SUFFIXES:
        raise SPRError(f"{path}: llamafactory-cli train reads a recipe only from a .yaml, .yml or .json file")
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or key.startswith("-"):
            raise SPRError(f"override {item!r} is not key=value (as llamafactory-cli train takes them after the recipe)")
    try:
        if path.suffix == ".json":
            base = OmegaConf.create(json.loads(path.read_text(encoding="utf-8")))
        else:
            base = OmegaConf.load(path)
        merged = OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_cli(list(overrides))))
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        raise SPRError(f"{path} with {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None
    if not isinstance(merged, dict):
        raise SPRError(f"{path} must hold a mapping of LLaMA-Factory settings")
    return merged


def _recipe_dataset_dir(recipe: dict[str, Any], source: str, overrides: Sequence[str], recipe_path: Path) -> Path:
    """The recipe's ``dataset_dir`` (relative to the working directory, as LLaMA-Factory reads it). A recipe may be a
    file from elsewhere: its ``dataset_dir`` is read only inside the working directory or the recipe's own folder (the
    two places the command line names: a build writes its recipe next to its data), unless the command line names the
    folder (``--dataset-dir``, or a ``dataset_dir=`` override)."""
    given = str(recipe.get("dataset_dir", "data"))
    if any(o.split("=", 1)[0].strip() == "dataset_dir" for o in overrides):
        return Path(given)
    where = os.path.abspath(given)  # as LLaMA-Factory reads it; a NUL stays and contained_path refuses it
    for root in (os.getcwd(), os.path.dirname(os.path.abspath(recipe_path))):
        try:
            contained_path(root, where)
            return Path(given)
        except SPRError:
            continue
    raise SPRError(
        f"{source} names dataset_dir {given!r:.200}, outside the working directory and the recipe's folder; refusing "
        f"to read it (pass --dataset-dir {given:.200} if you trust this recipe)"
    )


def check_recipe(recipe_path: str | Path, dataset_dir: str | Path | None = None, overrides: Sequence[str] = ()) -> list[str]:
    """Check a training YAML against every dataset it names that spr built; returns one line per dataset.

    ``overrides`` are LLaMA-Factory's own ``key=value`` arguments after the recipe (see :func:`recipe_settings`);
    ``dataset_dir`` overrides the result's (which, like LLaMA-Factory, is relative to the working directory).
    """
    recipe = recipe_settings(recipe_path, overrides)
    source = f"recipe {recipe_path}" + (f" with {' '.join(overrides)}" if overrides else "")
    frame = recipe_frame(recipe, source)
    directory = (
        Path(dataset_dir)
        if dataset_dir is not None
        else _recipe_dataset_dir(recipe, source, overrides, resolve_recipe(recipe_path))
    )
    names = [n.strip() for n in str(recipe.get("dataset") or "").split(",") if n.strip()]
    if not names:
        raise SPRError(f"{source} names no dataset (its 'dataset' key is empty)")
    lines = []
    for name in names:
        meta = read_meta(directory, name)
        if meta is None:
            lines.append(f"{name}: not built by spr (no {meta_path(directory, name)}), not checked")
            continue
        built = ImageFrame.from_dict(meta["frame"])
        check_frames(frame, source, built, f"dataset {name!r} ({meta_path(directory, name)})")
        template = recipe.get("template")
        if meta.get("template") and template not in _accepted_templates(meta):
            raise SPRError(
                f"template mismatch: {source} has template={template} but dataset {name!r} was "
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
        raise SPRError(f"no dataset of {source} was built by spr in {directory} ({', '.join(names)}): nothing to check")
    return lines


def recorded_pairs_format(path: str | Path) -> tuple[str, ImageFrame, str] | None:
    """``(box format, frame, where)`` a pairs file records, or None: its sidecar (``spr pair``), the build work dir's
    manifest, or for a dataset's ``<name>.pairs.jsonl`` the dataset's ``<name>.spr.json``."""
    from spr_plugin.core.manifest import recorded_format

    p = Path(path)
    found = recorded_format(p, "pairs")
    if found is not None:
        rec, where = found
        return rec["box_format"], recipe_frame(rec["frame"], where), str(where)
    if p.name.endswith(".pairs.jsonl"):
        name = p.name.removesuffix(".pairs.jsonl")
        try:
            meta = read_meta(p.parent, name)
        except SPRError:
            meta = None
        if meta is not None and isinstance(meta.get("box_format"), str):
            return meta["box_format"], recipe_frame(meta["frame"], meta_path(p.parent, name)), str(meta_path(p.parent, name))
    return None


def recorded_vocabulary(path: str | Path) -> tuple[str, ...] | None:
    """The names that judged a pairs file's mentions (``spr pair``'s sidecar, or for a dataset's
    ``<name>.pairs.jsonl`` its ``<name>.spr.json``), or None when no record holds them (an older spr, a build's work
    dir): ``spr show`` then judges with the names its pairs' regions record."""
    from spr_plugin.core.manifest import Manifest, sidecar_path

    p = Path(path)
    names = None
    side = sidecar_path(p)
    if side.is_file():
        entry = ((Manifest(side, {}).read() or {}).get("stages") or {}).get("pairs")
        names = entry.get("vocabulary") if isinstance(entry, dict) else None
    elif p.name.endswith(".pairs.jsonl"):
        try:
            meta = read_meta(p.parent, p.name.removesuffix(".pairs.jsonl"))
        except SPRError:
            meta = None
        names = meta.get("vocabulary") if meta is not None else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return tuple(names)


def pairs_format(a: argparse.Namespace) -> tuple[str, ImageFrame]:
    """The box format and frame ``spr export`` writes ``a.pairs`` in: the ones the pairs were scored in.

    Flags (``--box-format``, ``--image-max/min-pixels``) and ``--recipe`` may only agree with the pairs' record:
    exporting qwen2_vl-scored pairs as qwen2_5_vl would put pixel prompts over 0-1000 answers. A pairs file
    without a record (an older spr, or written by hand) is exported only when the command line states its box
    format and frame (``--box-format`` and a pixel flag or ``--recipe``): spr does not guess them.
    """
    recorded = recorded_pairs_format(a.pairs)
    if recorded is None:
        if a.box_format is None or not (given_bounds(a) or a.recipe is not None):
            raise SPRError(
                f"{a.pairs} records no box format or image frame (written by an older spr or by hand); state the ones "
                "its candidates were scored in: --box-format and --image-max-pixels/--image-min-pixels (or --recipe)"
            )
        return a.box_format, adopt_frame(a, recipe_source(a.recipe))
    box_format, frame, where = recorded
    if a.box_format is not None and a.box_format != box_format:
        raise SPRError(
            f"{a.pairs} was scored in box format {box_format} ({where}) but --box-format says {a.box_format}; export it "
            f"in its own format (leave --box-format out), or pair the candidates again with --box-format {a.box_format}"
        )
    return box_format, adopt_frame(a, [(f"the pairs' record {where}", frame), *recipe_source(a.recipe)])
