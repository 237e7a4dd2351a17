"""Localization score: IoU edge cases, and that duplicates and hallucinated boxes are not rewarded."""

import numpy as np
import pytest

from spr_plugin.core.errors import SPRError
from spr_plugin.core.records import Box
from spr_plugin.scoring.localization import iou_matrix, localization_score

GT = [Box(0, 0, 10, 10), Box(20, 20, 30, 30)]


def test_iou_matrix_values():
    iou = iou_matrix(GT, [Box(0, 0, 10, 10), Box(5, 0, 15, 10), Box(100, 100, 110, 110)])
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0], [0.0, 0.0, 0.0]])
    assert iou_matrix([], GT).shape == (0, 2)
    assert iou_matrix(GT, []).shape == (2, 0)


@pytest.mark.parametrize("metric", ["hungarian", "paper"])
def test_empty_sides_score_zero(metric):
    assert localization_score(GT, [], metric).score == 0.0
    assert localization_score([], GT, metric).score == 0.0
    assert localization_score([], [], metric).score == 0.0


@pytest.mark.parametrize("metric", ["hungarian", "paper"])
def test_perfect_boxes_score_one(metric):
    s = localization_score(GT, list(GT), metric)
    assert s.score == pytest.approx(1.0)
    assert s.precision == 1.0 and s.recall == 1.0


def test_threshold_is_strict_and_low_iou_counts_nothing():
    half = Box(0, 0, 10, 5)  # IoU exactly 0.5 with GT[0]
    assert localization_score(GT[:1], [half]).score == 0.0
    assert localization_score(GT[:1], [half], threshold=0.49).score > 0.0


def test_duplicates_are_rewarded_by_paper_but_not_by_hungarian():
    one_good = [GT[0]]
    dup = [GT[0], GT[0], GT[0]]
    paper_one, paper_dup = localization_score(GT, one_good, "paper"), localization_score(GT, dup, "paper")
    hung_one, hung_dup = localization_score(GT, one_good), localization_score(GT, dup)
    assert paper_dup.score == paper_one.score  # the paper's recall-style formula cannot see duplicates
    assert hung_dup.score < hung_one.score
    assert len(hung_dup.matches) == 1  # one-to-one


def test_hallucinated_boxes_lower_the_default_score():
    clean = localization_score(GT, list(GT))
    noisy = localization_score(GT, [*GT, Box(200, 200, 250, 250), Box(300, 0, 310, 5)])
    assert noisy.score < clean.score
    assert noisy.precision == 0.5 and noisy.recall == 1.0
    # ... while the paper's formula gives both 1.0
    assert localization_score(GT, [*GT, Box(200, 200, 250, 250)], "paper").score == pytest.approx(1.0)


def test_hungarian_prefers_the_assignment_with_highest_total_iou():
    gt = [Box(0, 0, 10, 10), Box(4, 0, 14, 10)]
    pred = [Box(2, 0, 12, 10), Box(5, 0, 15, 10)]
    s = localization_score(gt, pred)
    assert {(m.gt_index, m.pred_index) for m in s.matches} == {(0, 0), (1, 1)}


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(SPRError, match="unknown localization metric"):
        localization_score(GT, GT, "f1")
