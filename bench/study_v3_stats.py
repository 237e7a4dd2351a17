"""Statistics of effect study v3 (issue #21): base variance inside the intervals (pure; rows in, numbers out).

v2 had one base, so no interval said how much the result would move with another base, and the seed
interval of an arm compared with another trained arm ignored the reference's own seed variance. v3
compares runs grouped by base: ``rows[base][seed]`` is one run's per-item rows (the same test items, in
the same order, in every run; see bench/study_stats.py for the rows and metrics, reused unchanged).

* ``ci95`` - a **hierarchical bootstrap** (bases, then training seeds within each drawn base, then test
  images, shared by all runs of a replicate because every run answers the same images): the delta is
  the mean over drawn bases of (mean of the drawn arm seeds - mean of the drawn reference seeds).
* ``ci95_seeds`` - a **Welch** t-interval between the arm's runs and the reference's runs (a run is one
  (base, seed); the base's own SFT model is the reference's one run on that base), so the reference's
  run-to-run variance and the base-to-base variance both widen it. With a single reference run in all
  (one base, one model) it is the one-sample t-interval v2 used.
* ``effect`` - the rule of v2, unchanged and fixed before any v3 run (docs/effect_study/v3_plan.md):
  both intervals exclude 0 on the same side and at least 80% of the arm's runs differ from their own
  base's reference mean with the sign of ``delta``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import t as student_t
from study_stats import Comparison, _columns, weighted_metrics

Rows = Sequence[Mapping[str, float]]
Runs = Mapping[int, Mapping[int, Rows]]  # base seed -> training seed -> rows


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """95% Welch-Satterthwaite interval of mean(a) - mean(b); one-sample t if ``b`` has one value; None if
    neither side has a spread to estimate (fewer than 2 values in ``a`` and in ``b``)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean())
    va = a.var(ddof=1) / len(a) if len(a) >= 2 else 0.0
    vb = b.var(ddof=1) / len(b) if len(b) >= 2 else 0.0
    if len(a) < 2 and len(b) < 2:
        return None
    se2 = va + vb
    if se2 == 0:
        return (d, d)
    num = se2**2
    den = (va**2 / (len(a) - 1) if len(a) >= 2 else 0.0) + (vb**2 / (len(b) - 1) if len(b) >= 2 else 0.0)
    df = num / den
    half = float(student_t.ppf(0.975, df)) * math.sqrt(se2)
    return (d - half, d + half)


def _run_metrics(runs: Runs, weights: np.ndarray) -> dict[int, list[dict[str, np.ndarray]]]:
    """base -> per training seed (sorted), every metric under every weight vector (computed once per run)."""
    return {base: [weighted_metrics(_columns(seeds[s]), weights) for s in sorted(seeds)] for base, seeds in runs.items()}


def _stack(runs: dict[int, list[dict[str, np.ndarray]]], metric: str) -> dict[int, np.ndarray]:
    """base -> array (n_seeds, n_weights) of ``metric``; empty if a run lacks the columns it needs."""
    if any(metric not in m for ms in runs.values() for m in ms):
        return {}
    return {b: np.vstack([m[metric] for m in ms]) for b, ms in runs.items()}


def hierarchical_compare(
    arm: str, arm_runs: Runs, vs: str, ref_runs: Runs, metric_names: Sequence[str], *, n_boot: int = 2000, seed: int = 0
) -> list[Comparison]:
    """Paired comparison of ``arm`` with ``vs`` over bases, training seeds and images (module docstring).

    Only bases both sides ran on are compared; rows must be aligned item by item in every run.
    """
    bases = sorted(set(arm_runs) & set(ref_runs))
    if not bases:
        raise ValueError(f"{arm} and {vs} share no base")
    all_rows = [r for b in bases for side in (arm_runs, ref_runs) for r in side[b].values()]
    n = len(all_rows[0])
    if any(len(r) != n for r in all_rows):
        raise ValueError("rows are not aligned: every run of both arms must cover the same items")
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)])
    a_runs = {b: arm_runs[b] for b in bases}
    r_runs = {b: ref_runs[b] for b in bases}
    # the bootstrap's draws of bases and seeds, the same for every metric
    draw_b = rng.integers(0, len(bases), size=(n_boot, len(bases)))
    draws_a = {b: rng.integers(0, len(a_runs[b]), size=(n_boot, len(a_runs[b]))) for b in bases}
    draws_r = {b: rng.integers(0, len(r_runs[b]), size=(n_boot, len(r_runs[b]))) for b in bases}
    a_all, r_all = _run_metrics(a_runs, weights), _run_metrics(r_runs, weights)
    out = []
    for m in metric_names:
        am, rm = _stack(a_all, m), _stack(r_all, m)
        if not am or not rm:
            continue
        # point estimate: mean over bases of (arm seed mean - ref seed mean)
        per_base = {b: am[b][:, 0].mean() - rm[b][:, 0].mean() for b in bases}
        delta = float(np.mean(list(per_base.values())))
        reps = np.arange(1, n_boot + 1)
        base_delta = np.zeros((n_boot, len(bases)))
        for j, b in enumerate(bases):
            a_pick = am[b][draws_a[b], reps[:, None]].mean(axis=1)  # (n_boot,)
            r_pick = rm[b][draws_r[b], reps[:, None]].mean(axis=1)
            base_delta[:, j] = a_pick - r_pick
        boot = np.take_along_axis(base_delta, draw_b, axis=1).mean(axis=1)
        a_vals = [float(v) for b in bases for v in am[b][:, 0]]
        r_vals = [float(v) for b in bases for v in rm[b][:, 0]]
        # runs' differences from their own base's reference mean (the sign count)
        diffs = np.array([float(v) - rm[b][:, 0].mean() for b in bases for v in am[b][:, 0]])
        sign = np.sign(delta) if delta != 0 else 1.0
        out.append(
            Comparison(
                arm=arm,
                vs=vs,
                metric=m,
                delta=delta,
                ci95=(float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
                ci95_seeds=welch_interval(a_vals, r_vals) if len(a_vals) >= 2 else None,
                seeds_same_sign=int(np.sum(np.sign(diffs) == sign)),
                n_seeds=len(a_vals),
            )
        )
    return out


def blind_region_answer(region_box, names: Sequence[str], fmt, width: int, height: int) -> str:
    """The blind baseline's answer: the prompt's region box split into equal vertical strips, one per name
    (the ground-truth names, so the baseline is generous: region metrics match boxes by IoU only).

    Why: v2's prompt box was exactly the union of the two objects, so halving it matched the base's region F1
    without looking at the image. Every region metric is reported next to this baseline.
    """
    from spr_plugin.core.records import Box
    from spr_plugin.demo.warmup import grounded_answer

    x1, y1, x2, y2 = region_box.x1, region_box.y1, region_box.x2, region_box.y2
    k = max(1, len(names))
    step = (x2 - x1) / k
    parts = []
    for i, name in enumerate(names):
        bx = Box(x1 + i * step, y1, x1 + (i + 1) * step, y2)
        parts.append(fmt.render(name, bx, width, height))
    return grounded_answer(parts)
