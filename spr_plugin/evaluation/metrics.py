"""Pure metric functions for grounding evaluation (no model, no I/O), so they can be unit tested.

REC (referring expression comprehension) follows the usual protocol: one predicted box per
expression, correct iff its IoU with the annotated box reaches the threshold. Implementations
disagree on the comparison (Qwen-VL and Ferret use ``iou >= t``, Groma and VLM-R1 use ``iou > t``),
so the convention is an explicit argument and is written into every report. An answer with no
parseable box has IoU 0 and is always wrong; it is never dropped from the denominator, otherwise a
model that refuses hard items would look better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.records import Box

#: Thresholds reported by default: SPR's paper reports Acc@0.5 and the 0.5-0.9 curve.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
CONVENTIONS = (">=", ">")


def box_iou(a: Box | None, b: Box | None) -> float:
    """Continuous-coordinate IoU (torchvision/Ferret/Qwen-VL convention, no ``+1``); 0 if either is missing.

    The one IoU of the package: :func:`spr_plugin.scoring.localization.iou_matrix` (``torchvision.ops.box_iou``),
    imported here on first use so that the evaluation command line parses without torch."""
    if a is None or b is None:
        return 0.0
    from spr_plugin.scoring.localization import iou_matrix

    return float(iou_matrix([a], [b])[0, 0])


def is_hit(iou: float, threshold: float, convention: str = ">=") -> bool:
    """Whether one prediction counts as correct at ``threshold`` under ``convention``."""
    if convention == ">=":
        return iou >= threshold
    if convention == ">":
        return iou > threshold
    raise ConfigError(f"unknown threshold convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")


@dataclass(frozen=True)
class RecSummary:
    """REC accuracy at each threshold, mean IoU and the parse-failure count over ``n`` items."""

    n: int
    accuracy: dict[str, float]
    mean_iou: float
    unparseable: int
    convention: str
    thresholds: tuple[float, ...] = field(default=DEFAULT_THRESHOLDS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rec_summary(
    ious: Sequence[float | None], thresholds: Sequence[float] = DEFAULT_THRESHOLDS, convention: str = ">="
) -> RecSummary:
    """Summarise per-item IoUs; ``None`` marks an unparseable answer and counts as IoU 0 (wrong)."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown threshold convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    values = [0.0 if v is None else float(v) for v in ious]
    n = len(values)
    acc = {f"{t:g}": (sum(is_hit(v, t, convention) for v in values) / n if n else 0.0) for t in thresholds}
    return RecSummary(
        n=n,
        accuracy=acc,
        mean_iou=sum(values) / n if n else 0.0,
        unparseable=sum(v is None for v in ious),
        convention=convention,
        thresholds=tuple(float(t) for t in thresholds),
    )


@dataclass(frozen=True)
class RegionSummary:
    """Localization of grounded descriptions, micro-averaged over all regions.

    precision = matched predicted boxes / predicted boxes, recall = matched annotated objects /
    annotated objects, both with one-to-one (Hungarian) matching at IoU > threshold;
    ``mean_matched_iou`` is the mean IoU of the matched pairs (box tightness of what was found).
    """

    regions: int
    n_gt: int
    n_pred: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float
    no_box_answers: int
    iou_threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def region_summary(per_region: Sequence[tuple[int, int, Sequence[float]]], iou_threshold: float = 0.5) -> RegionSummary:
    """``per_region`` holds ``(n_gt, n_pred, matched_ious)`` for every region."""
    n_gt = sum(r[0] for r in per_region)
    n_pred = sum(r[1] for r in per_region)
    matched = [iou for r in per_region for iou in r[2]]
    p = len(matched) / n_pred if n_pred else 0.0
    r = len(matched) / n_gt if n_gt else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return RegionSummary(
        regions=len(per_region),
        n_gt=n_gt,
        n_pred=n_pred,
        n_matched=len(matched),
        precision=p,
        recall=r,
        f1=f1,
        mean_matched_iou=sum(matched) / len(matched) if matched else 0.0,
        no_box_answers=sum(1 for x in per_region if x[1] == 0),
        iou_threshold=iou_threshold,
    )
