"""The Grounding DINO phrase grounder on a tiny random detector: its boxes join S_loc's prediction set.

The detector's boxes mean nothing, so tests that need a box to match build the region's annotation
from what the detector actually returns; nothing here replaces the library.
"""

import json

import numpy as np
import pytest
from PIL import Image

from candidates_factory import write_candidates
from spr_plugin import cli
from spr_plugin.core.errors import ConfigError
from spr_plugin.core.records import AnnotatedObject, Box, Candidate, Region, ScoredCandidate
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.grounder import (
    GrounderConfig,
    PhraseGrounder,
    build_caption,
    merge_predictions,
    phrase_token_spans,
    select_phrase_boxes,
)
from spr_plugin.scoring.scorer import CandidateScorer
from spr_plugin.scoring.semantic import TextSemanticScorer
from spr_plugin.settings import ScoringConfig

FMT = get_box_format("qwen2_vl")
W, H = 120, 90
UNBOXED = "The region shows <|object_ref_start|>red circle<|object_ref_end|> on the grass."


@pytest.fixture(scope="module")
def grounder(tiny_grounding_dino):
    return PhraseGrounder.load(GrounderConfig(str(tiny_grounding_dino), box_threshold=0.0))


@pytest.fixture(scope="module")
def text_scorer():
    return TextSemanticScorer.load()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("grounder") / "scene.png"
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(H, W, 3) * 255).astype("uint8")).save(path)
    return str(path)


def _region(image, objects=(Box(10, 10, 40, 40),), box=Box(5, 5, 100, 80), rid="g_0"):
    objs = tuple(AnnotatedObject(i + 1, "red circle", b) for i, b in enumerate(objects))
    return Region(rid, 1, image, W, H, box, objs, 1)


def test_caption_is_grounding_dinos_prompt_form():
    assert build_caption(["Red circle", "blue square", "red circle", ""]) == (
        "red circle . blue square .",
        ["red circle", "blue square"],
    )
    assert build_caption([]) == ("", [])


def test_phrase_token_spans_follow_the_tokenizer(grounder):
    caption, phrases = build_caption(["red circle", "blue square"])
    enc = grounder.processor.tokenizer(caption, return_offsets_mapping=True)
    spans = phrase_token_spans(enc["offset_mapping"], caption, phrases)
    tokens = enc.tokens()
    assert [tokens[i] for i in spans[0]] == ["red", "circle"]
    assert [tokens[i] for i in spans[1]] == ["blue", "square"]


def test_select_phrase_boxes_takes_each_phrases_best_query_over_threshold():
    probs = np.array([[0.1, 0.9, 0.2, 0.1], [0.3, 0.2, 0.6, 0.7], [0.0, 0.1, 0.1, 0.2]])
    boxes = np.arange(12, dtype=float).reshape(3, 4)
    found = select_phrase_boxes(probs, boxes, [[1], [2, 3], []], threshold=0.65)
    assert [(p, round(s, 2)) for p, s, _ in found] == [(0, 0.9), (1, 0.7)]
    assert (found[1][2] == boxes[1]).all()
    assert select_phrase_boxes(probs, boxes, [[1], [2, 3]], threshold=0.95) == []


def test_merge_predictions_drops_duplicates_of_model_boxes_and_of_each_other():
    model = [Box(0, 0, 10, 10)]
    detected = [Box(0, 0, 10, 11), Box(50, 50, 60, 60), Box(50, 50, 61, 60), Box(20, 20, 30, 30)]
    assert merge_predictions(model, detected, 0.5) == [Box(50, 50, 60, 60), Box(20, 20, 30, 30)]


def test_ground_batch_equals_one_by_one_and_is_cached(grounder, image):
    queries = [
        (_region(image), ["red circle", "blue square"]),
        (_region(image, box=Box(0, 0, 60, 90), rid="g_1"), ["green star"]),
        (_region(image), []),
        (_region(image), ["red circle", "blue square"]),
        (_region(image), ["small green star with five points"]),  # same crop, longer caption: padded text
    ]
    fresh = PhraseGrounder(grounder.model, grounder.processor, grounder.config)
    batched = fresh.ground_batch(queries)
    single = [PhraseGrounder(grounder.model, grounder.processor, grounder.config).ground_batch([q])[0] for q in queries]
    for a, b in zip(batched, single):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert np.allclose(x.as_list(), y.as_list(), atol=1e-3)
    assert len(batched[0]) == 2 and batched[2] == [] and batched[3] == batched[0]
    assert len(fresh._cache) == 3  # the repeated query and the empty one cost nothing
    for box in batched[1]:  # boxes come back in full-image pixels, inside the grounded region's crop
        assert 0 <= box.x1 <= box.x2 <= 60 and 0 <= box.y1 <= box.y2 <= 90


def test_grounded_box_joins_the_prediction_set_and_raises_s_loc(grounder, text_scorer, image):
    """A phrase the model wrote without a box gets the detector's box; it matches, so S_loc rises."""
    (detected,) = grounder.ground_batch([(_region(image), ["red circle"])])
    assert len(detected) == 1
    region = _region(image, objects=(detected[0],))  # the annotation sits where the detector looks
    cand = Candidate(region.region_id, "t", 0, UNBOXED)
    without = CandidateScorer(ScoringConfig(), text_scorer).score([(region, cand)])[0]
    with_g = CandidateScorer(ScoringConfig(), text_scorer, grounder=grounder).score([(region, cand)])[0]
    assert without.localization.score == 0.0 and without.localization.n_pred == 0
    assert with_g.localization.n_pred == 1 and with_g.localization.n_grounded == 1
    assert with_g.localization.score == pytest.approx(1.0)
    assert with_g.score > without.score
    assert ScoredCandidate.from_dict(with_g.to_dict()) == with_g


