"""Build an SPR DPO dataset from a COCO-format detection dataset and a candidate source.

Stages, each leaving a file in ``work_dir`` so a run can be inspected and resumed::

    regions.jsonl      query regions (seeded, deterministic)
    candidates.jsonl   generated descriptions (append-only, resumable), unless --candidates is given
    pairs.jsonl        chosen/rejected with full score breakdowns
    summary.json       counts of everything skipped, and why

and finally the LLaMA-Factory dataset in ``dataset_dir`` (see :mod:`spr_plugin.export`). Registration is
checked *before* any generation, so a name clash fails in a second, not after hours of sampling.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spr_plugin.box_formats import get_box_format
from spr_plugin.candidates import GenerationStats, Generator, generate_with_config, merge_candidates, read_candidates
from spr_plugin.errors import SPRError
from spr_plugin.export import ExportConfig, ExportResult, check_files_free, export_dataset
from spr_plugin.generation import GenerationConfig
from spr_plugin.jsonl import atomic_write_jsonl, atomic_write_text, read_jsonl
from spr_plugin.lf_image import ImageFrame
from spr_plugin.pairing import PairingConfig
from spr_plugin.ranking import PairStats, rank_and_pair
from spr_plugin.records import Region
from spr_plugin.regions import RegionConfig, RegionStats, load_coco, sample_regions
from spr_plugin.registry import build_entries, check_can_register_entries
from spr_plugin.scorer_factory import build_candidate_scorer
from spr_plugin.scoring import ScoringConfig
from spr_plugin.semantic import DEFAULT_TEXT_MODEL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    annotations: Path
    image_root: Path
    work_dir: Path
    dataset_dir: Path
    name: str = "spr_qwen2vl"
    regions: RegionConfig = field(default_factory=RegionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    generation: GenerationConfig | None = None
    candidates_file: Path | tuple[Path, ...] | None = None  # several files (shards) are merged, duplicate keys dropped
    text_model: str = DEFAULT_TEXT_MODEL
    image_mode: str = "copy"
    overwrite: bool = False
    progress: bool = True
    #: LLaMA-Factory's pre-resize the candidates are sampled (and must be trained and evaluated) in.
    frame: ImageFrame = field(default_factory=ImageFrame)
    recipe: Path | None = None  # a training YAML whose frame must match, checked before any work

    def __post_init__(self) -> None:
        gen = self.generation
        if gen is not None and ImageFrame(gen.image_max_pixels, gen.image_min_pixels) != self.frame:
            raise SPRError(
                f"the generation frame {ImageFrame(gen.image_max_pixels, gen.image_min_pixels).to_dict()} differs from "
                f"the build frame {self.frame.to_dict()}: one frame for sampling and training"
            )

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class BuildSummary:
    config: dict[str, Any]
    regions: RegionStats
    generation: GenerationStats | None
    pairs: PairStats
    export: ExportResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "frame": self.config.get("frame"),
            "regions": {
                "images_seen": self.regions.images_seen,
                "regions": self.regions.regions,
                "skipped": dict(self.regions.skipped),
                "skipped_examples": self.regions.examples,
            },
            "generation": None if self.generation is None else self.generation.to_dict(),
            "pairs": self.pairs.to_dict(),
            "dataset": None
            if self.export is None
            else {
                "file": str(self.export.dataset_file),
                "dataset_info": str(self.export.dataset_info),
                "records": self.export.records,
                "images": self.export.images,
            },
        }


def build_regions(config: BuildConfig) -> tuple[list[Region], RegionStats]:
    coco = load_coco(config.annotations)
    stats = RegionStats()
    regions = list(sample_regions(coco, config.image_root, config.regions, stats))
    atomic_write_jsonl(config.work_dir / "regions.jsonl", [r.to_dict() for r in regions])
    if not regions:
        reasons = ", ".join(f"{k}: {v} (e.g. {stats.examples[k]})" for k, v in stats.skipped.items()) or "no images"
        raise SPRError(f"no query region could be sampled from {config.annotations} ({reasons})")
    return regions, stats


def build_dataset(config: BuildConfig, generator: Generator | None = None) -> BuildSummary:
    """Run every stage; ``generator`` is required unless ``config.candidates_file`` is given."""
    if config.candidates_file is None and generator is None:
        raise SPRError("no candidate source: pass a candidates JSONL file or a generator model")
    check_can_register_entries(config.dataset_dir, build_entries(config.name), config.overwrite)
    check_files_free(Path(config.dataset_dir), config.name, config.overwrite)
    if config.recipe is not None:
        from spr_plugin.recipe_check import check_recipe_frame

        check_recipe_frame(config.recipe, config.frame, "this build")
    config.work_dir.mkdir(parents=True, exist_ok=True)
    box_format = get_box_format(config.scoring.box_format, config.frame)

    regions, region_stats = build_regions(config)
    gen_stats = None
    if config.candidates_file is not None:
        files = [config.candidates_file] if isinstance(config.candidates_file, (str, Path)) else list(config.candidates_file)
        candidates = merge_candidates(files)[0]
    else:
        gcfg = config.generation
        assert gcfg is not None and generator is not None
        cand_path = config.work_dir / "candidates.jsonl"
        gen_stats = generate_with_config(regions, generator, box_format, cand_path, gcfg, progress=config.progress)
        candidates = read_candidates(cand_path)

    scorer = build_candidate_scorer(config.scoring, config.text_model, box_format=box_format)
    pairs, pair_stats = rank_and_pair(regions, candidates, scorer, config.pairing, progress=config.progress)
    atomic_write_jsonl(config.work_dir / "pairs.jsonl", [p.to_dict() for p in pairs])
    summary = BuildSummary(config.to_dict(), region_stats, gen_stats, pair_stats)
    if pairs:
        export_cfg = ExportConfig(Path(config.dataset_dir), config.name, config.image_mode, config.overwrite, config.frame)
        meta = {"scoring": asdict(config.scoring), "pairing": asdict(config.pairing), "regions": asdict(config.regions)}
        summary.export = export_dataset(pairs, export_cfg, box_format, meta)
        from spr_plugin.card import write_card  # the dataset card (README next to the dataset), docs/viewing.md

        write_card(config.dataset_dir, config.name, summary.to_dict(), pairs)
    atomic_write_text(config.work_dir / "summary.json", json.dumps(summary.to_dict(), indent=2) + "\n")
    if not pairs:
        raise SPRError(
            f"no preference pair survived (see {config.work_dir / 'summary.json'}): {pair_stats.to_dict()['pairs_skipped']}"
        )
    return summary


def load_regions(path: Path) -> list[Region]:
    return list(read_jsonl(path, Region.from_dict, what="region"))
