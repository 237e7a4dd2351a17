"""Pairs that teach localization: label-aware matching, refinement policies, score normalisation, pair
statistics. Scored with the real MiniLM text model; hand-made candidates whose right answer is known."""

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import H, W, cand, region
from spr_plugin.core.records import AnnotatedObject, Box, Candidate, LocalizationScore, Region, ScoredCandidate, SemanticScore
from spr_plugin.families.box_formats import BOX_START, REF_START
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.labels import LabelMatcher
from spr_plugin.scoring.refine import refine_candidate
from spr_plugin.scoring.scorer import CandidateScorer, mix_scores, normalise
from spr_plugin.scoring.semantic import TextSemanticScorer
from spr_plugin.scoring.stage import score_refine_pair
from spr_plugin.settings import PairingConfig, ScoringConfig

FMT = get_box_format("qwen2_vl")
CATS = ("red circle", "blue square", "green triangle", "yellow star", "purple diamond")


@pytest.fixture(scope="module")
def minilm():
    return TextSemanticScorer.load()


def five_object_region(rid="r0", seed=0):
    rng = random.Random(seed)
    objs = []
    for i, cat in enumerate(CATS):
        x, y = 20 + i * 120, 40 + rng.randint(0, 200)
        objs.append(AnnotatedObject(i + 1, cat, Box(x, y, x + 100, y + 90)))
    union = objs[0].box
    for o in objs[1:]:
        union = union.union(o.box)
    return Region(rid, int(seed), "/nonexistent.jpg", W, H, union, tuple(objs), 1)


def shifted(box, frac=0.12):
    dx = frac * box.width
    return Box(box.x1 + dx, box.y1, box.x2 + dx, box.y2)


def describe(units):
    return "The region shows " + ", ".join(FMT.render(label, box, W, H) for label, box in units) + "."


def right_labels_shifted_boxes(r):
    return describe([(o.category, shifted(o.box)) for o in r.objects])


def exact_boxes_rotated_labels(r):
    cats = [o.category for o in r.objects]
    return describe([(cats[(i + 1) % len(cats)], o.box) for i, o in enumerate(r.objects)])


def labelled_boxes_on_objects(text, r):
    """(label, category of the object the box sits on) for every labelled box of ``text``."""
    out = []
    for p in FMT.parse(text, W, H).phrases:
        if p.box is None or not p.label:
            continue
        ious = [_iou(p.box, o.box) for o in r.objects]
        g = int(np.argmax(ious))
        assert ious[g] > 0.9, "every box of a chosen answer lies on an annotated object"
        out.append((p.label, r.objects[g].category))
    return out


def _iou(a, b):
    iw = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    ih = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = iw * ih
    return inter / (a.area + b.area - inter)


def _run(regions, texts_per_region, scorer, policy="correct", **pair_kw):
    cands = [Candidate(r.region_id, "hand", i, t) for r, texts in zip(regions, texts_per_region) for i, t in enumerate(texts)]
    return score_refine_pair(
        regions, cands, scorer, PairingConfig(min_margin=0.0, refine_policy=policy, **pair_kw), progress=False
    )


# -- the issue's hand-made test: right labels with shifted boxes vs exact boxes with rotated labels ----------------


@pytest.mark.parametrize("policy", ["strip", "correct", "drop"])
def test_mislabelled_exact_boxes_never_become_a_wrong_binding(minilm, policy):
    regions = [five_object_region(f"r{i}", seed=i) for i in range(4)]
    texts = [[right_labels_shifted_boxes(r), exact_boxes_rotated_labels(r)] for r in regions]
    pairs, stats = _run(regions, texts, CandidateScorer(ScoringConfig(), minilm), policy)
    assert len(pairs) == 4
    for pair in pairs:
        bindings = labelled_boxes_on_objects(pair.chosen.candidate.text, pair.region)
        assert len(bindings) == 5 and all(label == cat for label, cat in bindings)
        assert pair.rejected.candidate.sample_idx == 1  # the mislabelled one is the worst
        assert pair.rejected.localization.score == 0.0
    if policy != "correct":  # only `correct` can repair the rotated labels, so elsewhere the right one wins
        assert all(p.chosen.candidate.sample_idx == 0 for p in pairs)
    assert stats.quality["chosen_box_label_agreement"] == 1.0
    assert stats.warnings == []