def test_detector_box_duplicating_the_models_box_does_not_count_twice(grounder, text_scorer, image):
    (detected,) = grounder.ground_batch([(_region(image), ["red circle"])])
    region = _region(image, objects=(detected[0],))
    text = "The region shows " + FMT.render("red circle", detected[0], W, H) + "."
    cand = Candidate(region.region_id, "t", 0, text)
    for metric in ("hungarian", "paper"):
        cfg = ScoringConfig(loc_metric=metric)
        without = CandidateScorer(cfg, text_scorer).score([(region, cand)])[0]
        with_g = CandidateScorer(cfg, text_scorer, grounder=grounder).score([(region, cand)])[0]
        assert with_g.localization.n_grounded == 0 and with_g.localization.n_pred == 1
        assert with_g.localization.score == pytest.approx(without.localization.score)


def test_detector_box_matching_no_annotation_costs_nothing(grounder, text_scorer, image):
    """A detector false positive is not the description's fault: it leaves S_loc as it was."""
    (detected,) = grounder.ground_batch([(_region(image), ["blue square"])])
    far = Box(60, 50, 100, 85) if detected[0].x1 < 50 else Box(5, 5, 40, 40)
    region = _region(image, objects=(far,))
    text = "A " + FMT.render("red circle", far, W, H) + " and a <|object_ref_start|>blue square<|object_ref_end|>."
    cand = Candidate(region.region_id, "t", 0, text)
    without = CandidateScorer(ScoringConfig(), text_scorer).score([(region, cand)])[0]
    with_g = CandidateScorer(ScoringConfig(), text_scorer, grounder=grounder).score([(region, cand)])[0]
    assert with_g.localization.n_grounded == 0 and with_g.localization.n_pred == 1
    assert with_g.localization.score == pytest.approx(without.localization.score) == pytest.approx(1.0, abs=0.02)


def test_unboxed_mode_grounds_only_phrases_without_a_box(grounder, image):
    region = _region(image)
    text = (
        "A " + FMT.render("blue square", Box(60, 40, 90, 70), W, H) + " and a <|object_ref_start|>red circle<|object_ref_end|>."
    )
    phrases = FMT.parse(text, W, H).phrases
    assert grounder.labels_to_ground(phrases) == ["blue square", "red circle"]
    unboxed = PhraseGrounder(grounder.model, grounder.processor, GrounderConfig(grounder.config.model, 0.0, "unboxed"))
    assert unboxed.labels_to_ground(phrases) == ["red circle"]
    assert region.box is not None


def test_missing_grounder_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        PhraseGrounder.load(GrounderConfig(str(tmp_path / "no-gdino")))
    with pytest.raises(ConfigError, match="phrase mode"):
        GrounderConfig("x", phrases="nouns")


def test_build_records_scorer_choice_in_summary(synthetic_scenes, tiny_clip, tiny_grounding_dino, tmp_path):
    """``spr build --semantic clip+text --clip-model --grounder``: the run's choices land in summary.json."""
    images = synthetic_scenes.parent / "images"
    regions = tmp_path / "regions.jsonl"
    common = ["--annotations", str(synthetic_scenes), "--images", str(images), "--max-regions", "3"]
    assert cli.main(["regions", *common, "--out", str(regions)]) == 0
    write_candidates(regions, tmp_path / "candidates.jsonl")
    argv = [
        "build",
        *common,
        "--candidates",
        str(tmp_path / "candidates.jsonl"),
        "--work-dir",
        str(tmp_path / "work"),
        "--dataset-dir",
        str(tmp_path / "data"),
        "--semantic",
        "clip+text",
        "--clip-model",
        str(tiny_clip),
        "--grounder",
        str(tiny_grounding_dino),
        "--grounder-threshold",
        "0.0",
        "--lam",
        "0.7",
    ]
    assert cli.main(argv) == 0
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    scoring = summary["config"]["scoring"]
    assert scoring["semantic"] == "clip+text" and scoring["clip_model"] == str(tiny_clip)
    assert scoring["grounder"] == str(tiny_grounding_dino) and scoring["lam"] == 0.7
    assert scoring["grounder_box_threshold"] == 0.0 and scoring["grounder_phrases"] == "all"
    pair = json.loads((tmp_path / "work" / "pairs.jsonl").read_text().splitlines()[0])
    assert pair["chosen"]["semantic"]["scorer"] == "clip+text"
    assert {"clip_crop", "clip_local", "text_region", "phrase_objects"} <= set(pair["chosen"]["semantic"])
    assert "n_grounded" in pair["chosen"]["localization"]
    # refinement rewrites the model's own boxes only: the chosen text holds no more boxes than the model wrote
    n_written = pair["chosen"]["candidate"]["text"].count("<|box_start|>")
    assert n_written <= pair["chosen"]["localization"]["n_pred"] - pair["chosen"]["localization"]["n_grounded"]
