"""Property-based tests (hypothesis) of the box parsers and the localization score.

Model output is arbitrary text, so the parsers must never raise and must only return usable boxes;
the scorer decides which side of a pair is chosen, so its range and symmetries must hold for any input.
Example counts are fixed (``max_examples``) so CI time is bounded; run with
``--hypothesis-show-statistics`` to see what was tried (numbers recorded in docs/viewing.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spr_plugin.core.records import Box
from spr_plugin.families.box_formats import BOX_END, BOX_START, REF_END, REF_START
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.localization import iou_matrix, localization_score

FORMATS = ["qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json"]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Token soup: pieces of every syntax the parsers look for, so generated texts hit their branches
# (nested, unclosed, reversed, negative, huge and non-numeric boxes) far more often than random text.
PIECES = st.one_of(
    st.sampled_from([REF_START, REF_END, BOX_START, BOX_END, "(", ")", ",", " ", "-", ".", "e9", "nan", "inf"]),
    st.sampled_from(['{"bbox_2d": [', "]", "}", '"label": "', '"', ":", "[", "{", "<|im_end|>", "\n"]),
    st.integers(-5000, 5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)
SOUP = st.lists(PIECES, max_size=40).map("".join)
TEXTS = st.one_of(SOUP, st.text(max_size=200))
# Image sizes: anything from a thin strip to a large photo. Aspect ratios stay below 100:1: Qwen2-VL's
# own resize refuses 200:1, and LLaMA-Factory's integer pre-resize can push a ~150:1 image over that
# (see test_qwen25_frame_of_a_very_thin_image_does_not_raise below).
SIZES = st.tuples(st.integers(1, 4000), st.integers(1, 4000)).filter(lambda s: max(s) / min(s) < 100)


@pytest.mark.parametrize("name", FORMATS)
@FAST
@given(text=TEXTS, size=SIZES)
def test_any_text_parses_without_raising_into_valid_boxes(name, text, size):
    width, height = size
    fmt = get_box_format(name)
    result = fmt.parse(text, width, height)
    for box in result.boxes:
        assert box.area > 0
        assert 0 <= box.x1 < box.x2 <= width + 1e-6 and 0 <= box.y1 < box.y2 <= height + 1e-6
    assert all(v > 0 for v in result.dropped.values())
    fmt.plain_text(text, width, height)  # text-only scorers use this on the same text


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl"])
@FAST
@given(text=TEXTS, size=SIZES)
def test_cleaned_text_has_only_well_formed_grounding(name, text, size):
    """What refinement writes into chosen texts: every marker left belongs to a unit that parses."""
    width, height = size
    fmt = get_box_format(name)
    cleaned = fmt.clean(text, width, height)
    again = fmt.parse(cleaned, width, height)
    assert again.dropped == {}
    assert all(p.box is not None for p in again.phrases)
    assert cleaned.count(BOX_START) == cleaned.count(BOX_END) == len(again.boxes)
    assert fmt.clean(cleaned, width, height) == cleaned  # idempotent


@st.composite
def image_and_box(draw, min_units: float = 2.0):
    """An image size and a box at least ``min_units`` frame units wide and high (thinner ones may round
    to zero area, which the parser rightly drops)."""
    width, height = draw(SIZES)
    x1 = draw(st.floats(0, width, allow_nan=False))
    y1 = draw(st.floats(0, height, allow_nan=False))
    x2 = draw(st.floats(x1, width, allow_nan=False))
    y2 = draw(st.floats(y1, height, allow_nan=False))
    return width, height, Box(x1, y1, x2, y2), min_units


@pytest.mark.parametrize("name", FORMATS)
@FAST
@given(case=image_and_box(), label=st.text(alphabet=st.characters(blacklist_characters='<>|{}"\\'), max_size=20))
def test_render_then_parse_round_trips_within_one_grid_unit(name, case, label):
    width, height, box, min_units = case
    fmt = get_box_format(name)
    fw, fh = fmt.frame_size(width, height)
    ux, uy = width / fw, height / fh  # one frame unit in pixels
    assume(box.width >= min_units * ux and box.height >= min_units * uy)
    result = fmt.parse("The region shows " + fmt.render(label, box, width, height) + ".", width, height)
    assert result.dropped == {}
    (got,) = result.boxes
    assert result.phrases[0].label == label.strip()
    # Rounding to the grid costs half a unit; the last grid value (999 of [0,1000)) one unit.
    for g, w, unit in zip(got.as_list(), box.as_list(), (ux, uy, ux, uy)):
        assert abs(g - w) <= unit + 1e-6 * max(width, height)


def test_qwen25_frame_of_a_very_thin_image_does_not_raise():
    fmt = get_box_format("qwen2_5_vl")
    fmt.parse(BOX_START + "(0,0),(1,10)" + BOX_END, 1, 158)


BOXES = st.builds(
    lambda x, y, w, h: Box(x, y, x + w, y + h),
    st.integers(0, 200),
    st.integers(0, 200),
    st.integers(1, 120),
    st.integers(1, 120),
)
BOX_LISTS = st.lists(BOXES, max_size=7)
METRICS = ["hungarian", "paper"]


@pytest.mark.parametrize("metric", METRICS)
@FAST
@given(gt=BOX_LISTS, pred=BOX_LISTS, threshold=st.sampled_from([0.0, 0.3, 0.5, 0.75]))
def test_localization_score_is_in_unit_range_with_valid_matches(metric, gt, pred, threshold):
    s = localization_score(gt, pred, metric, threshold)
    assert 0.0 <= s.score <= 1.0 + 1e-9
    assert (s.n_gt, s.n_pred) == (len(gt), len(pred))
    iou = iou_matrix(gt, pred)
    for m in s.matches:
        assert m.iou > threshold and abs(iou[m.gt_index, m.pred_index] - m.iou) < 1e-9
    if metric == "hungarian":  # one-to-one
        assert len({m.gt_index for m in s.matches}) == len({m.pred_index for m in s.matches}) == len(s.matches)


@pytest.mark.parametrize("metric", METRICS)
@MEDIUM
@given(gt=BOX_LISTS, pred=BOX_LISTS, seed=st.integers(0, 2**32 - 1))
def test_localization_score_ignores_the_order_of_boxes(metric, gt, pred, seed):
    rng = np.random.default_rng(seed)
    base = localization_score(gt, pred, metric).score
    shuffled_pred = [pred[i] for i in rng.permutation(len(pred))]
    shuffled_gt = [gt[i] for i in rng.permutation(len(gt))]
    assert localization_score(gt, shuffled_pred, metric).score == pytest.approx(base, abs=1e-9)
    assert localization_score(shuffled_gt, pred, metric).score == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("metric", METRICS)
@MEDIUM
@given(gt=st.lists(BOXES, min_size=1, max_size=7), seed=st.integers(0, 2**32 - 1))
def test_predicting_exactly_the_annotations_scores_one(metric, gt, seed):
    order = np.random.default_rng(seed).permutation(len(gt))
    assert localization_score(gt, [gt[i] for i in order], metric).score == pytest.approx(1.0)


@MEDIUM
@given(gt=BOX_LISTS, pred=BOX_LISTS)
def test_hungarian_matched_iou_never_exceeds_the_papers(gt, pred):
    """Provable: each annotated object's one-to-one matched IoU is at most its best IoU, so the matched
    IoU sum of the hungarian metric is bounded by the paper's sum; and its soft F1 by 2·min(n)/(n_gt+n_pred)."""
    h = localization_score(gt, pred, "hungarian")
    p = localization_score(gt, pred, "paper")
    assert sum(m.iou for m in h.matches) <= sum(m.iou for m in p.matches) + 1e-9
    if gt or pred:
        assert h.score <= 2 * min(len(gt), len(pred)) / (len(gt) + len(pred)) + 1e-9