def test_label_match_off_reproduces_the_wrong_binding_and_warns(minilm):
    regions = [five_object_region(f"r{i}", seed=i) for i in range(4)]
    # Right labels on boxes shifted by 40% (IoU 0.43, no match) vs exact boxes with rotated labels.
    texts = [[describe([(o.category, shifted(o.box, 0.4)) for o in r.objects]), exact_boxes_rotated_labels(r)] for r in regions]
    off, stats_off = _run(regions, texts, CandidateScorer(ScoringConfig(label_match="off"), minilm), "strip")
    assert all(p.chosen.candidate.sample_idx == 1 for p in off)  # IoU alone snaps the mislabelled boxes
    assert stats_off.quality["chosen_box_label_agreement"] == 0.0
    assert any("wrong bindings" in w for w in stats_off.warnings)
    on, stats_on = _run(regions, texts, CandidateScorer(ScoringConfig(), minilm), "strip")
    assert stats_on.quality["chosen_box_label_agreement"] == 1.0 and stats_on.quality["chosen_boxes_mean"] == 0.0
    assert stats_on.boxes_snapped == 0  # nothing agrees and overlaps: nothing is snapped


# -- refinement policies ------------------------------------------------------------------------------------------


def _three_phrase_text(r):
    a, b = r.objects
    return (
        f"A {FMT.render('red circle', shifted(a.box, 0.05), W, H)} next to "
        f"{FMT.render('blue square', Box(0, 400, 60, 470), W, H)} and "  # its box misses the square
        f"{FMT.render('unicorn', Box(500, 10, 600, 100), W, H)}."  # names nothing in the region
    )


def test_correct_policy_grounds_every_phrase_that_names_an_object():
    r = region()
    res = refine_candidate(cand(_three_phrase_text(r)), r, FMT, policy="correct")
    assert (res.matched, res.corrected, res.ungrounded, res.removed) == (1, 1, 1, 0)
    bindings = labelled_boxes_on_objects(res.candidate.text, r)
    assert sorted(bindings) == [("blue square", "blue square"), ("red circle", "red circle")]
    assert "unicorn" in res.candidate.text  # words kept, grounding gone


def test_strip_policy_keeps_words_and_removes_missed_boxes():
    r = region()
    res = refine_candidate(cand(_three_phrase_text(r)), r, FMT, policy="strip")
    assert (res.matched, res.corrected, res.ungrounded) == (1, 0, 2)
    assert labelled_boxes_on_objects(res.candidate.text, r) == [("red circle", "red circle")]
    assert "blue square" in res.candidate.text and "unicorn" in res.candidate.text


def test_drop_policy_removes_unmatched_phrases_and_their_separators():
    r = region()
    res = refine_candidate(cand(_three_phrase_text(r)), r, FMT, policy="drop")
    assert res.removed == 2 and res.words_changed
    assert "blue square" not in res.candidate.text and "unicorn" not in res.candidate.text
    assert FMT.plain_text(res.candidate.text, W, H) == "A red circle next to."
    text = describe([(o.category, Box(0, 0, 5, 5)) for o in r.objects] + [("red circle", r.objects[0].box)])
    dropped = refine_candidate(cand(text), r, FMT, policy="drop").candidate.text
    assert FMT.plain_text(dropped, W, H) == "The region shows red circle."


def test_off_policy_changes_nothing():
    r = region()
    text = _three_phrase_text(r)
    assert refine_candidate(cand(text), r, FMT, policy="off").candidate.text == text


