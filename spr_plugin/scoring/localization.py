"""Localization score S_loc: how well a description's boxes match the region's annotated boxes.

Two matchings are offered, both pure functions of the IoU matrix:

* ``paper``: SPR's formula, ``S_loc = 1/n · Σ_i max_j p[i, j]`` with IoUs at or below the threshold set to 0
  (n = annotated objects). It is recall-like: one predicted box may serve many annotated objects, and
  extra boxes cost nothing, so a description that repeats one good box or adds hallucinated boxes is
  not penalised.
* ``hungarian`` (default): a one-to-one assignment (``scipy.optimize.linear_sum_assignment``) that
  maximises total IoU; pairs at or below the threshold do not count (SPR keeps boxes with IoU > 0.5).
  The score is the soft F1
  ``2 · Σ matched IoU / (n_gt + n_pred)``, so duplicates and hallucinated boxes lower it (precision)
  and omitted objects lower it too (recall). We default to it because DPO learns whatever the reward
  leaves open: with the paper's recall-only score the chosen side can be the one that sprays boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.options import DEFAULT_IOU_THRESHOLD, LOC_METRICS
from spr_plugin.core.records import AnnotatedObject, Box, LocalizationScore, Match, ParseResult

METRICS = LOC_METRICS


def iou_matrix(gt: Sequence[Box], pred: Sequence[Box]) -> np.ndarray:
    """IoU of every annotated box (rows) with every predicted box (columns)."""
    if not gt or not pred:
        return np.zeros((len(gt), len(pred)), dtype=np.float64)
    g = torch.tensor([b.as_list() for b in gt], dtype=torch.float64)
    p = torch.tensor([b.as_list() for b in pred], dtype=torch.float64)
    return box_iou(g, p).numpy()


def crowd_iou_matrix(crowds: Sequence[Box], pred: Sequence[Box]) -> np.ndarray:
    """pycocotools' ``iscrowd`` overlap: intersection over the *predicted* box's area (rows: crowd boxes).

    A crowd box covers many objects; a right box on one person inside it has a small IoU with the whole crowd
    (0.075 for a person in a crowd fifteen times its size) but lies entirely in it. COCO's evaluation therefore
    scores detections against crowd regions by the share of the detection inside the crowd."""
    if not crowds or not pred:
        return np.zeros((len(crowds), len(pred)), dtype=np.float64)
    c = np.array([b.as_list() for b in crowds], dtype=np.float64)[:, None, :]
    p = np.array([b.as_list() for b in pred], dtype=np.float64)[None, :, :]
    iw = np.clip(np.minimum(c[..., 2], p[..., 2]) - np.maximum(c[..., 0], p[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(c[..., 3], p[..., 3]) - np.maximum(c[..., 1], p[..., 1]), 0.0, None)
    area = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    return np.divide(iw * ih, area, out=np.zeros_like(iw * ih), where=area > 0)


def ignored_overlap(ignored: Sequence[AnnotatedObject], pred: Sequence[Box]) -> np.ndarray:
    """Overlap of every ignored object (rows) with every predicted box: crowds by :func:`crowd_iou_matrix`,
    other ignored objects (Objects365 virtual objects, single objects) by IoU, as pycocotools does."""
    out = iou_matrix([o.box for o in ignored], pred)
    crowd = [g for g, o in enumerate(ignored) if o.crowd]
    if crowd and len(pred):
        out[crowd] = crowd_iou_matrix([ignored[g].box for g in crowd], pred)
    return out


def match_hungarian(iou: np.ndarray, threshold: float = DEFAULT_IOU_THRESHOLD) -> list[Match]:
    """One-to-one matches with IoU > threshold that maximise the summed IoU."""
    if iou.size == 0:
        return []
    # Pairs at or below the threshold are worth nothing: left in, two of them could outweigh one real match.
    rows, cols = linear_sum_assignment(np.where(iou > threshold, iou, 0.0), maximize=True)
    return [Match(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] > threshold]


def match_best(iou: np.ndarray, threshold: float = DEFAULT_IOU_THRESHOLD) -> list[Match]:
    """For every annotated box its best predicted box (many-to-one), as in the paper's formula."""
    if iou.size == 0:
        return []
    best = iou.argmax(axis=1)
    return [Match(i, int(j), float(iou[i, j])) for i, j in enumerate(best) if iou[i, j] > threshold]


def masked_iou(gt: Sequence[Box], pred: Sequence[Box], allowed: np.ndarray | None = None) -> np.ndarray:
    """:func:`iou_matrix` with the pairs ``allowed`` forbids (label disagreement) set to 0, so they never match."""
    iou = iou_matrix(gt, pred)
    if allowed is not None and iou.size:
        iou = np.where(allowed, iou, 0.0)
    return iou


def phrase_matches(
    gt: Sequence[Box], parse: ParseResult, agree: np.ndarray | None, threshold: float = DEFAULT_IOU_THRESHOLD
) -> dict[int, int]:
    """Which annotated object each boxed phrase of ``parse`` matched: phrase index -> object index.

    The one decision refinement acts on: a one-to-one Hungarian assignment over IoU > ``threshold``; with
    ``agree`` (objects x phrases, label agreement) a box only matches an object its phrase names. The scorer
    computes it once per description and keeps it in its ``Assessment``."""
    boxed = [i for i, p in enumerate(parse.phrases) if p.box is not None]
    allowed = None if agree is None else agree[:, boxed]
    return {boxed[m.pred_index]: m.gt_index for m in match_hungarian(masked_iou(gt, parse.boxes, allowed), threshold)}


def localization_score(
    gt: Sequence[Box],
    pred: Sequence[Box],
    metric: str = "hungarian",
    threshold: float = DEFAULT_IOU_THRESHOLD,
    allowed: np.ndarray | None = None,
) -> LocalizationScore:
    """S_loc in [0, 1] with the matches it rests on.

    ``allowed`` (``len(gt) x len(pred)`` booleans, see :mod:`spr_plugin.scoring.labels`) says which predicted box
    may match which annotated object: a box whose phrase names another category matches nothing, so it
    counts as a false positive under ``hungarian`` and earns nothing under ``paper``.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown localization metric {metric!r}; choose one of {', '.join(METRICS)}")
    iou = masked_iou(gt, pred, allowed)
    n_gt, n_pred = len(gt), len(pred)
    if metric == "paper":
        matches = match_best(iou, threshold)
        score = sum(m.iou for m in matches) / n_gt if n_gt else 0.0
    else:
        matches = match_hungarian(iou, threshold)
        score = 2.0 * sum(m.iou for m in matches) / (n_gt + n_pred) if (n_gt + n_pred) else 0.0
    return LocalizationScore(float(score), metric, n_gt, n_pred, tuple(matches))
