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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.images import copy_verified, region_image, require_image
from spr_plugin.core.jsonl import atomic_write_jsonl
from spr_plugin.core.paths import ImageRoots, contained_path, image_roots
from spr_plugin.core.preflight import check_dataset_name
from spr_plugin.core.records import PreferencePair
from spr_plugin.core.sanitize import SanitizeStats, sanitize_answer
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import profile_of
from spr_plugin.families.prompts import training_prompt
from spr_plugin.llamafactory.image import ImageFrame
from spr_plugin.llamafactory.recipe_check import write_meta
from spr_plugin.llamafactory.registry import build_entries, check_can_register_entries, chosen_sft_name, register_datasets
from spr_plugin.llamafactory.sharegpt import ranking_record

IMAGE_MODES = ("copy", "link", "absolute")


@dataclass(frozen=True)
class ExportConfig:
    dataset_dir: Path
    name: str = "spr_qwen2vl"
    image_mode: str = "copy"  # copy: self-contained folder; link: hard links (same disk); absolute: no copies
    overwrite: bool = False
    #: The frame the candidates were sampled in; recorded in ``<name>.spr.json`` so a recipe can be checked.
    frame: ImageFrame = field(default_factory=ImageFrame)
    #: The folders every image of the pairs must lie under (:class:`ImageRoots`; ``spr export`` passes its
    #: ``--images``, default the pairs file's folder). A pairs file is data from elsewhere: without this check a
    #: record naming ``/etc/shadow`` would copy it into a dataset that may be published. None (library use with
    #: pairs built in process) trusts the root each region recorded when it was sampled.
    image_root: ImageRoots | Path | None = None

    def __post_init__(self) -> None:
        if self.image_mode not in IMAGE_MODES:
            raise ConfigError(f"unknown image mode {self.image_mode!r}; choose one of {', '.join(IMAGE_MODES)}")
        check_dataset_name(self.name)


@dataclass(frozen=True)
class ExportResult:
    dataset_file: Path
    dataset_info: Path
    records: int
    images: int
    images_copied: int = 0
    stale_images_removed: int = 0
    sanitized: dict[str, Any] | None = None


def _image_source(pair: PreferencePair, config: ExportConfig) -> Path:
    """The pair's image, once it is known to lie under the image folders and to be a usable image."""
    where = f"region {pair.region.region_id}"
    source = region_image(pair.region, image_roots(config.image_root, pair.region))  # inside the roots, right size
    if not source.is_file():
        raise SPRError(f"image not found while exporting: {source}")
    require_image(source, f"{where}: image")  # a text file, a truncated JPEG or a bomb is not exported
    return source


def _place_image(pair: PreferencePair, config: ExportConfig, placed: dict[str, str], copied: list[int]) -> str:
    """Put one image where LLaMA-Factory will find it; returns the path to store in the record."""
    key = pair.region.image_path
    if key in placed:
        return placed[key]
    source = _image_source(pair, config)
    if config.image_mode == "absolute":
        rel = str(source)
    else:
        rel = f"{config.name}/images/{pair.region.image_id}_{source.name}"
        dest = contained_path(config.dataset_dir, rel, f"image path of {source}")  # LLaMA-Factory joins it to dataset_dir
        copied[0] += copy_verified(source, dest, link=config.image_mode == "link")
    placed[key] = rel
    return rel


def pair_record(pair: PreferencePair, image: str, box_format: BoxFormat, stats: SanitizeStats | None = None) -> dict[str, Any]:
    """One ShareGPT ranking record; the answers pass through the sanitiser (no stray special token reaches training)."""
    keep = profile_of(box_format).kept_tokens
    chosen, n_chosen = sanitize_answer(pair.chosen.candidate.text, keep)
    rejected, n_rejected = sanitize_answer(pair.rejected.candidate.text, keep)
    if stats is not None:
        stats.add("exported_answers", n_chosen + n_rejected)
    return ranking_record(training_prompt(pair.region, box_format), chosen, rejected, [image])


