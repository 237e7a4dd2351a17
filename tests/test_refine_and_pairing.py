"""Refinement snaps matched boxes to the annotations and ungrounds the rest; pairing picks and skips."""

import pytest

from helpers import H, W, cand, region
from spr_plugin.core.records import Box, LocalizationScore, PreferencePair, ScoredCandidate, SemanticScore
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.pairing import SKIP_IDENTICAL, SKIP_LOW_MARGIN, SKIP_TOO_FEW, length_stats, select_pair
from spr_plugin.scoring.refine import refine_candidate
from spr_plugin.settings import PairingConfig

FMT = get_box_format("qwen2_vl")


def make_pair(region, initial, refined, config=PairingConfig()):
    """The region's pair (best refined vs worst initial), or the reason it has none."""
    picked = select_pair(initial, refined, config)
    return picked if isinstance(picked, str) else PreferencePair(region, refined[picked[0]], initial[picked[1]])


def test_refine_snaps_matched_boxes_and_drops_hallucinated_ones():
    r = region()
    text = (
        f"A {FMT.render('red circle', Box(66, 50, 130, 98), W, H)} beside "
        f"{FMT.render('unicorn', Box(500, 10, 600, 100), W, H)} and "
        "<|object_ref_start|>blue square<|object_ref_end|><|box_start|>(1,2),(x<|box_end|>."
    )
    res = refine_candidate(cand(text), r, FMT, policy="strip")
    assert res.snapped == 1 and res.ungrounded == 2
    parse = FMT.parse(res.candidate.text, W, H)
    assert parse.dropped == {}
    (box,) = parse.boxes
    assert box == FMT.parse(FMT.render("x", r.objects[0].box, W, H), W, H).boxes[0]  # snapped to the GT box
    assert "unicorn" in res.candidate.text and "blue square" in res.candidate.text  # text kept, grounding gone
    assert res.candidate.key == cand(text).key


def test_refine_never_snaps_two_boxes_to_one_object():
    r = region()
    near = FMT.render("red circle", Box(65, 49, 129, 97), W, H)
    res = refine_candidate(cand(f"{near} and again {near}"), r, FMT, policy="strip")
    assert len(FMT.parse(res.candidate.text, W, H).boxes) == 1


def test_refine_with_low_iou_keeps_nothing():
    r = region()
    res = refine_candidate(cand(FMT.render("red circle", Box(64, 48, 96, 96), W, H)), r, FMT, policy="strip")  # IoU 0.5
    assert FMT.parse(res.candidate.text, W, H).boxes == []
    assert res.candidate.text == "red circle"


def _scored(text, score, refined=False, idx=0):
    return ScoredCandidate(
        cand(text, idx),
        refined,
        score,
        SemanticScore(score, {"text_region": score, "phrase_objects": score}, "t"),
        LocalizationScore(0.0, "hungarian", 2, 0, ()),
    )


def test_pair_is_best_refined_vs_worst_initial():
    r = region()
    initial = [_scored("a", 0.5, idx=0), _scored("b", 0.2, idx=1), _scored("c", 0.4, idx=2)]
    refined = [_scored("a*", 0.7, True, 0), _scored("b*", 0.3, True, 1), _scored("c*", 0.9, True, 2)]
    pair = make_pair(r, initial, refined)
    assert pair.chosen.candidate.text == "c*" and pair.rejected.candidate.text == "b"
    assert pair.margin == pytest.approx(0.7)


def test_pairs_are_skipped_with_reasons():
    r = region()
    assert make_pair(r, [_scored("a", 0.5)], [_scored("a", 0.5, True)]) == SKIP_TOO_FEW
    same = [_scored("same  text", 0.1, idx=0), _scored("other", 0.3, idx=1)]
    assert make_pair(r, same, [_scored("same text", 0.9, True)]) == SKIP_IDENTICAL
    close = [_scored("a", 0.50, idx=0), _scored("b", 0.52, idx=1)]
    assert make_pair(r, close, [_scored("a*", 0.53, True)], PairingConfig(min_margin=0.05)) == SKIP_LOW_MARGIN


def test_length_stats():
    r = region()
    pair = make_pair(
        r, [_scored("one two three", 0.1), _scored("x", 0.5, idx=1)], [_scored("one two three four five", 0.9, True)]
    )
    stats = length_stats([pair])
    assert stats["chosen_words_mean"] == 5 and stats["rejected_words_mean"] == 3 and stats["chosen_longer_fraction"] == 1.0
    assert length_stats([]) == {"pairs": 0}


def test_refined_text_keeps_no_malformed_box_debris():
    """Seen in the demo: a reference followed by coordinates without <|box_start|>, and a box with its
    corners merged. The chosen text must not teach such syntax, so refinement scrubs it."""
    r = region()
    good = FMT.render("red circle", Box(66, 50, 130, 98), W, H)
    text = (
        "TheThe region shows orange circle, "
        "<|object_ref_start|>orange square<|object_ref_end|>(966,316),(824,869)<|box_end|>, "
        f"{good} and <|object_ref_start|>blue square<|object_ref_end|>"
        "<|box_start|>(107289),(229,500)<|box_end|>,207,179<|box_end|>."
    )
    assert FMT.parse(text, W, H).dropped == {"garbage": 3}  # the merged corners and two orphan end tokens
    refined = refine_candidate(cand(text), r, FMT, policy="strip").candidate.text
    assert refined == (
        "TheThe region shows orange circle, orange square, "
        "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(100,100),(200,200)<|box_end|> and blue square."
    )
    assert FMT.parse(refined, W, H).dropped == {}


def test_scrubbed_markers_do_not_glue_words_together():
    text = (
        "The region shows <|object_ref_start|>green square<|object_ref_end|>(1,2),(3,4)<|box_end|>"
        "<|object_ref_start|>blue triangle<|object_ref_end|> ."
    )
    assert (
        refine_candidate(cand(text), region(), FMT, policy="strip").candidate.text
        == "The region shows green square blue triangle."
    )
