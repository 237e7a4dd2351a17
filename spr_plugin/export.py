"""Write preference pairs as a LLaMA-Factory ShareGPT ranking dataset and register it.

Layout, chosen so that LLaMA-Factory resolves every path without extra settings (relative image paths
are joined to ``media_dir``, which defaults to ``dataset_dir``, not to the json file's folder)::

    <dataset_dir>/dataset_info.json          entries <name> and <name>_chosen merged in
    <dataset_dir>/<name>.jsonl               one record per pair (DPO, ``ranking``)
    <dataset_dir>/<name>_chosen.jsonl        the same prompts with the chosen answer only (SFT, the paper's ablation)
    <dataset_dir>/<name>.pairs.jsonl         the full score breakdown of every pair (for humans/tools)
    <dataset_dir>/<name>/images/...          images, referenced as "<name>/images/..."

Records follow LLaMA-Factory's contract: ``conversations`` is the prompt (one user turn, one ``<image>``
for the one image), ``chosen``/``rejected`` are single ``{"from": "gpt", "value": ...}`` dicts. A chosen-only
record is the conversation ``[human prompt, gpt chosen]`` with the same images.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .box_formats import BoxFormat
from .errors import ConfigError, SPRError
from .jsonl import atomic_write_jsonl
from .lf_image import ImageFrame
from .paths import contained_path
from .prompts import strip_media_markers, training_prompt
from .recipe_check import write_meta
from .records import PreferencePair
from .registry import build_entries, check_can_register_entries, chosen_sft_name, register_datasets

IMAGE_MODES = ("copy", "link", "absolute")


@dataclass(frozen=True)
class ExportConfig:
    dataset_dir: Path
    name: str = "spr_qwen2vl"
    image_mode: str = "copy"  # copy: self-contained folder; link: hard links (same disk); absolute: no copies
    overwrite: bool = False
    #: The frame the candidates were sampled in; recorded in ``<name>.spr.json`` so a recipe can be checked.
    frame: ImageFrame = field(default_factory=ImageFrame)

    def __post_init__(self) -> None:
        if self.image_mode not in IMAGE_MODES:
            raise ConfigError(f"unknown image mode {self.image_mode!r}; choose one of {', '.join(IMAGE_MODES)}")
        if not self.name or any(c in self.name for c in "/\\ ") or self.name.startswith("."):
            raise SPRError(f"invalid dataset name {self.name!r}: use letters, digits, '-' and '_'")


@dataclass(frozen=True)
class ExportResult:
    dataset_file: Path
    dataset_info: Path
    records: int
    images: int


def _place_image(src: str, config: ExportConfig, image_id: int, placed: dict[str, str]) -> str:
    """Put one image where LLaMA-Factory will find it; returns the path to store in the record."""
    if src in placed:
        return placed[src]
    source = Path(src)
    if not source.is_file():
        raise SPRError(f"image not found while exporting: {source}")
    if config.image_mode == "absolute":
        rel = str(source.resolve())
    else:
        rel = f"{config.name}/images/{image_id}_{source.name}"
        dest = contained_path(config.dataset_dir, rel, f"image path of {source}")  # LLaMA-Factory joins it to dataset_dir
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            if config.image_mode == "link":
                try:
                    os.link(source, dest)
                except OSError:
                    shutil.copy2(source, dest)
            else:
                shutil.copy2(source, dest)
    placed[src] = rel
    return rel


def pair_record(pair: PreferencePair, image: str, box_format: BoxFormat) -> dict[str, Any]:
    return {
        "conversations": [{"from": "human", "value": training_prompt(pair.region, box_format)}],
        "chosen": {"from": "gpt", "value": strip_media_markers(pair.chosen.candidate.text)},
        "rejected": {"from": "gpt", "value": strip_media_markers(pair.rejected.candidate.text)},
        "images": [image],
    }


def chosen_sft_record(record: dict[str, Any]) -> dict[str, Any]:
    """The chosen-only SFT record of a DPO record: the prompt and the chosen answer as one conversation."""
    return {"conversations": [*record["conversations"], record["chosen"]], "images": record["images"]}


def export_dataset(
    pairs: Sequence[PreferencePair], config: ExportConfig, box_format: BoxFormat, meta: dict[str, Any] | None = None
) -> ExportResult:
    """Write the dataset files and register both entries; refuses before writing if a name is taken.

    ``meta`` (e.g. the run's scoring and pairing settings) joins the frame, box format and template in
    ``<name>.spr.json``; the chosen-only companion gets the same file, so ``spr check-recipe`` checks SFT recipes too.
    """
    if not pairs:
        raise SPRError("no preference pairs to export (see the run summary for why candidates were skipped)")
    dataset_dir = Path(config.dataset_dir)
    entries = build_entries(config.name)
    check_can_register_entries(dataset_dir, entries, config.overwrite)
    check_files_free(dataset_dir, config.name, config.overwrite)
    dataset_file = dataset_dir / f"{config.name}.jsonl"
    placed: dict[str, str] = {}
    records = [pair_record(p, _place_image(p.region.image_path, config, p.region.image_id, placed), box_format) for p in pairs]
    atomic_write_jsonl(dataset_dir / f"{config.name}.pairs.jsonl", [p.to_dict() for p in pairs])
    atomic_write_jsonl(dataset_dir / f"{chosen_sft_name(config.name)}.jsonl", [chosen_sft_record(r) for r in records])
    atomic_write_jsonl(dataset_file, records)
    facts = {"box_format": box_format.name, "template": box_format.template, "frame": config.frame.to_dict(), **(meta or {})}
    write_meta(dataset_dir, config.name, facts)
    write_meta(dataset_dir, chosen_sft_name(config.name), {**facts, "chosen_only_of": config.name})
    info = register_datasets(dataset_dir, entries, overwrite=config.overwrite)
    return ExportResult(dataset_file, info, len(records), len(placed))


def check_files_free(dataset_dir: Path, name: str, overwrite: bool) -> None:
    """Refuse (unless ``overwrite``) when a data file a build of ``name`` writes is already there."""
    if overwrite:
        return
    for file_name in (entry["file_name"] for entry in build_entries(name).values()):
        if (Path(dataset_dir) / file_name).exists():
            raise SPRError(f"{Path(dataset_dir) / file_name} already exists; choose another --name or pass --overwrite")
