"""Issue #22: chosen answers teach only what the annotations support, statistics tell what the emitted strings
hold, warnings are true for the settings in force, crowds are scored as pycocotools scores them.

Hand-made candidates go through the build's own stage (:func:`spr_plugin.scoring.stage.score_refine_pair`) with
the real text scorer; texts are measured with the one public measurement, :func:`spr_plugin.scoring.mentions.describe`.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import replace

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from helpers import H, W, cand
from spr_plugin.core.records import AnnotatedObject, Box, Candidate, Region
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.mentions import ABSENT, IMAGE, REGION, UNJUDGED, Vocabulary, describe
from spr_plugin.scoring.refine import refine_candidate
from spr_plugin.scoring.scorer import CandidateScorer
from spr_plugin.scoring.semantic import TextSemanticScorer
from spr_plugin.scoring.stage import LOW_LOCALIZATION_MIN_PAIRS, quality_warnings, score_refine_pair
from spr_plugin.settings import PairingConfig, ScoringConfig

FORMATS = ("qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json")
SHAPES = [f"{c} {s}" for c in ("red", "blue", "green", "yellow", "purple", "orange") for s in ("circle", "square", "triangle")]
VOCAB = Vocabulary.of([*SHAPES, "dog", "person", "Cabinet/shelf", "baseball_bat", "bat_(animal)"])


@pytest.fixture(scope="module")
def minilm():
    return TextSemanticScorer.load()


def shape_region(rid: str, seed: int, n: int = 3, elsewhere: tuple[str, ...] = ("dog",)) -> Region:
    """``n`` shapes in a row; the image also holds ``elsewhere`` outside the region; every other name is absent."""
    rng = random.Random(seed)
    cats = rng.sample(SHAPES, n)
    objs = []
    for i, cat in enumerate(cats):
        x, y = 30 + i * 150, 60 + rng.randint(0, 150)
        objs.append(AnnotatedObject(i + 1, cat, Box(x, y, x + 100, y + 90)))
    union = objs[0].box
    for o in objs[1:]:
        union = union.union(o.box)
    return Region(rid, seed, "/nonexistent.jpg", W, H, union, tuple(objs), 1, in_image=(*cats, *elsewhere))


def absent_names(region: Region, k: int) -> list[str]:
    present = set(region.in_image)
    return [c for c in SHAPES if c not in present][:k]


def _shift(b: Box, f: float) -> Box:
    return Box(b.x1 + f * b.width, b.y1, b.x2 + f * b.width, b.y2)


def grounded(fmt, region: Region, shift: float = 0.0) -> str:
    return ", ".join(fmt.render(o.category, _shift(o.box, shift), W, H) for o in region.objects)


def _run(regions, texts, scorer, policy="correct"):
    cands = [Candidate(r.region_id, "hand", i, t) for r, ts in zip(regions, texts) for i, t in enumerate(ts)]
    return score_refine_pair(regions, cands, scorer, PairingConfig(min_margin=0.0, refine_policy=policy), progress=False)


# -- 1. chosen texts hold neither hallucinated names nor debris, for each box format ------------------------------------


@pytest.mark.parametrize("policy", ["correct", "strip", "drop"])
@pytest.mark.parametrize("name", FORMATS)
def test_fully_grounded_candidates_that_hallucinate_or_end_in_debris_give_clean_chosen_texts(minilm, name, policy):
    fmt = get_box_format(name)
    regions = [shape_region(f"r{i}", i) for i in range(4)]
    texts = []
    for r in regions:
        a, b = absent_names(r, 2)
        texts.append(
            [
                # every fully grounded candidate names absent objects in plain words or ends in debris
                f"The region shows {grounded(fmt, r)}, a {a} and a {b}.",
                f"The region shows {grounded(fmt, r)}.<|box_end|>,174,495,655,59,29273,2716",
                f"The region shows {grounded(fmt, r)} next to some {a}s (12, 40), (88, 91",
                # a poor candidate: boxes off, and a hallucinated reference
                f"The region shows {grounded(fmt, r, 0.6)} and {fmt.render(a, Box(500, 400, 600, 470), W, H)}.",
            ]
        )
    scorer = CandidateScorer(ScoringConfig(box_format=name), minilm, fmt, vocabulary=VOCAB)
    pairs, stats = _run(regions, texts, scorer, policy)
    assert len(pairs) == 4
    for pair, written in zip(pairs, texts):
        chosen = describe(pair.chosen.candidate.text, pair.region, fmt, VOCAB)
        assert chosen.hallucinated == 0 and chosen.debris == 0, pair.chosen.candidate.text
        assert fmt.parse(pair.chosen.candidate.text, W, H).dropped == {}
        assert "174,495" not in pair.chosen.candidate.text and "29273" not in pair.chosen.candidate.text
        assert pair.chosen.candidate.text.strip()
        assert pair.rejected.candidate.text in written  # the rejected side stays as the model wrote it
    q = stats.quality
    assert q["chosen_hallucinated_mentions_mean"] == 0 and q["chosen_with_debris_share"] == 0
    assert stats.hallucinations_removed > 0 and stats.debris_removed > 0
    # the rejected sides are the hallucinating ones, and the statistics say so (measured on the emitted strings)
    rejected = [describe(p.rejected.candidate.text, p.region, fmt, VOCAB) for p in pairs]
    assert q["rejected_hallucinated_mentions_mean"] == statistics.fmean(f.hallucinated for f in rejected) > 0
    assert not any("absent from the image" in w or "debris" in w for w in stats.warnings)


@pytest.mark.parametrize("name", FORMATS)
def test_refinement_removes_absent_mentions_with_their_separator_and_keeps_the_text_readable(name):
    fmt = get_box_format(name)
    r = shape_region("r", 0)
    a, b = absent_names(r, 2)
    units = [fmt.render(o.category, o.box, W, H) for o in r.objects]
    text = f"The image shows {units[0]}, a {a}, {units[1]} and a {b}. Beside it: {units[2]}."
    res = refine_candidate(cand(text, region_id="r"), r, fmt, policy="strip", vocabulary=VOCAB)
    out = res.candidate.text
    assert a not in out and b not in out and res.hallucinations_removed == 2
    assert out.startswith("The image shows ") and ", ," not in out and " ." not in out and "and." not in out
    assert len(fmt.parse(out, W, H).boxes) == 3
    # case, plurals and a tagged reference naming an absent category: all go
    text = f"{units[0]} and two {a.upper()}S. Also {fmt.render(b, Box(5, 5, 60, 60), W, H)}."
    out = refine_candidate(cand(text, region_id="r"), r, fmt, policy="correct", vocabulary=VOCAB).candidate.text
    assert describe(out, r, fmt, VOCAB).hallucinated == 0 and a not in out.lower() and b not in out


def test_sentences_that_name_only_absent_objects_go_whole_and_others_stay():
    fmt = get_box_format("qwen2_vl")
    r = shape_region("r", 7)
    a, b = absent_names(r, 2)
    unit = fmt.render(r.objects[0].category, r.objects[0].box, W, H)
    snapped = fmt.render(r.objects[0].category, r.objects[0].box, W, H)
    cases = {
        f"{unit}. The region shows {fmt.render(a, Box(5, 5, 60, 60), W, H)}.": f"{snapped}.",
        f"The region shows {unit}. The region shows a {a} and a {b}.": f"The region shows {snapped}.",
        f"{unit}. It is a sunny day. There is a {a}.": f"{snapped}. It is a sunny day.",
    }
    for text, expected in cases.items():
        assert refine_candidate(cand(text, region_id="r"), r, fmt, policy="correct", vocabulary=VOCAB).candidate.text == expected


def test_correct_grounds_plain_mentions_of_unclaimed_region_objects_one_to_one():
    fmt = get_box_format("qwen2_vl")
    r = shape_region("r", 1)
    first, second, third = (o.category for o in r.objects)
    text = f"A {fmt.render(first, r.objects[0].box, W, H)}, a {second} and a {third}; again a {second}."
    res = refine_candidate(cand(text, region_id="r"), r, fmt, policy="correct", vocabulary=VOCAB)
    parse = fmt.parse(res.candidate.text, W, H)
    assert res.plain_grounded == 2
    assert sorted((p.label, p.box) for p in parse.phrases) == sorted(
        (o.category, fmt.parse(fmt.render("x", o.box, W, H), W, H).boxes[0]) for o in r.objects
    )
    facts = describe(res.candidate.text, r, fmt, VOCAB)
    assert facts.ungrounded == 0 and facts.count(REGION) == 4  # the repeated name is grounded once already
    # strip leaves plain words as words, and the statistics count them as ungrounded
    stripped = refine_candidate(cand(text, region_id="r"), r, fmt, policy="strip", vocabulary=VOCAB).candidate.text
    assert describe(stripped, r, fmt, VOCAB).ungrounded == 3  # each unboxed mention of a region object counts


def test_json_format_keeps_plain_mentions_as_words_and_says_so():
    fmt = get_box_format("qwen2_5_vl_json")
    r = shape_region("r", 2)
    text = f"[{fmt.render(r.objects[0].category, r.objects[0].box, W, H)}] with a {r.objects[1].category}"
    out = refine_candidate(cand(text, region_id="r"), r, fmt, policy="correct", vocabulary=VOCAB).candidate.text
    assert describe(out, r, fmt, VOCAB).ungrounded == 1  # no inline grounding in JSON: reported, not hidden


def test_mentions_elsewhere_in_the_image_and_unknown_names_keep_their_words():
    fmt = get_box_format("qwen2_vl")
    r = shape_region("r", 3)
    text = f"{fmt.render(r.objects[0].category, r.objects[0].box, W, H)} near a dog and a unicorn."
    facts = describe(text, r, fmt, VOCAB)
    assert [m.status for m in facts.mentions] == [REGION, IMAGE]  # "unicorn" is no name of the dataset
    out = refine_candidate(cand(text, region_id="r"), r, fmt, policy="correct", vocabulary=VOCAB).candidate.text
    assert "dog" in out and "unicorn" in out
    # a tagged label the vocabulary does not know is unjudged, never called a hallucination
    assert describe(fmt.render("unicorn", Box(1, 1, 50, 50), W, H), r, fmt, VOCAB).mentions[0].status == UNJUDGED
    # without a record of the image's categories, only LVIS's verified-absent names count as hallucinated
    old = replace(r, in_image=(), absent=("purple square",))
    facts = describe("a green triangle and a purple square", old, fmt, VOCAB)
    assert {m.name: m.status for m in facts.mentions}.get("purple square") == ABSENT
    assert facts.hallucinated == 1


def test_vocabulary_rules_synonyms_slash_names_plurals_modifiers_and_places():
    fmt = get_box_format("qwen2_vl")
    r = replace(shape_region("r", 4), in_image=("person",))
    found = {
        m.name: m.status for m in describe("Two Shelves, a baseball bat, on the top left a dog's bed", r, fmt, VOCAB).mentions
    }
    assert found == {"shelf": ABSENT, "baseball bat": ABSENT, "dog": ABSENT}
    # "orange cat"-style modifiers name the second word: a red circle is not a mention of "red"
    assert [m.name for m in describe("a person holding a dog", r, fmt, VOCAB).mentions] == ["person", "dog"]


# -- 2. debris of any shape, every format ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize(
    "tail",
    [
        "<|box_end|>,174,495,655,59,29273,2716",
        "<|box_start|>(12,40),(5",
        "(12,40),(88,91)",
        ", 12, 40, 88",
        '[{"bbox_2d": [5, 6',
        "<|object_ref_start|>",
    ],
)
def test_box_debris_never_reaches_a_refined_text(name, tail):
    fmt = get_box_format(name)
    r = shape_region("r", 5)
    text = f"The region shows {grounded(fmt, r)}. {tail}"
    assert describe(text, r, fmt, VOCAB).debris >= 1
    for policy in ("correct", "strip", "drop"):
        res = refine_candidate(cand(text, region_id="r"), r, fmt, policy=policy, vocabulary=VOCAB)
        facts = describe(res.candidate.text, r, fmt, VOCAB)
        assert facts.debris == 0 and facts.boxes == 3, res.candidate.text


def test_prose_numbers_are_not_debris():
    fmt = get_box_format("qwen2_vl")
    r = shape_region("r", 6)
    for text in ("In 2019, 1,000 people came", "between 3 and 4 shapes", "a 1,000,000 b", "scores 0.5, 0.7"):
        assert describe(text, r, fmt, VOCAB).debris == 0, text


# -- 3. the score sees hallucinated names: ranking, pairs and the online reward ----------------------------------------


def test_the_reward_drops_with_every_appended_absent_object(minilm):
    from spr_plugin.trl.grpo_reward import SPRReward

    fmt = get_box_format("qwen2_vl")
    regions = [shape_region(f"r{i}", i, elsewhere=()) for i in range(3)]
    for r in regions:
        good = f"The region shows {grounded(fmt, r)}"
        texts = [good + "".join(f", and a {n}" for n in absent_names(r, k)) + "." for k in range(0, 9)]
        with_penalty = SPRReward(CandidateScorer(ScoringConfig(), minilm, fmt, vocabulary=VOCAB))(
            [], texts, region=[r.to_dict()] * 9
        )
        assert all(b < a for a, b in zip(with_penalty, with_penalty[1:])), with_penalty
        without = SPRReward(CandidateScorer(ScoringConfig(hallucination_penalty=0.0), minilm, fmt, vocabulary=VOCAB))(
            [], texts, region=[r.to_dict()] * 9
        )
        assert without[-1] - with_penalty[-1] > 0.3  # the penalty, not S_sem, is what sees the names
        assert min(with_penalty) > -1.0  # above the malformed floor


def test_ranking_rejects_the_hallucinating_candidate(minilm):
    fmt = get_box_format("qwen2_vl")
    regions = [shape_region(f"r{i}", i) for i in range(4)]
    texts = []
    for r in regions:
        texts.append(
            [
                f"The region shows {grounded(fmt, r)}, and a {absent_names(r, 1)[0]}.",
                f"The region shows {grounded(fmt, r, 0.25)}.",
            ]
        )
    pairs, _ = _run(regions, texts, CandidateScorer(ScoringConfig(), minilm, fmt, vocabulary=VOCAB), "off")
    assert all(p.rejected.candidate.sample_idx == 0 and p.rejected.penalty > 0 for p in pairs)
    pairs, _ = _run(
        regions, texts, CandidateScorer(ScoringConfig(hallucination_penalty=0.0), minilm, fmt, vocabulary=VOCAB), "off"
    )
    assert all(p.rejected.candidate.sample_idx == 1 for p in pairs)  # without it, the hallucinating one is preferred


def test_hallucination_penalty_is_a_checked_setting_with_a_flag():
    import argparse

    from spr_plugin.core.errors import ConfigError
    from spr_plugin.settings import add_flags

    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="hallucination.penalty"):
            ScoringConfig(hallucination_penalty=bad)
    parser = argparse.ArgumentParser()
    add_flags(parser, ScoringConfig)
    assert parser.parse_args(["--hallucination-penalty", "0.3"]).hallucination_penalty == 0.3
    assert "absent from the image" in " ".join(parser.format_help().split())


# -- 4. statistics and warnings true for the settings in force ----------------------------------------------------------


def test_statistics_report_what_the_emitted_strings_hold_when_refinement_is_off(minilm):
    fmt = get_box_format("qwen2_vl")
    regions = [shape_region(f"r{i}", i) for i in range(3)]
    texts = [
        [f"The region shows {grounded(fmt, r)}, and a {absent_names(r, 1)[0]}.<|box_end|>,1,2,3", f"A {r.objects[0].category}."]
        for r in regions
    ]
    scorer = CandidateScorer(ScoringConfig(hallucination_penalty=0.0), minilm, fmt, vocabulary=VOCAB)
    pairs, stats = _run(regions, texts, scorer, "off")
    chosen = [describe(p.chosen.candidate.text, p.region, fmt, VOCAB) for p in pairs]
    rejected = [describe(p.rejected.candidate.text, p.region, fmt, VOCAB) for p in pairs]
    q = stats.quality
    assert q["chosen_hallucinated_mentions_mean"] == statistics.fmean(f.hallucinated for f in chosen) == 1
    assert q["chosen_with_debris_share"] == 1.0
    assert q["chosen_boxes_mean"] == statistics.fmean(f.boxes for f in chosen)
    assert q["chosen_ungrounded_mentions_mean"] == 0
    assert q["rejected_ungrounded_mentions_mean" if False else "chosen_unjudged_mentions_mean"] == 0
    assert statistics.fmean(f.ungrounded for f in rejected) == 1  # "A red circle." names a region object, unboxed
    warnings = " | ".join(stats.warnings)
    assert "name objects absent from the image (refinement is off: try --refine-policy correct)" in warnings
    assert "box debris (refinement is off" in warnings


def _quality(**kw):
    base = {
        "pairs": 40, "chosen_boxes_mean": 1.0, "rejected_boxes_mean": 2.0, "chosen_box_label_agreement": 0.5,
        "chosen_hallucinated_mentions_mean": 0.0, "chosen_with_hallucinated_mentions_share": 0.0,
        "chosen_with_debris_share": 0.0, "chosen_with_ungrounded_mentions_share": 0.9, "localization_decided_share": 0.3,
    }  # fmt: skip
    return {**base, **kw}


def test_warnings_suggest_only_remedies_not_already_in_force():
    correct = " | ".join(quality_warnings(_quality(), "correct", "on"))
    assert "fewer boxes" in correct and "--refine-policy correct" not in correct and "--label-match on" not in correct
    strip = " | ".join(quality_warnings(_quality(), "strip", "off"))
    assert "(try --refine-policy correct)" in strip and "(try --label-match on)" in strip


def test_a_warning_when_localization_decides_almost_no_pair():
    low = quality_warnings(_quality(localization_decided_share=0.0), "correct", "on", lam=0.8)
    assert any("localization decided only 0.0% of the pairs" in w and "--lam (now 0.8)" in w for w in low)
    assert not any("localization decided" in w for w in quality_warnings(_quality(), "correct", "on"))
    few = _quality(localization_decided_share=0.0, pairs=LOW_LOCALIZATION_MIN_PAIRS - 1)
    assert not any("localization decided" in w for w in quality_warnings(few, "correct", "on"))


def test_the_card_shows_the_new_statistics_and_never_falls_back_to_wrong_defaults():
    from spr_plugin.inspect.card import render_card

    summary = {
        "config": {"scoring": {"box_format": "qwen2_vl"}, "pairing": {}},
        "pairs": {"pair_quality": {**_quality(), "chosen_fewer_boxes_share": 0.5, "chosen_ungrounded_mentions_mean": 0.2,
                                   "chosen_labelled_boxes": 3, "rejected_malformed_share": 0.1, "chosen_malformed_share": 0.0,
                                   "rejected_hallucinated_mentions_mean": 1.5, "chosen_outside_region_mentions_mean": 0.1,
                                   "chosen_unjudged_mentions_mean": 0.0, "rejected_with_debris_share": 0.25}},
    }  # fmt: skip
    card = render_card("x", summary, [])
    assert "| refinement policy | not recorded |" in card and "strip" not in card
    assert "| label matching, label threshold | not recorded" in card
    assert "mentions of objects absent from the image per answer: chosen / rejected | 0.00 / 1.50" in card
    assert "rejected / chosen answers with box debris | 25.0% / 0.0%" in card


# -- 5. crowds as pycocotools scores them -------------------------------------------------------------------------------


def test_crowd_overlap_is_pycocotools_iscrowd_rule():
    from spr_plugin.scoring.localization import crowd_iou_matrix, ignored_overlap

    crowd = [Box(0, 0, 400, 300), Box(50, 50, 150, 120)]
    pred = [Box(10, 10, 110, 90), Box(350, 250, 450, 350), Box(60, 60, 100, 100)]
    xywh = lambda bs: np.array([[b.x1, b.y1, b.width, b.height] for b in bs], dtype=float)  # noqa: E731
    expected = mask_utils.iou(xywh(pred), xywh(crowd), [1, 1]).T  # pycocotools: rows detections, columns gts
    assert np.allclose(crowd_iou_matrix(crowd, pred), expected)
    objs = [AnnotatedObject(1, "person", crowd[0], crowd=True), AnnotatedObject(2, "person", crowd[1])]
    mixed = ignored_overlap(objs, pred)
    assert np.allclose(mixed[0], expected[0]) and np.allclose(mixed[1], mask_utils.iou(xywh(pred), xywh(crowd[1:]), [0]).T[0])


def _crowd_region(crowd: bool) -> Region:
    people = tuple(AnnotatedObject(i + 1, "person", Box(300 + 60 * i, 300, 350 + 60 * i, 420)) for i in range(3))
    crowd_obj = AnnotatedObject(9, "person", Box(0, 0, 280, 280), crowd=crowd)
    return Region("c", 1, "/nonexistent.jpg", W, H, Box(0, 0, 480, 420), people, 1, ignored=(crowd_obj,), in_image=("person",))


def test_a_person_box_inside_a_crowd_is_neither_a_match_nor_a_false_positive(minilm):
    fmt = get_box_format("qwen2_vl")
    scorer = CandidateScorer(ScoringConfig(), minilm, fmt, vocabulary=VOCAB)
    inside = Box(20, 20, 90, 160)  # IoU with the crowd box 0.125, all of it inside
    text = (
        ", ".join(fmt.render("person", o.box, W, H) for o in _crowd_region(True).objects)
        + ", "
        + fmt.render("person", inside, W, H)
    )
    (on_crowd,) = scorer.score([(_crowd_region(True), cand(text, region_id="c"))])
    assert on_crowd.localization.n_neutral == 1 and on_crowd.localization.n_pred == 3
    (not_crowd,) = scorer.score([(_crowd_region(False), cand(text, region_id="c"))])  # plain IoU: a false positive
    assert not_crowd.localization.n_neutral == 0 and not_crowd.localization.n_pred == 4
    # refinement keeps the box on the crowd as written (neutral), the stage's pairs agree
    refined = refine_candidate(cand(text, region_id="c"), _crowd_region(True), fmt, policy="correct", vocabulary=VOCAB)
    assert len(fmt.parse(refined.candidate.text, W, H).boxes) >= 3


def test_spr_eval_region_leaves_boxes_on_crowds_out_of_n_pred():
    from spr_plugin.evaluation.region import score_description

    fmt = get_box_format("qwen2_vl")
    region = _crowd_region(True)
    answer = " ".join(fmt.render("person", b, W, H) for b in [o.box for o in region.objects] + [Box(20, 20, 90, 160)])
    row = score_description(region, answer, fmt, 0.5)
    assert row["n_pred"] == 3 and row["n_ignored"] == 1 and len(row["matched_ious"]) == 3
    assert score_description(_crowd_region(False), answer, fmt, 0.5)["n_pred"] == 4


def test_sampling_records_crowds_and_the_image_categories(tmp_path):
    from spr_plugin.demo.scenes import render_scenes
    from spr_plugin.regions.sampling import RegionConfig, load_coco, read_regions, sample_regions

    path = render_scenes(tmp_path, n_images=2, seed=1)
    data = json.loads(path.read_text())
    first = data["annotations"][0]
    x, y, w, h = first["bbox"]
    data["annotations"].append({**first, "id": 999, "bbox": [x - 5, y - 5, w + 10, h + 10], "iscrowd": 1})
    path.write_text(json.dumps(data))
    coco = load_coco(path)
    regions = list(sample_regions(coco, path.parent / "images", RegionConfig(regions_per_image=3)))
    names = {coco.cats[a["category_id"]]["name"] for a in data["annotations"] if a["image_id"] == first["image_id"]}
    mine = [r for r in regions if r.image_id == first["image_id"]]
    assert mine and all(set(r.in_image) == names for r in mine)
    crowds = [o for r in mine for o in r.ignored if o.ann_id == 999]
    assert crowds and all(o.crowd for o in crowds)
    out = tmp_path / "regions.jsonl"
    out.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in regions))
    assert read_regions(out) == regions  # the new fields round-trip through the regions file


def test_a_real_build_reports_statistics_that_the_emitted_pairs_bear_out(built_dataset, synthetic_scenes):
    """The build's pair statistics equal the measurement of its emitted strings with the annotation file's vocabulary."""
    from spr_plugin.core.records import PreferencePair
    from spr_plugin.regions.annotations import category_vocabulary, load_coco

    vocab = Vocabulary.of(category_vocabulary(load_coco(synthetic_scenes)))
    fmt = get_box_format("qwen2_vl")
    pairs = [PreferencePair.from_dict(json.loads(line)) for line in built_dataset.pairs.read_text().splitlines()]
    chosen = [describe(p.chosen.candidate.text, p.region, fmt, vocab) for p in pairs]
    rejected = [describe(p.rejected.candidate.text, p.region, fmt, vocab) for p in pairs]
    stats = built_dataset.summary["pairs"]
    q = stats["pair_quality"]
    assert q["pairs"] == len(pairs) > 0 and all(p.region.in_image for p in pairs)
    assert q["chosen_hallucinated_mentions_mean"] == statistics.fmean(f.hallucinated for f in chosen) == 0
    assert q["rejected_hallucinated_mentions_mean"] == pytest.approx(statistics.fmean(f.hallucinated for f in rejected))
    assert q["chosen_ungrounded_mentions_mean"] == pytest.approx(statistics.fmean(f.ungrounded for f in chosen))
    assert q["chosen_boxes_mean"] == pytest.approx(statistics.fmean(f.boxes for f in chosen))
    assert q["chosen_with_debris_share"] == 0 == sum(f.debris for f in chosen)
    assert q["rejected_with_debris_share"] == pytest.approx(sum(f.debris > 0 for f in rejected) / len(pairs))
    assert {"hallucinations_removed_by_refinement", "debris_removed_by_refinement"} <= set(stats)
    assert built_dataset.summary["config"]["scoring"]["hallucination_penalty"] == ScoringConfig().hallucination_penalty


def test_spr_build_on_hallucinating_candidates_emits_clean_chosen_texts_and_says_what_the_rejected_hold(
    synthetic_scenes, tmp_path
):
    """End to end through `spr build`: the annotation file's vocabulary judges the names (categories of the dataset
    absent from an image), chosen answers carry no absent name and no debris, the card reports the rejected ones'."""
    from helpers import run_spr
    from spr_plugin.core.records import PreferencePair
    from spr_plugin.demo.scenes import CATEGORY_NAMES
    from spr_plugin.regions.sampling import read_regions

    work, data = tmp_path / "work", tmp_path / "data"
    common = ["--annotations", synthetic_scenes, "--images", synthetic_scenes.parent / "images", "--work-dir", work]
    assert run_spr("regions", "--annotations", synthetic_scenes, "--images", synthetic_scenes.parent / "images",
                   "--out", tmp_path / "regions.jsonl", "--k", "3").returncode == 0  # fmt: skip
    fmt = get_box_format("qwen2_vl")
    rows = []
    for r in read_regions(tmp_path / "regions.jsonl"):
        absent = [c for c in CATEGORY_NAMES if c not in r.in_image][:2]
        good = ", ".join(fmt.render(o.category, o.box, r.width, r.height) for o in r.objects)
        texts = [
            f"The region shows {good}, a {absent[0]} and a {absent[1]}.",
            f"The region shows {good}.<|box_end|>,174,495,655,59,29273,2716",
            f"The region shows a {absent[0]}.",
        ]
        rows += [{"region_id": r.region_id, "variant": "t", "sample_idx": i, "text": t} for i, t in enumerate(texts)]
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps(row) + "\n" for row in rows))
    proc = run_spr("build", *common, "--candidates", cands, "--dataset-dir", data, "--name", "halluc", "--k", "3",
                   "--min-margin", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    pairs = [PreferencePair.from_dict(json.loads(line)) for line in (data / "halluc.pairs.jsonl").read_text().splitlines()]
    from spr_plugin.regions.annotations import category_vocabulary, load_coco

    vocab = Vocabulary.of(category_vocabulary(load_coco(synthetic_scenes)))
    assert pairs
    for p in pairs:
        facts = describe(p.chosen.candidate.text, p.region, fmt, vocab)
        assert facts.hallucinated == 0 and facts.debris == 0 and facts.boxes == len(p.region.objects), p.chosen.candidate.text
        assert describe(p.rejected.candidate.text, p.region, fmt, vocab).hallucinated >= 1
    card = (data / "halluc.README.md").read_text()
    assert "| chosen answers naming an absent object | 0.0% |" in card
    assert "mentions of objects absent from the image per answer: chosen / rejected | 0.00 / 1.00" in card


def test_spr_pair_judges_names_with_the_annotation_files_vocabulary(synthetic_scenes, tmp_path):
    """A category no region records ("unicorn", unannotated) is known only through --annotations: then naming it
    costs the penalty and refinement removes it; without, it is an unjudged word and stays."""
    from helpers import run_spr
    from spr_plugin.regions.sampling import read_regions

    ann = tmp_path / "ann.json"
    data = json.loads(synthetic_scenes.read_text())
    data["categories"].append({"id": 999, "name": "unicorn"})
    ann.write_text(json.dumps(data))
    images = synthetic_scenes.parent / "images"
    assert run_spr("regions", "--annotations", ann, "--images", images, "--out", tmp_path / "r.jsonl", "--k", "3").returncode == 0
    fmt = get_box_format("qwen2_vl")
    rows = []
    for r in read_regions(tmp_path / "r.jsonl")[:3]:
        good = ", ".join(fmt.render(o.category, o.box, r.width, r.height) for o in r.objects)
        for i, t in enumerate([f"The region shows {good} and a unicorn.", "The region shows shapes."]):
            rows.append({"region_id": r.region_id, "variant": "t", "sample_idx": i, "text": t})
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = ["pair", "--regions", tmp_path / "r.jsonl", "--candidates", cands, "--min-margin", "0"]
    known = run_spr(*base, "--out", tmp_path / "p1.jsonl", "--annotations", ann)
    unknown = run_spr(*base, "--out", tmp_path / "p2.jsonl")
    assert known.returncode == 0 and unknown.returncode == 0, known.stderr + unknown.stderr
    with_vocab = [json.loads(line) for line in (tmp_path / "p1.jsonl").read_text().splitlines()]
    without = [json.loads(line) for line in (tmp_path / "p2.jsonl").read_text().splitlines()]
    assert all("unicorn" not in p["chosen"]["candidate"]["text"] for p in with_vocab)
    assert all("unicorn" in p["chosen"]["candidate"]["text"] for p in without)
    assert json.loads(known.stdout)["hallucinations_removed_by_refinement"] == 3
    assert json.loads(unknown.stdout)["hallucinations_removed_by_refinement"] == 0