@MEDIUM
@given(gt=st.lists(BOXES, min_size=1, max_size=7), pred=BOX_LISTS)
def test_a_hallucinated_box_far_away_lowers_hungarian_and_leaves_paper_unchanged(gt, pred):
    far = Box(10_000, 10_000, 10_050, 10_050)
    for metric in METRICS:
        before = localization_score(gt, pred, metric).score
        after = localization_score(gt, [*pred, far], metric).score
        if metric == "paper":
            assert after == pytest.approx(before, abs=1e-12)  # recall-only: extra boxes cost nothing
        else:
            assert after <= before + 1e-12


def test_hungarian_keeps_a_match_above_the_threshold_when_one_exists():
    # 1-D overlaps (all boxes 100 high): gt0-pred0 IoU 0.6; gt0-pred1 and gt1-pred0 IoU 62/138 = 0.449.
    # Raw IoU is maximised by the two 0.449 pairs (0.9 > 0.6), both below 0.5, so nothing matches.
    gt0, gt1 = Box(0, 0, 100, 100), Box(63, 0, 163, 100)
    pred0, pred1 = Box(25, 0, 125, 100), Box(-38, 0, 62, 100)
    iou = iou_matrix([gt0, gt1], [pred0, pred1])
    assert iou[0, 0] == pytest.approx(0.6) and iou[0, 1] < 0.5 and iou[1, 0] < 0.5 and iou[1, 1] == 0
    assert localization_score([gt0, gt1], [pred0, pred1], "hungarian").matches