def test_correct_prefers_the_twin_the_box_was_near():
    r = region(boxes=((10, 10, 60, 60), (300, 300, 350, 350)), cats=("dog", "dog"))
    text = f"A {FMT.render('dog', Box(250, 260, 330, 330), W, H)}."  # IoU < 0.5 with both, nearer the second
    out = refine_candidate(cand(text), r, FMT, policy="correct").candidate.text
    (box,) = FMT.parse(out, W, H).boxes
    assert _iou(box, r.objects[1].box) > 0.95


def test_the_issue_cut_off_box_refines_to_one_clean_box():
    r = region(boxes=((64, 48, 320, 240), (400, 300, 500, 400)), cats=("dog", "cat"))
    text = "A <|object_ref_start|>dog<|box_start|>(1,1<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"
    for policy in ("strip", "correct", "drop"):
        out = refine_candidate(cand(text), r, FMT, policy=policy).candidate.text
        parse = FMT.parse(out, W, H)
        assert parse.dropped == {} and not any(p.malformed for p in parse.phrases), (policy, out)
        assert out.count(BOX_START) == 1 and out.count(REF_START) <= 1, (policy, out)
        assert "(1,1" not in out


# -- properties ---------------------------------------------------------------------------------------------------

_LABELS = st.sampled_from([*CATS[:3], "unicorn", "", "blue circle"])
_BOX = st.one_of(
    st.sampled_from(["exact0", "exact1", "exact2", "near0", "near1", "far"]),
    st.sampled_from(["<|box_start|>(1,1", "<|box_start|>(1,2),(x<|box_end|>", "<|box_end|>", "<|object_ref_end|>"]),
)
_UNIT = st.tuples(_LABELS, st.lists(_BOX, max_size=2), st.sampled_from([" and ", ", ", " next to ", "", "<|im_end|>"]))


def _three_region():
    return region(boxes=((64, 48, 160, 140), (320, 240, 420, 330), (480, 40, 600, 150)), cats=CATS[:3])


def _render_units(units, r):
    out = []
    for label, boxes, sep in units:
        piece = f"<|object_ref_start|>{label}<|object_ref_end|>" if label else ""
        for b in boxes:
            if b.startswith(("exact", "near")):
                o = r.objects[int(b[-1])].box
                piece += FMT.render_box(o if b.startswith("exact") else shifted(o, 0.1), W, H)
            elif b == "far":
                piece += FMT.render_box(Box(0, 400, 30, 470), W, H)
            else:
                piece += b
        out.append(piece + sep)
    return "".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(units=st.lists(_UNIT, max_size=6), policy=st.sampled_from(["strip", "correct", "drop"]))
def test_refinement_never_binds_a_disagreeing_category_and_reparses_cleanly(units, policy):
    r = _three_region()
    text = _render_units(units, r)
    out = refine_candidate(cand(text), r, FMT, policy=policy).candidate.text
    parse = FMT.parse(out, W, H)
    assert parse.dropped == {} and not any(p.malformed for p in parse.phrases), out
    matcher = LabelMatcher()
    for p in parse.phrases:
        if p.box is None:
            continue
        g = int(np.argmax([_iou(p.box, o.box) for o in r.objects]))
        assert _iou(p.box, r.objects[g].box) > 0.95, out  # every kept box is an annotated box
        if p.label:
            (agree,) = matcher.agreement([((r.objects[g],), [p.label])])
            assert agree[0, 0], (p.label, r.objects[g].category, out)
    boxes = [tuple(round(v) for v in b.as_list()) for b in parse.boxes]
    assert len(boxes) == len(set(boxes)), out  # no object is grounded twice


# -- normalisation and the share of pairs localization decided -----------------------------------------------------


def _sc(sem, loc, idx=0, refined=False):
    return ScoredCandidate(
        cand(f"t{idx}{refined}", idx), refined, 0.0, SemanticScore(sem, {}, "t"), LocalizationScore(loc, "hungarian", 2, 2, ())
    )


