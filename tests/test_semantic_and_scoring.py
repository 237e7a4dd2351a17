"""Semantic score with the real MiniLM model, and the combined score S = λ·S_sem + (1-λ)·S_loc."""

import pytest

from helpers import H, W, cand, region
from spr_plugin.core.errors import SPRError
from spr_plugin.core.records import Box
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.scorer import CandidateScorer
from spr_plugin.scoring.semantic import TextSemanticScorer, region_reference_text
from spr_plugin.settings import ScoringConfig

FMT = get_box_format("qwen2_vl")


@pytest.fixture(scope="module")
def text_scorer():
    return TextSemanticScorer.load()


def test_reference_text_counts_objects():
    r = region(boxes=((0, 0, 10, 10), (20, 20, 30, 30), (40, 40, 50, 50)), cats=("dog", "dog", "frisbee"))
    assert region_reference_text(r) == "a region with 2 dog and a frisbee"


def test_naming_present_objects_outranks_naming_absent_ones(text_scorer):
    r = region(cats=("dog", "frisbee"))
    good = ("A dog jumps to catch a frisbee.", ["dog", "frisbee"])
    bad = ("A laptop sits on an office desk.", ["laptop", "desk"])
    s_good, s_bad = text_scorer.score_batch([(r, *good), (r, *bad)])
    assert s_good.score > s_bad.score + 0.2
    assert s_good.text_region > s_bad.text_region and s_good.phrase_objects > s_bad.phrase_objects
    for s in (s_good, s_bad):
        assert 0.0 <= s.text_region <= 1.0 and 0.0 <= s.phrase_objects <= 1.0


def test_empty_description_scores_zero(text_scorer):
    (s,) = text_scorer.score_batch([(region(), "", [])])
    assert s.score == 0.0


def test_combined_score_weights_and_parts(text_scorer):
    r = region()
    good = cand(
        f"The region shows {FMT.render('red circle', r.objects[0].box, W, H)} and "  # noqa: ISC003
        + f"{FMT.render('blue square', r.objects[1].box, W, H)}."
    )
    wrong_boxes = cand(
        f"The region shows {FMT.render('red circle', Box(500, 400, 600, 470), W, H)} and "
        f"{FMT.render('blue square', Box(0, 300, 50, 350), W, H)}.",
        idx=1,
    )
    for lam in (0.0, 0.8, 1.0):
        scorer = CandidateScorer(ScoringConfig(lam=lam), text_scorer)
        s_good, s_wrong = scorer.score([(r, good), (r, wrong_boxes)])
        for s in (s_good, s_wrong):
            assert s.score == pytest.approx(lam * s.semantic.score + (1 - lam) * s.localization.score)
        assert s_good.localization.score == pytest.approx(1.0, abs=0.01) and s_wrong.localization.score == 0.0
        assert s_good.semantic.score == pytest.approx(s_wrong.semantic.score)  # same words
        if lam < 1.0:
            assert s_good.score > s_wrong.score


def test_parse_failures_are_kept_with_the_score(text_scorer):
    scorer = CandidateScorer(ScoringConfig(), text_scorer)
    (s,) = scorer.score([(region(), cand("A <|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(3"))])
    assert s.parse_dropped == {"truncated": 1}
    assert s.localization.n_pred == 0


@pytest.mark.parametrize("kwargs", [{"lam": 1.5}, {"loc_metric": "f1"}, {"iou_threshold": 1.0}])
def test_bad_scoring_config_is_a_clear_error(kwargs):
    with pytest.raises(SPRError):
        ScoringConfig(**kwargs)


def test_refinement_keeps_the_semantic_score_and_recomputes_localization(text_scorer):
    from spr_plugin.scoring.refine import refine_candidate

    r = region()
    text = (
        f"A {FMT.render('red circle', Box(66, 50, 130, 98), W, H)} and "
        f"{FMT.render('blue square', Box(0, 300, 50, 350), W, H)}."  # wrong box: will be ungrounded
    )
    scorer = CandidateScorer(ScoringConfig(), text_scorer)
    (assessed,) = scorer.assess([(r, cand(text))])
    initial = assessed.scored
    refined_cand = refine_candidate(cand(text), r, FMT, policy="strip").candidate
    (refined,) = [a.scored for a in scorer.assess_refined([(assessed, refined_cand, False)])]
    assert refined.refined and not initial.refined
    assert refined.semantic == initial.semantic  # words unchanged: S_sem is the initial text's
    assert refined.localization.n_pred == 1 and refined.localization.score > initial.localization.score
    assert refined.score > initial.score
