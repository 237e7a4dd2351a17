"""``spr eval region``: how well a model's grounded region descriptions localize the region's objects.

This measures the behaviour SPR trains directly: the model is asked the DPO training question
(:func:`spr_plugin.families.prompts.training_prompt`) about held-out query regions, answers greedily, and every
box of its description is matched one-to-one (Hungarian, :mod:`spr_plugin.scoring.localization`) to the
region's annotated objects at IoU > threshold (SPR keeps boxes with IoU > 0.5). Labels are not
compared: this is localization quality, like GVD's F1_loc, not naming accuracy. An unmatched box lying on an
ignored object (a crowd, scored as pycocotools does by intersection over the box's area; an Objects365
virtual object by IoU) is neither a match nor a false positive: it leaves ``n_pred`` (``n_ignored`` counts it).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.records import Region
from spr_plugin.evaluation.config import RegionEvalConfig
from spr_plugin.evaluation.metrics import RegionSummary, region_summary
from spr_plugin.evaluation.runner import decoding_settings, run_resumable
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import get_box_format
from spr_plugin.families.prompts import Prompt, training_prompt
from spr_plugin.generation.model_runner import ModelRunner
from spr_plugin.scoring.localization import ignored_overlap, iou_matrix, match_hungarian


def score_description(region: Region, answer: str, box_format: BoxFormat, iou_threshold: float) -> dict[str, Any]:
    parsed = box_format.parse(answer, region.width, region.height)
    pred = parsed.boxes
    gt = [o.box for o in region.objects]
    matches = match_hungarian(iou_matrix(gt, pred), iou_threshold)
    matched = {m.pred_index for m in matches}
    ignored = 0
    if region.ignored:
        overlap = ignored_overlap(region.ignored, pred)
        ignored = sum(1 for j in range(len(pred)) if j not in matched and (overlap[:, j] > iou_threshold).any())
    return {
        "answer": answer,
        "n_gt": len(gt),
        "n_pred": len(pred) - ignored,
        "n_ignored": ignored,
        "matched_ious": [round(m.iou, 6) for m in matches],
        "dropped_boxes": dict(parsed.dropped),
    }


@dataclass
class RegionReport:
    model: str
    regions_source: str
    box_format: str
    prompt_example: str
    summary: RegionSummary
    reused: int = 0
    decoding: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary.to_dict()
        d["matching"] = f"one-to-one (Hungarian) on IoU, a match needs IoU > {self.summary.iou_threshold}; labels ignored"
        return d


def evaluate_region(
    regions: list[Region],
    loaded: ModelRunner,
    config: RegionEvalConfig,
    results_path: str | os.PathLike,
    *,
    regions_source: str = "",
    progress: bool = True,
) -> RegionReport:
    fmt = get_box_format(config.box_format, ImageFrame(config.image_max_pixels, config.image_min_pixels))
    results, reused = run_resumable(
        [r.region_id for r in regions],
        lambda i: Prompt("box_text", training_prompt(regions[i], fmt), (regions[i].image_path,)),
        lambda i, answer: score_description(regions[i], answer, fmt, config.iou_threshold),
        loaded,
        results_path,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        progress=progress,
        image_max_pixels=config.image_max_pixels,
        image_min_pixels=config.image_min_pixels,
        desc="eval region",
    )
    summary = region_summary([(r["n_gt"], r["n_pred"], r["matched_ious"]) for r in results], config.iou_threshold)
    return RegionReport(
        model=loaded.name,
        regions_source=regions_source,
        box_format=config.box_format,
        prompt_example=training_prompt(regions[0], fmt) if regions else "",
        summary=summary,
        reused=reused,
        decoding=decoding_settings(config),
    )