def test_normalise_methods():
    assert normalise([0.2, 0.4, 0.6], "none").tolist() == [0.2, 0.4, 0.6]
    z = normalise([0.2, 0.4, 0.6], "zscore")
    assert z.mean() == pytest.approx(0.0) and z.std() == pytest.approx(1.0)
    assert normalise([0.3, 0.1, 0.2, 0.2], "rank").tolist() == [1.0, 0.0, 0.5, 0.5]
    assert normalise([0.5, 0.5], "zscore").tolist() == [0.0, 0.0] and normalise([0.5], "rank").tolist() == [0.5]


def test_normalising_lets_localization_weigh_in():
    # Within the region S_sem spreads 0.32 and S_loc only 0.1: raw 0.8/0.2 mixing follows S_sem (candidate 0),
    # z-scores put both parts on one scale and the better-localized candidate 1 wins.
    pool = [_sc(0.62, 0.0, 0), _sc(0.58, 0.1, 1), _sc(0.30, 0.1, 2)]
    raw = mix_scores(pool, 0.8, "none")
    assert max(range(3), key=lambda i: raw[i].score) == 0
    assert raw[0].score == pytest.approx(0.496) and raw[0].norm_parts == {}
    z = mix_scores(pool, 0.8, "zscore")
    assert max(range(3), key=lambda i: z[i].score) == 1
    assert z[1].norm_parts["loc"] == pytest.approx(2**-0.5)
    ranked = mix_scores(pool, 0.8, "rank")
    assert [r.norm_parts for r in ranked] == [{"sem": 1.0, "loc": 0.0}, {"sem": 0.5, "loc": 0.75}, {"sem": 0.0, "loc": 0.75}]
    assert ranked[1].score == pytest.approx(0.8 * 0.5 + 0.2 * 0.75)
    assert ScoredCandidate.from_dict(z[1].to_dict()) == z[1]


def test_statistics_add_up_and_report_what_localization_decided(minilm):
    regions = [five_object_region(f"r{i}", seed=i) for i in range(3)]
    empty = Region("lonely", 9, "/nonexistent.jpg", W, H, Box(0, 0, 10, 10), regions[0].objects, 1)
    texts = []
    for r in regions:
        good = right_labels_shifted_boxes(r)
        words = "The region shows " + ", ".join(o.category for o in r.objects) + "."
        texts.append([good, words, exact_boxes_rotated_labels(r)])
    texts.append([])
    scorer = CandidateScorer(ScoringConfig(score_norm="rank"), minilm)
    pairs, stats = _run([*regions, empty], texts, scorer, "strip")
    d = stats.to_dict()
    assert d["pairs"] + sum(d["pairs_skipped"].values()) == d["regions"] == 4
    assert d["pairs_skipped"] == {"too_few_candidates": 1}
    q = d["pair_quality"]
    assert q["pairs"] == 3 and q["chosen_boxes_mean"] == 5.0 and q["chosen_ungrounded_mentions_mean"] == 0.0
    for key, value in q.items():
        if key.endswith("_share") or key == "chosen_box_label_agreement":
            assert 0.0 <= value <= 1.0, key
    assert 0.0 <= q["localization_decided_share"] <= 1.0
    assert d["boxes_snapped_by_refinement"] >= 15 and d["boxes_corrected_by_refinement"] == 0


def test_fewer_boxes_in_chosen_answers_raise_a_warning(minilm):
    r = five_object_region()
    words_only = "The region shows " + ", ".join(o.category for o in r.objects) + "."
    junk = describe([("unicorn", Box(0, 0, 30, 30)), ("dragon", Box(600, 400, 639, 479))])
    _, stats = _run([r], [[words_only, junk]], CandidateScorer(ScoringConfig(lam=1.0), minilm), "strip")
    assert stats.pairs == 1  # chosen: the words-only answer (best S_sem); rejected: the junk with 2 boxes
    assert stats.quality["chosen_boxes_mean"] == 0.0 and stats.quality["rejected_boxes_mean"] == 2.0
    assert any("fewer boxes" in w for w in stats.warnings)
