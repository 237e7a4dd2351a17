"""bench/effect_study.py: the toy version of the study's code path (CI), its statistics and its guards."""

from __future__ import annotations

import json

import pytest

from helpers import load_bench
from spr_plugin.core.errors import SPRError
from spr_plugin.core.records import AnnotatedObject, Box, Region


def _rows(hits: list[int]) -> list[dict[str, float]]:
    return [{"rec_hit@0.9": float(h), "rec_hit@0.5": 1.0, "rec_iou": 0.8, "rec_parsed": 1.0, "rec_area_ratio": 1.0} for h in hits]


def test_paired_comparison_finds_a_consistent_gain_and_not_noise():
    stats = load_bench("study_stats")
    n = 300
    base = _rows([i % 5 == 0 for i in range(n)])  # Acc@0.9 0.2
    better = [_rows([i % 5 == 0 or i % 5 == s + 1 for i in range(n)]) for s in range(3)] + [
        _rows([i % 5 in (0, 1) for i in range(n)])
    ] * 2
    [c] = stats.compare("spr_dpo", better, "sft", [base], ["rec_acc@0.9"], n_boot=500)
    assert c.delta == pytest.approx(0.2)
    assert c.ci95[0] > 0 and c.ci95_seeds[0] > 0 and c.seeds_same_sign == 5 and c.effect
    # the same rows on both sides: no effect, whatever the bootstrap draws
    [same] = stats.compare("spr_dpo", [base] * 5, "sft", [base], ["rec_acc@0.9"], n_boot=200)
    assert same.delta == 0 and not same.effect
    # one seed cannot show an effect (no interval over seeds)
    [one] = stats.compare("spr_dpo", better[:1], "sft", [base], ["rec_acc@0.9"], n_boot=200)
    assert one.ci95_seeds is None and not one.effect
    with pytest.raises(ValueError):
        stats.compare("a", [base[:10]], "b", [base], ["rec_acc@0.9"])


def test_region_metrics_do_not_reward_duplicate_or_hallucinated_boxes_and_check_labels():
    stats = load_bench("study_stats")
    from spr_plugin.families.box_formats import Qwen2VLFormat

    fmt = Qwen2VLFormat()
    objs = (
        AnnotatedObject(1, "red circle", Box(10, 10, 60, 60)),
        AnnotatedObject(2, "blue square", Box(100, 100, 150, 150)),
    )
    region = Region("r", 1, "img.jpg", 168, 168, Box(10, 10, 150, 150), objs, seed_ann_id=1)
    red = fmt.render("red circle", objs[0].box, 168, 168)
    dup = fmt.render("red circle", objs[0].box, 168, 168)
    wrong = fmt.render("green star", objs[1].box, 168, 168)
    ghost = fmt.render("blue square", Box(120, 10, 160, 40), 168, 168)
    row = stats.region_row(f"{red}, {dup}, {wrong}, {ghost} and a triangle", region, fmt)
    m = stats.metrics([row])
    assert row["n_pred"] == 4 and row["matched@0.5"] == 2  # one-to-one: the duplicate and the ghost match nothing
    assert m["region_precision@0.5"] == pytest.approx(0.5) and m["region_recall@0.5"] == 1.0
    assert m["region_label_acc"] == pytest.approx(0.5)  # "green star" sits on the blue square
    assert row["ungrounded"] == 0  # "a triangle" is plain text, not a reference
    rec = stats.rec_row("no box here", objs[0].box, 168, 168, fmt)
    assert rec["rec_unparseable"] == 1.0 and rec["rec_hit@0.5"] == 0.0


def test_frame_assertion_names_the_stage_that_differs():
    study = load_bench("effect_study")
    study.assert_one_frame({"sampling": study.EXPECTED_GRID, "dpo": study.EXPECTED_GRID})
    with pytest.raises(SPRError, match="dpo"):
        study.assert_one_frame({"sampling": study.EXPECTED_GRID, "dpo": [1, 12, 16]})


def test_a_study_folder_refuses_other_settings(tmp_path):
    study = load_bench("effect_study")
    cfg = study.StudyConfig(out=tmp_path)
    cfg.save()
    assert study.StudyConfig.load(tmp_path) == cfg
    with pytest.raises(SPRError, match="base_steps"):
        study.StudyConfig(out=tmp_path, base_steps=7).save()


@pytest.mark.slow
def test_toy_study_one_frame_and_dpo_on_tight_boxes_shrinks_boxes(tmp_path):
    """The study's path at toy size: in-process base on x1.3 boxes, llamafactory-cli DPO on tight vs x1.3 pairs."""
    study = load_bench("effect_study")
    r = study.toy_study(tmp_path / "toy")
    assert set(map(json.dumps, r["grids"].values())) == {json.dumps(study.EXPECTED_GRID)}
    before, after = r["before"], r["after"]
    assert before["rec_unparseable"] == 0 and before["rec_box_area_ratio"] > 1.4  # the base writes the loose boxes
    assert after["rec_box_area_ratio"] < before["rec_box_area_ratio"] - 0.05, (before, after)
    assert after["rec_unparseable"] <= 0.5
