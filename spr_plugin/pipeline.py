"""Build an SPR DPO dataset from a COCO-format detection dataset and a candidate source.

Stages, each leaving a file in ``work_dir`` so a run can be inspected and resumed::

    regions.jsonl      query regions (seeded, deterministic); regions.stats.json what sampling skipped
    candidates.jsonl   generated descriptions (append-only, resumable), unless --candidates is given
    pairs.jsonl        chosen/rejected with full score breakdowns
    summary.json       counts of everything skipped, and why
    manifest.json      what each stage's output was made from (annotation hash, settings): a rerun with
                       other settings refuses instead of reusing stale work (``fresh`` starts over)

and finally the LLaMA-Factory dataset in ``dataset_dir`` (see :mod:`spr_plugin.llamafactory.export`). Everything a user
can get wrong (the dataset name, unusable output folders, images not found, unreadable candidate files, a
name clash, changed settings) is checked *before* any generation, so it fails in a second, not after hours
of sampling.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.images import confine_regions
from spr_plugin.core.jsonl import atomic_write_jsonl, atomic_write_text, dumps, finite_or_null
from spr_plugin.core.manifest import Manifest, file_digest, settings
from spr_plugin.core.paths import ImageRoots
from spr_plugin.core.preflight import require_writable_dir
from spr_plugin.core.records import Candidate, Region
from spr_plugin.core.sanitize import SanitizeStats
from spr_plugin.families.profiles import get_box_format
from spr_plugin.generation.backends import generation_fingerprint
from spr_plugin.generation.candidates import (
    GenerationStats,
    Generator,
    MergeStats,
    generate_with_config,
    merge_candidates,
    read_candidates,
)
from spr_plugin.llamafactory.export import ExportConfig, ExportResult, check_can_export, export_dataset, write_companion
from spr_plugin.regions.annotations import category_vocabulary
from spr_plugin.regions.sampling import RegionStats, check_images_found, load_coco, read_regions, sample_regions_stage
from spr_plugin.scoring.semantic import check_text_model
from spr_plugin.scoring.stage import PairStats, score_pairs_stage
from spr_plugin.settings import BuildConfig

logger = logging.getLogger(__name__)


def work_manifest(work_dir: Path) -> Manifest:
    """The manifest of a build's work dir and the stage files it covers (what ``fresh`` removes)."""
    w = Path(work_dir)
    return Manifest(
        w / "manifest.json",
        {
            "regions": [w / "regions.jsonl", w / "regions.stats.json"],
            "candidates": [w / "candidates.jsonl", w / ".candidates.jsonl.lock", w / "candidates.jsonl.manifest.json"],
            "pairs": [w / "pairs.jsonl", w / "summary.json"],
        },
    )


def stage_inputs(config: BuildConfig, annotations_digest: str, candidate_digests: list[str] | None = None) -> dict[str, dict]:
    """What each stage's output depends on: the manifest compares these between runs."""
    regions = {
        "annotations": annotations_digest,
        "image_root": os.path.abspath(config.image_root),
        "config": settings(config.regions),
    }
    if config.candidates_file is not None:
        candidates: dict[str, Any] = {"source": "files", "files": candidate_digests or []}
    else:
        candidates = {"source": "generate", **generation_fingerprint(config.generation, config.scoring.box_format)}
    candidates["frame"] = settings(config.frame)  # Qwen2.5-VL boxes are pixels of this frame
    candidates["upstream"] = _fingerprint(regions)
    pairs = {
        "frame": settings(config.frame),
        "scoring": settings(config.scoring),
        "pairing": settings(config.pairing),
        "text_model": config.text_model,
        "upstream": _fingerprint(candidates),
    }
    return {"regions": regions, "candidates": candidates, "pairs": pairs}


def _fingerprint(obj: Any) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(json.dumps(settings(obj), sort_keys=True).encode()).hexdigest()


@dataclass
class BuildSummary:
    config: dict[str, Any]
    regions: RegionStats
    generation: GenerationStats | None
    pairs: PairStats
    export: ExportResult | None = None
    sanitized: SanitizeStats = field(default_factory=SanitizeStats)
    candidate_files: MergeStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "frame": self.config.get("frame"),
            "regions": self.regions.to_dict(),
            "generation": None if self.generation is None else self.generation.to_dict(),
            "pairs": self.pairs.to_dict(),
            "candidate_files": None if self.candidate_files is None else self.candidate_files.to_dict(),
            "sanitized": self.sanitizer_counts(),
            "dataset": None
            if self.export is None
            else {
                "file": str(self.export.dataset_file),
                "dataset_info": str(self.export.dataset_info),
                "records": self.export.records,
                "images": self.export.images,
                "pairs_skipped": dict(self.export.pairs_skipped),
                "skipped_examples": list(self.export.skipped_examples),
            },
        }

    def sanitizer_counts(self) -> dict[str, dict[str, int]]:
        """Special tokens the sanitiser removed, per kind of text, over every stage of the build."""
        total = SanitizeStats()
        total.add("category_names", int(self.regions.loader.get("category_name_tokens_removed", 0)))
        for stats in (self.generation.sanitized if self.generation else None, self.sanitized):
            if stats is not None:
                total.removed.update(stats.removed)
                total.texts_changed.update(stats.texts_changed)
        if self.export is not None and self.export.sanitized:
            total.removed.update(self.export.sanitized.get("tokens_removed", {}))
            total.texts_changed.update(self.export.sanitized.get("texts_changed", {}))
        return total.to_dict()


