"""Metrics and paired statistics of the effect study (pure: answers in, numbers out; no model, no I/O).

Every metric is a ratio of sums over evaluation items (``num / den``), so one item is one row of
numbers and a bootstrap replicate is a weighted sum of rows: thousands of replicates cost one matrix
product. Items are held-out images (one REC item per REC scene, one query region per region scene),
so resampling items is the cluster bootstrap over images the issue asks for.

Why both a bootstrap and a t-interval: the bootstrap over images measures how much the numbers
would move with other test scenes; the t-interval over training seeds measures how much they move
with another DPO run. An effect counts only if both 95% intervals exclude 0 and at least 80% of the
seeds (4 of 5) agree in sign.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from spr_plugin.core.records import Box, Region
from spr_plugin.evaluation.metrics import box_iou
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.scoring.labels import names_agree
from spr_plugin.scoring.localization import iou_matrix, match_hungarian

REC_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
REGION_THRESHOLDS: tuple[float, ...] = (0.5, 0.75, 0.9)


# ------------------------------------------------------------------------------------ per item


def rec_row(answer: str, gt: Box, width: int, height: int, fmt: BoxFormat) -> dict[str, float]:
    """One REC answer: the first parsed box is the prediction (an answer without one has IoU 0)."""
    boxes = fmt.parse(answer, width, height).boxes
    iou = box_iou(boxes[0], gt) if boxes else 0.0
    row = {f"rec_hit@{t:g}": float(iou >= t) for t in REC_THRESHOLDS}
    row |= {
        "rec_iou": iou,
        "rec_unparseable": float(not boxes),
        "rec_parsed": float(bool(boxes)),
        "rec_area_ratio": (boxes[0].area / gt.area) if boxes else 0.0,
    }
    return row


def region_row(answer: str, region: Region, fmt: BoxFormat) -> dict[str, float]:
    """One region description: boxes matched one-to-one (Hungarian) to the region's objects at each threshold."""
    parse = fmt.parse(answer, region.width, region.height)
    grounded = [p for p in parse.phrases if p.box is not None]
    gt = list(region.objects)
    iou = iou_matrix([o.box for o in gt], [p.box for p in grounded])
    row: dict[str, float] = {"n_gt": float(len(gt)), "n_pred": float(len(grounded))}
    matches = {t: match_hungarian(iou, t - 1e-9) for t in REGION_THRESHOLDS}  # it keeps IoU > t: count IoU >= t
    for t, found in matches.items():
        row[f"matched@{t:g}"] = float(len(found))
    at_half = matches[0.5]
    row["matched_iou_sum"] = float(sum(m.iou for m in at_half))
    row["label_ok"] = float(sum(names_agree(grounded[m.pred_index].label, [gt[m.gt_index].category]) for m in at_half))
    row["ungrounded"] = float(sum(1 for p in parse.phrases if p.box is None))
    row["one"] = 1.0
    return row


# ------------------------------------------------------------------------------------ metrics as ratios


@dataclass(frozen=True)
class Ratio:
    num: str
    den: str


def metric_defs() -> dict[str, Ratio | tuple[str, str]]:
    """Metric name -> ratio of two row columns, or (precision, recall) names for an F1."""
    d: dict[str, Ratio | tuple[str, str]] = {}
    for t in REC_THRESHOLDS:
        d[f"rec_acc@{t:g}"] = Ratio(f"rec_hit@{t:g}", "one")
    d |= {
        "rec_miou": Ratio("rec_iou", "one"),
        "rec_unparseable": Ratio("rec_unparseable", "one"),
        "rec_box_area_ratio": Ratio("rec_area_ratio", "rec_parsed"),  # predicted / true box area, parsed answers
    }
    for t in REGION_THRESHOLDS:
        d[f"region_precision@{t:g}"] = Ratio(f"matched@{t:g}", "n_pred")
        d[f"region_recall@{t:g}"] = Ratio(f"matched@{t:g}", "n_gt")
        d[f"region_f1@{t:g}"] = (f"region_precision@{t:g}", f"region_recall@{t:g}")
    d |= {
        "region_matched_miou": Ratio("matched_iou_sum", "matched@0.5"),
        "region_boxes_per_answer": Ratio("n_pred", "one"),
        "region_ungrounded_per_answer": Ratio("ungrounded", "one"),
        "region_label_acc": Ratio("label_ok", "matched@0.5"),
    }
    return d


