"""What the annotations cannot judge never counts against a description: a box whose phrase names an LVIS
not-exhaustive category, or a box on an ignored object (crowd, Objects365 isfake/isreflected), is left out of
S_loc. Scored with the real scorer (MiniLM, label matching on); the LVIS sample goes through a real build."""

from __future__ import annotations

from dataclasses import replace

import pytest
from formats_factory import write_lvis

from helpers import H, W
from spr_plugin.cli import main
from spr_plugin.core.records import AnnotatedObject, Box, Candidate, Region
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.scorer import CandidateScorer
from spr_plugin.scoring.semantic import TextSemanticScorer
from spr_plugin.settings import ScoringConfig

FMT = get_box_format("qwen2_vl")
OBJECTS = (
    AnnotatedObject(1, "aerosol can", Box(20, 20, 120, 120), ("spray can",)),
    AnnotatedObject(2, "bat (animal)", Box(200, 20, 300, 120)),
)
BANANA = Box(400, 200, 500, 300)  # a real banana LVIS did not label


@pytest.fixture(scope="module")
def scorer():
    return CandidateScorer(ScoringConfig(), TextSemanticScorer.load())


def _region(**kw) -> Region:
    base = Region("397133_0", 397133, "/nonexistent.jpg", W, H, Box(20, 20, 300, 120), OBJECTS, 1)
    return replace(base, **kw)


def _text(*units) -> str:
    return "I see " + ", ".join(FMT.render(label, box, W, H) for label, box in units) + "."


RIGHT = [("aerosol can", OBJECTS[0].box), ("bat", OBJECTS[1].box)]


def _loc(scorer, region, text):
    return scorer.score([(region, Candidate(region.region_id, "t", 0, text))])[0].localization


def test_a_box_on_a_not_exhaustive_category_costs_nothing(scorer):
    text = _text(*RIGHT, ("banana", BANANA))
    plain = _loc(scorer, _region(), text)
    lvis = _loc(scorer, _region(not_exhaustive=("banana",)), text)
    assert plain.n_pred == 3 and plain.score < 0.99  # counted as a false positive without the LVIS list
    assert lvis.n_pred == 2 and lvis.n_neutral == 1 and lvis.score > 0.99  # grid rounding only
    assert lvis.score == pytest.approx(_loc(scorer, _region(), _text(*RIGHT)).score)  # as if the box were not there
    assert sorted(m.pred_index for m in lvis.matches) == [0, 1]  # indices still point at the description's boxes


def test_plurals_and_synonyms_of_not_exhaustive_names_count_too(scorer):
    region = _region(not_exhaustive=("banana", "spray can"))
    assert _loc(scorer, region, _text(*RIGHT, ("two bananas", BANANA))).n_neutral == 1
    assert _loc(scorer, region, _text(*RIGHT, ("spray can", BANANA))).n_neutral == 1


def test_other_wrong_boxes_still_count(scorer):
    region = _region(not_exhaustive=("banana",))
    hallucinated = _loc(scorer, region, _text(*RIGHT, ("zebra", BANANA)))
    assert hallucinated.n_neutral == 0 and hallucinated.n_pred == 3
    # a category LVIS verified absent is never excused, even if it is also listed as not exhaustive
    absent = _loc(scorer, _region(not_exhaustive=("banana",), absent=("banana",)), _text(*RIGHT, ("banana", BANANA)))
    assert absent.n_neutral == 0 and absent.n_pred == 3


def test_a_box_on_an_ignored_object_is_neutral_only_if_it_names_it(scorer):
    crowd = AnnotatedObject(9, "person", Box(380, 180, 520, 320))
    region = _region(ignored=(crowd,))
    assert _loc(scorer, region, _text(*RIGHT, ("a person", BANANA))).n_neutral == 1
    bare_text = "I see " + FMT.render("aerosol can", OBJECTS[0].box, W, H) + ", and something at " + FMT.render_box(BANANA, W, H)
    bare = _loc(scorer, region, bare_text)
    assert bare.n_neutral == 1  # a bare box agrees with any object, like everywhere else
    assert _loc(scorer, region, _text(*RIGHT, ("giraffe", BANANA))).n_neutral == 0
    far = Box(600, 400, 630, 430)
    assert _loc(scorer, region, _text(*RIGHT, ("person", far))).n_neutral == 0  # not on the crowd


def test_lvis_lists_flow_from_the_json_through_regions_jsonl_into_scoring(tmp_path, scorer):
    from spr_plugin.regions.sampling import read_regions

    ann, coco_root = write_lvis(tmp_path)
    out = tmp_path / "regions.jsonl"
    assert main(["regions", "--annotations", str(ann), "--images", str(coco_root), "--out", str(out), "--k", "4"]) == 0
    region = next(r for r in read_regions(out) if r.image_id == 397133)
    assert region.not_exhaustive == ("banana",)
    units = [(o.category, o.box) for o in region.objects]
    text = _text(*units, ("bananas", Box(280, 180, 310, 230)))
    loc = _loc(scorer, region, text)
    assert loc.n_neutral == 1 and loc.score == pytest.approx(_loc(scorer, region, _text(*units)).score)
    other = next(r for r in read_regions(out) if r.image_id == 155379)  # banana is exhaustive there: it counts
    assert (
        _loc(scorer, other, _text(*[(o.category, o.box) for o in other.objects], ("bananas", Box(280, 180, 310, 230)))).n_neutral
        == 0
    )


@pytest.mark.parametrize("policy", ["strip", "correct", "drop"])
def test_refinement_keeps_a_box_the_annotations_cannot_judge(scorer, policy):
    """The chosen answer must not lose a right box on an object LVIS did not label (nor may a wrong box stay)."""
    from spr_plugin.scoring.refine import refine

    text = _text(*RIGHT, ("banana", BANANA), ("unicorn", Box(500, 350, 600, 450)))
    (a,) = scorer.assess([(_region(not_exhaustive=("banana",)), Candidate("397133_0", "t", 0, text))])
    assert [a.parse.phrases[i].label for i in a.neutral] == ["banana"]
    out = refine(a.candidate, a.region, a.parse, a.agree, a.matches, FMT, policy, a.neutral).candidate.text
    labels = [p.label for p in FMT.parse(out, W, H).phrases if p.box is not None]
    assert labels == ["aerosol can", "bat", "banana"]