_HINT = "rerun with the same settings, use another --work-dir, or pass --fresh to start over"


def _sample(config: BuildConfig, coco=None, locator=None) -> tuple[list[Region], RegionStats]:
    return sample_regions_stage(
        config.regions, config.annotations, config.image_root, coco=coco, locator=locator, progress=config.progress
    )


def build_regions(config: BuildConfig) -> tuple[list[Region], RegionStats]:
    """Sample the regions into ``work_dir/regions.jsonl`` and record them in the work dir's manifest."""
    manifest = work_manifest(config.work_dir)
    inputs = {"regions": stage_inputs(config, file_digest(config.annotations))["regions"]}
    if config.fresh:
        manifest.reset()
    manifest.check(inputs, what=f"work dir {config.work_dir}", hint=_HINT)
    regions, stats = _sample(config)
    _write_regions(config.work_dir, regions, stats)
    manifest.record(inputs)
    return regions, stats


def _write_regions(work_dir: Path, regions: list[Region], stats: RegionStats) -> None:
    atomic_write_jsonl(work_dir / "regions.jsonl", [r.to_dict() for r in regions])
    atomic_write_text(work_dir / "regions.stats.json", dumps(finite_or_null(stats.to_dict()), indent=2) + "\n")


def _reuse_regions(work_dir: Path) -> tuple[list[Region], RegionStats] | None:
    """The regions of an earlier run with the same inputs (the manifest matched), or None."""
    path, stats_path = work_dir / "regions.jsonl", work_dir / "regions.stats.json"
    if not (path.is_file() and stats_path.is_file()):
        return None
    try:
        raw = json.loads(stats_path.read_text(encoding="utf-8"))
        stats = RegionStats(
            images_seen=int(raw["images_seen"]),
            regions=int(raw["regions"]),
            examples=dict(raw.get("skipped_examples", {})),
            boxes_clamped=int(raw.get("boxes_clamped_to_image", 0)),
            loader=dict(raw.get("loader", {})),
        )
        stats.skipped.update(raw.get("skipped", {}))
        stats.ignored_objects.update(raw.get("ignored_objects", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    regions = read_regions(path)
    return (regions, stats) if regions else None


@dataclass
class PreparedBuild:
    """What :func:`prepare_build` checked and loaded, so :func:`build_dataset` does not repeat it."""

    stages: dict[str, dict]
    manifest: Manifest
    candidates: list[Candidate] | None
    coco: Any = None  # the annotation index, unless the regions of an earlier run are reused
    locator: Any = None  # where its images are (the layout learned once per build), with ``coco``
    candidate_files: MergeStats | None = None  # what reading --candidates kept and dropped


def prepare_build(config: BuildConfig) -> PreparedBuild:
    """Every check that takes seconds, run before a model is loaded or a candidate generated.

    The dataset name, the output folders (a file in the way, not writable), the registration (a clashing
    entry, an existing dataset), the annotation file (readable, its images under ``--images``), candidate
    files (readable) and the work dir's manifest (made with the same settings, unless ``fresh``).
    """
    export_cfg = _export_config(config)  # validates the name
    require_writable_dir(config.work_dir, "--work-dir")
    require_writable_dir(config.dataset_dir, "--dataset-dir")
    check_can_export(export_cfg)
    if not Path(config.annotations).is_file():
        raise SPRError(f"annotation file not found: {config.annotations}")
    if config.recipe is not None:
        from spr_plugin.llamafactory.recipe_check import check_recipe_frame

        check_recipe_frame(config.recipe, config.frame, "this build")
    get_box_format(config.scoring.box_format, config.frame)
    check_text_model(config.text_model)  # the scorer loads after generation: an unknown model must fail now
    candidates: list[Candidate] | None = None
    read: MergeStats | None = None
    digests = None
    if config.candidates_file is not None:
        candidates, read = merge_candidates(config.candidate_files)  # unreadable files fail now, not after sampling
        digests = [file_digest(f) for f in config.candidate_files]
    stages = stage_inputs(config, file_digest(config.annotations), digests)
    manifest = work_manifest(config.work_dir)
    if config.fresh:
        removed = manifest.reset()
        if removed:
            logger.info("--fresh: removed %d files of the earlier run in %s", len(removed), config.work_dir)
    manifest.check(stages, what=f"work dir {config.work_dir}", hint=_HINT)
    coco = locator = None
    if not manifest.existing_outputs("regions"):
        coco = load_coco(config.annotations)
        locator = check_images_found(coco, config.image_root)
    return PreparedBuild(stages, manifest, candidates, coco, candidate_files=read, locator=locator)


def _export_config(config: BuildConfig) -> ExportConfig:
    """The build's export; its dataset card is a companion file, checked with the export's before any work."""
    from spr_plugin.inspect.card import card_path

    card = card_path(config.dataset_dir, config.name).name
    roots = ImageRoots([config.image_root], "--images")  # the build's own image folder, never a recorded one
    return ExportConfig(
        Path(config.dataset_dir), config.name, config.image_mode, config.overwrite, config.frame, roots, companions=(card,)
    )


def build_dataset(config: BuildConfig, generator: Generator | None = None, prepared: PreparedBuild | None = None) -> BuildSummary:
    """Run every stage; ``generator`` is required unless ``config.candidates_file`` is given.

    ``prepared`` is the result of :func:`prepare_build` when the caller ran the checks first (the CLI does,
    before it loads the generator model); otherwise they run here.
    """
    if config.candidates_file is None and generator is None:
        raise SPRError("no candidate source: pass a candidates JSONL file or a generator model")
    prep = prepared if prepared is not None else prepare_build(config)
    manifest, candidates = prep.manifest, prep.candidates
    box_format = get_box_format(config.scoring.box_format, config.frame)

    reused = _reuse_regions(config.work_dir) if manifest.existing_outputs("regions") else None
    manifest.record(prep.stages)  # before the long work: a killed run's partial output is on record
    if reused is None:
        regions, region_stats = _sample(config, prep.coco, prep.locator)
        _write_regions(config.work_dir, regions, region_stats)
    else:
        regions, region_stats = reused
        # A work dir's regions.jsonl is a file on disk like any other (edited, or a work dir received): its images
        # are read only under this build's own --images, checked as for `spr generate`.
        regions = confine_regions(regions, ImageRoots([config.image_root], "--images"), progress=config.progress)
    gen_stats = None
    if candidates is None:
        gcfg = config.generation
        assert gcfg is not None and generator is not None
        cand_path = config.work_dir / "candidates.jsonl"
        gen_stats = generate_with_config(regions, generator, box_format, cand_path, gcfg, progress=config.progress)
        candidates = read_candidates(cand_path)

    sanitized = SanitizeStats()
    # The dataset's whole vocabulary judges mentions (a resumed run reads it again: same inputs, same scores).
    names = category_vocabulary(prep.coco if prep.coco is not None else load_coco(config.annotations))
    pairs, pair_stats = score_pairs_stage(
        regions,
        candidates,
        config.scoring,
        config.pairing,
        box_format=box_format,
        text_model=config.text_model,
        category_names=names,
        sanitized=sanitized,
        progress=config.progress,
    )
    atomic_write_jsonl(config.work_dir / "pairs.jsonl", [p.to_dict() for p in pairs])
    summary = BuildSummary(
        config.to_dict(), region_stats, gen_stats, pair_stats, sanitized=sanitized, candidate_files=prep.candidate_files
    )
    if pairs:
        export_cfg = _export_config(config)
        meta = {"scoring": asdict(config.scoring), "pairing": asdict(config.pairing), "regions": asdict(config.regions),
                "vocabulary": list(pair_stats.vocabulary)}  # fmt: skip
        summary.export = export_dataset(pairs, export_cfg, box_format, meta, progress=config.progress)
        from spr_plugin.inspect.card import card_path, render_card  # the dataset card (README next to the dataset)

        card = card_path(config.dataset_dir, config.name).name  # written like the export's files, and recorded as spr's
        write_companion(export_cfg, card, render_card(config.name, summary.to_dict(), summary.export.pairs))
    atomic_write_text(config.work_dir / "summary.json", dumps(finite_or_null(summary.to_dict()), indent=2) + "\n")
    if not pairs:
        raise SPRError(
            f"no preference pair survived (see {config.work_dir / 'summary.json'}): {pair_stats.to_dict()['pairs_skipped']}"
        )
    return summary


def load_regions(path: Path) -> list[Region]:
    """Regions of a JSONL file (names sanitised, duplicate ids refused); see :func:`spr_plugin.regions.sampling.read_regions`."""
    return read_regions(path)