def _columns(rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    keys = {k for r in rows for k in r}
    return {k: np.array([r.get(k, 0.0) for r in rows], dtype=np.float64) for k in keys} | {"one": np.ones(len(rows))}


def weighted_metrics(cols: Mapping[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric under item weights ``weights`` (shape ``(B, n)``; a row of ones is the plain estimate)."""
    sums = {k: weights @ v for k, v in cols.items()}
    out: dict[str, np.ndarray] = {}
    defs = metric_defs()
    for name, d in defs.items():
        if isinstance(d, Ratio) and d.num in sums and d.den in sums:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = np.where(sums[d.den] > 0, sums[d.num] / np.maximum(sums[d.den], 1e-12), 0.0)
    for name, d in defs.items():
        if isinstance(d, tuple) and d[0] in out:
            p, r = out[d[0]], out[d[1]]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return out


def metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The plain (unweighted) metrics of one model's rows."""
    if not rows:
        return {}
    return {k: float(v[0]) for k, v in weighted_metrics(_columns(rows), np.ones((1, len(rows)))).items()}


def model_metrics(rec_rows: Sequence[Mapping[str, float]], region_rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Every metric of one model: the REC ones from its REC rows, the region ones from its region rows (a metric
    needs its columns, so neither kind of row yields the other's metrics)."""
    return metrics(rec_rows) | metrics(region_rows)


# ------------------------------------------------------------------------------------ paired comparisons


@dataclass(frozen=True)
class Comparison:
    arm: str
    vs: str
    metric: str
    delta: float
    ci95: tuple[float, float]  # cluster bootstrap over images, seeds averaged in every replicate
    ci95_seeds: tuple[float, float] | None  # t-interval over per-seed deltas (None with one seed)
    seeds_same_sign: int
    n_seeds: int

    @property
    def effect(self) -> bool:
        """Both intervals exclude 0 on the same side and >= 80% of the seeds agree in sign."""
        lo, hi = self.ci95
        if self.ci95_seeds is None or not (lo > 0 or hi < 0):
            return False
        slo, shi = self.ci95_seeds
        same_side = (lo > 0 and slo > 0) or (hi < 0 and shi < 0)
        return same_side and self.seeds_same_sign >= math.ceil(0.8 * self.n_seeds)

    def to_dict(self) -> dict[str, object]:
        return {
            "arm": self.arm,
            "vs": self.vs,
            "metric": self.metric,
            "delta": round(self.delta, 5),
            "ci95": [round(x, 5) for x in self.ci95],
            "ci95_seeds": None if self.ci95_seeds is None else [round(x, 5) for x in self.ci95_seeds],
            "seeds_same_sign": self.seeds_same_sign,
            "n_seeds": self.n_seeds,
            "effect": self.effect,
        }


def compare(
    arm: str,
    arm_rows: Sequence[Sequence[Mapping[str, float]]],
    vs: str,
    ref_rows: Sequence[Sequence[Mapping[str, float]]],
    metric_names: Sequence[str],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[Comparison]:
    """Paired comparison of ``arm`` (rows per seed) with ``vs`` (rows per seed, or one base) on the same items.

    ``delta`` = mean over the arm's seeds of metric(arm seed) - mean over the reference's seeds of metric(ref).
    Rows must be aligned item by item (same test items, same order) in every seed of both sides.
    """
    n = len(arm_rows[0])
    if any(len(r) != n for r in [*arm_rows, *ref_rows]):
        raise ValueError("rows are not aligned: every seed of both arms must cover the same items")
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)])
    arm_m = [weighted_metrics(_columns(r), weights) for r in arm_rows]
    ref_m = [weighted_metrics(_columns(r), weights) for r in ref_rows]
    out = []
    for m in metric_names:
        if any(m not in x for x in (*arm_m, *ref_m)):
            continue  # rows without the columns this metric needs
        a = np.mean([x[m] for x in arm_m], axis=0)
        b = np.mean([x[m] for x in ref_m], axis=0)
        boot = (a - b)[1:]
        delta = float(a[0] - b[0])
        ref0 = float(np.mean([x[m][0] for x in ref_m]))
        per_seed = np.array([x[m][0] - ref0 for x in arm_m])
        k = len(per_seed)
        ci_seeds = None
        if k >= 2:
            half = float(student_t.ppf(0.975, k - 1)) * float(per_seed.std(ddof=1)) / math.sqrt(k)
            ci_seeds = (float(per_seed.mean() - half), float(per_seed.mean() + half))
        sign = np.sign(delta) if delta != 0 else 1.0
        out.append(
            Comparison(
                arm=arm,
                vs=vs,
                metric=m,
                delta=delta,
                ci95=(float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
                ci95_seeds=ci_seeds,
                seeds_same_sign=int(np.sum(np.sign(per_seed) == sign)),
                n_seeds=k,
            )
        )
    return out


def curve_with_ci(
    seed_rows: Sequence[Sequence[Mapping[str, float]]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """REC accuracy against the IoU threshold (seed mean) with a 95% bootstrap band, for the plot."""
    n = len(seed_rows[0])
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)])
    ms = [weighted_metrics(_columns(r), weights) for r in seed_rows]
    mean, lo, hi = [], [], []
    for t in REC_THRESHOLDS:
        v = np.mean([m[f"rec_acc@{t:g}"] for m in ms], axis=0)
        mean.append(float(v[0]))
        lo.append(float(np.percentile(v[1:], 2.5)))
        hi.append(float(np.percentile(v[1:], 97.5)))
    return {"thresholds": list(REC_THRESHOLDS), "mean": mean, "lo": lo, "hi": hi}