@contextmanager
def _export_lock(dataset_dir: Path, name: str) -> Iterator[None]:
    """Serialise exports of one dataset name: the second waits, then sees the first one's dataset."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(dataset_dir / f".{name}.export.lock"):
        yield


def check_can_export(config: ExportConfig) -> None:
    """Raise before any work if the export would be refused (name registered differently, file exists)."""
    dataset_dir = Path(config.dataset_dir)
    check_can_register_entries(dataset_dir, build_entries(config.name), config.overwrite)
    check_files_free(dataset_dir, config.name, config.overwrite)


def _remove_stale_images(config: ExportConfig, placed: dict[str, str]) -> int:
    """After an ``--overwrite``, images of the replaced dataset that no record names any more."""
    folder = Path(config.dataset_dir) / config.name / "images"
    if config.image_mode == "absolute" or not folder.is_dir():
        return 0
    keep = {Path(rel).name for rel in placed.values()}
    removed = 0
    for entry in folder.iterdir():
        if entry.is_file() and entry.name not in keep:
            entry.unlink()
            removed += 1
    return removed


def chosen_sft_record(record: dict[str, Any]) -> dict[str, Any]:
    """The chosen-only SFT record of a DPO record: the prompt and the chosen answer as one conversation."""
    return {"conversations": [*record["conversations"], record["chosen"]], "images": record["images"]}


def export_dataset(
    pairs: Sequence[PreferencePair], config: ExportConfig, box_format: BoxFormat, meta: dict[str, Any] | None = None
) -> ExportResult:
    """Write the dataset files and register both entries; refuses before writing if a name is taken.

    ``meta`` (e.g. the run's scoring and pairing settings) joins the frame, box format and template in
    ``<name>.spr.json``; the chosen-only companion gets the same file, so ``spr check-recipe`` checks SFT recipes too.
    Exports of one name are serialised by a lock in ``dataset_dir``; the checks run again inside it, so of two
    concurrent exports without ``--overwrite`` exactly one succeeds.
    """
    if not pairs:
        raise SPRError("no preference pairs to export (see the run summary for why candidates were skipped)")
    dataset_dir = Path(config.dataset_dir)
    entries = build_entries(config.name)
    check_can_export(config)  # a refused export creates nothing, not even the lock file
    for p in pairs:
        _image_source(p, config)  # every image checked (inside its root, a real image) before anything is written
    with _export_lock(dataset_dir, config.name):
        check_can_export(config)  # again under the lock: a concurrent export of this name may just have finished
        placed: dict[str, str] = {}
        copied = [0]
        stats = SanitizeStats()
        records = [pair_record(p, _place_image(p, config, placed, copied), box_format, stats) for p in pairs]
        atomic_write_jsonl(dataset_dir / f"{config.name}.pairs.jsonl", [p.to_dict() for p in pairs])
        atomic_write_jsonl(dataset_dir / f"{chosen_sft_name(config.name)}.jsonl", [chosen_sft_record(r) for r in records])
        atomic_write_jsonl(dataset_dir / f"{config.name}.jsonl", records)
        facts = {
            "box_format": box_format.name,
            "template": profile_of(box_format).template,
            "frame": config.frame.to_dict(),
            **(meta or {}),
        }
        write_meta(dataset_dir, config.name, facts)
        write_meta(dataset_dir, chosen_sft_name(config.name), {**facts, "chosen_only_of": config.name})
        stale = _remove_stale_images(config, placed) if config.overwrite else 0
        info = register_datasets(dataset_dir, entries, overwrite=config.overwrite)
    return ExportResult(dataset_dir / f"{config.name}.jsonl", info, len(records), len(placed), copied[0], stale, stats.to_dict())


def check_files_free(dataset_dir: Path, name: str, overwrite: bool) -> None:
    """Refuse (unless ``overwrite``) when a data file a build of ``name`` writes is already there."""
    if overwrite:
        return
    for file_name in (entry["file_name"] for entry in build_entries(name).values()):
        if (Path(dataset_dir) / file_name).exists():
            raise SPRError(f"{Path(dataset_dir) / file_name} already exists; choose another --name or pass --overwrite")
