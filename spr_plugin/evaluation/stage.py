"""The evaluation stage: data in, a model run resumably over it, a report out (``spr eval rec/region`` call it).

The command line only parses flags and prints; what a run reads, when it resumes and what its results file
depends on is decided here, so a library caller (the effect study, a notebook) runs the same evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.manifest import Manifest, file_digest
from spr_plugin.core.records import Region
from spr_plugin.evaluation.config import RecConfig, RegionEvalConfig
from spr_plugin.evaluation.model import load_model
from spr_plugin.evaluation.rec import RecReport, evaluate_rec, usable_items
from spr_plugin.evaluation.region import RegionReport, evaluate_region


@dataclass(frozen=True)
class EvalRun:
    """Which model runs where, and where its report goes (``OUT`` and the per-item ``OUT.items.jsonl``)."""

    model: str
    adapter: str | None
    out: Path
    device: str = "cpu"
    fresh: bool = False
    progress: bool = True


def items_path(out: Path) -> Path:
    return out.with_suffix(".items.jsonl")


def _model_id(name: str | None) -> str | None:
    return os.path.abspath(name) if name is not None and os.path.exists(name) else name


def _results_manifest(out: Path, inputs: dict, fresh: bool) -> Manifest:
    """The per-item results file is resumed only if it was made with the same model, data and settings."""
    results = items_path(out)
    manifest = Manifest(results.with_name(results.name + ".manifest.json"), {"results": [results]})
    if fresh:
        manifest.reset()
    manifest.check(
        {"results": inputs},
        what=f"results file {results}",
        hint="rerun with the same settings, write to another --out, or pass --fresh",
    )
    return manifest


def _load_for_results(run: EvalRun, cfg: RecConfig | RegionEvalConfig, inputs: dict[str, Any]):
    """The run's model, loaded once its results file is known to match ``inputs`` plus the decoding settings both
    evaluations share; the record is written only after the model loaded, so a run that dies loading keeps the old one."""
    inputs = {**inputs, "max_new_tokens": cfg.max_new_tokens, "image_max_pixels": cfg.image_max_pixels,
              "image_min_pixels": cfg.image_min_pixels}  # fmt: skip
    manifest = _results_manifest(run.out, inputs, run.fresh)
    loaded = load_model(run.model, run.adapter, device=run.device)
    manifest.record({"results": inputs})
    return loaded


def _decoding_inputs(run: EvalRun, box_format: str) -> dict[str, Any]:
    return {"model": _model_id(run.model), "adapter": _model_id(run.adapter), "box_format": box_format}


def rec_stage(
    cfg: RecConfig,
    run: EvalRun,
    annotations: list[Path],
    images: Path | None,
    split: str | None,
    limit: int | None,
) -> tuple[RecReport, str]:
    """REC accuracy of ``run``'s model on the REC files ``annotations``: the report (written to ``run.out``)
    and the model's name."""
    from spr_plugin.evaluation.rec_data import load_rec
    from spr_plugin.evaluation.report import write_json

    data = load_rec(annotations, images, split, media_dir=run.out.with_suffix(".images"))
    items, skipped = usable_items(data.items)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise SPRError(f"no REC item has a usable image ({dict(skipped)})")
    inputs = {
        "annotations": [file_digest(p) for p in annotations],
        "split": split,
        "images": None if images is None else os.path.abspath(images),
        **_decoding_inputs(run, cfg.box_format),
        "prompt": cfg.template,
    }
    loaded = _load_for_results(run, cfg, inputs)
    source = ", ".join(map(str, annotations))
    report = evaluate_rec(items, loaded, cfg, items_path(run.out), annotations=source, progress=run.progress)
    report.skipped_items = dict(skipped)
    report.data = data.to_dict()
    write_json(run.out, report.to_dict())
    return report, loaded.name


def region_stage(
    cfg: RegionEvalConfig, run: EvalRun, regions: list[Region], source: str, data_inputs: dict[str, Any], limit: int | None
) -> tuple[RegionReport, str, int]:
    """Localization of ``run``'s model's descriptions of ``regions`` (from ``source``, whose identity is
    ``data_inputs``): the report (written to ``run.out``), the model's name and how many regions had no usable image."""
    from spr_plugin.core.images import check_image_cached
    from spr_plugin.evaluation.report import write_json

    if limit is not None:
        regions = regions[:limit]
    bad = {r.region_id: p for r in regions if isinstance(p := check_image_cached(r.image_path), str)}
    if len(bad) == len(regions):
        raise SPRError(
            f"no region of {source} has a usable image (e.g. {regions[0].image_path}: {next(iter(bad.values()))})"
            if regions
            else f"no query region in {source}"
        )
    regions = [r for r in regions if r.region_id not in bad]
    inputs = {
        **data_inputs,
        **_decoding_inputs(run, cfg.box_format),
        "iou_threshold": cfg.iou_threshold,
    }
    loaded = _load_for_results(run, cfg, inputs)
    report = evaluate_region(regions, loaded, cfg, items_path(run.out), regions_source=source, progress=run.progress)
    write_json(run.out, {**report.to_dict(), "skipped_regions": len(bad)})
    return report, loaded.name, len(bad)
