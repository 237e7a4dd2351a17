"""REC / region metric math (pure functions) and REC file loading: no model involved."""

from __future__ import annotations

import json

import pytest

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.records import Box
from spr_plugin.evaluation.metrics import box_iou, is_hit, rec_summary, region_summary
from spr_plugin.evaluation.rec import first_box
from spr_plugin.evaluation.rec_data import load_rec_items, rec_items_from_detections
from spr_plugin.families.profiles import get_box_format


def test_box_iou_known_values():
    a = Box(0, 0, 10, 10)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou(a, Box(10, 10, 20, 20)) == 0.0  # touching corners: no overlap
    assert box_iou(a, None) == 0.0


def test_accuracy_at_thresholds_and_mean_iou():
    s = rec_summary([0.95, 0.75, 0.55, 0.3], thresholds=(0.5, 0.7, 0.9))
    assert s.accuracy == {"0.5": 0.75, "0.7": 0.5, "0.9": 0.25}
    assert s.mean_iou == pytest.approx((0.95 + 0.75 + 0.55 + 0.3) / 4)
    assert s.n == 4 and s.unparseable == 0


def test_unparseable_answers_count_as_wrong_not_dropped():
    s = rec_summary([1.0, None, None, None], thresholds=(0.5,))
    assert s.accuracy["0.5"] == 0.25  # denominator keeps the three unparseable answers
    assert s.mean_iou == 0.25 and s.unparseable == 3


def test_threshold_convention_matters_exactly_at_the_threshold():
    assert is_hit(0.5, 0.5, ">=") and not is_hit(0.5, 0.5, ">")
    ge = rec_summary([0.5, 0.7], thresholds=(0.5, 0.7), convention=">=")
    gt = rec_summary([0.5, 0.7], thresholds=(0.5, 0.7), convention=">")
    assert ge.accuracy == {"0.5": 1.0, "0.7": 0.5}
    assert gt.accuracy == {"0.5": 0.5, "0.7": 0.0}
    assert gt.convention == ">"
    with pytest.raises(ConfigError):
        rec_summary([0.5], convention="=>")


def test_region_summary_micro_precision_recall_f1():
    s = region_summary([(3, 2, [0.8, 0.6]), (2, 4, [0.9]), (1, 0, [])])
    assert (s.n_gt, s.n_pred, s.n_matched) == (6, 6, 3)
    assert s.precision == 0.5 and s.recall == 0.5 and s.f1 == 0.5
    assert s.mean_matched_iou == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert s.no_box_answers == 1


def test_first_box_of_answer_in_pixels_or_none():
    fmt = get_box_format("qwen2_vl")
    text = "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>"
    box = first_box("junk " + text, fmt, 1000, 500)
    assert box == Box(100, 100, 500, 300)
    assert first_box("no box here (1,2),(3,4)", fmt, 1000, 500) is None
    assert first_box("<|box_start|>(900,900),(100,100)<|box_end|>", fmt, 1000, 500) is None  # reversed: dropped


def test_jsonl_items_resolve_images_and_default_ids(tmp_path):
    f = tmp_path / "rec.jsonl"
    f.write_text(
        json.dumps({"image": "a.jpg", "expression": "red circle", "box": [1, 2, 30, 40]})
        + "\n"
        + json.dumps({"id": "x", "image": str(tmp_path / "imgs" / "b.jpg"), "expression": "blue star", "box": [0, 0, 5, 5]})
        + "\n"
    )
    items = load_rec_items(f, tmp_path / "imgs")
    assert [i.item_id for i in items] == ["1", "x"]
    assert items[0].image == str(tmp_path / "imgs" / "a.jpg") and items[1].image == str(tmp_path / "imgs" / "b.jpg")
    assert items[0].box == Box(1, 2, 30, 40)
    for outside in ("/abs/b.jpg", "../b.jpg"):  # a REC file is read only under its image folder (docs/inputs.md)
        f.write_text(json.dumps({"image": outside, "expression": "red circle", "box": [1, 2, 30, 40]}) + "\n")
        with pytest.raises(SPRError, match="points outside the image folders"):
            load_rec_items(f, tmp_path / "imgs")


@pytest.mark.parametrize(
    "line, message",
    [
        ({"image": "a.jpg", "box": [0, 0, 1, 1]}, "missing 'expression'"),
        ({"image": "a.jpg", "expression": "x", "box": [10, 10, 5, 5]}, "no area"),
        ({"image": "a.jpg", "expression": "x", "box": [1, 2]}, "[x1, y1, x2, y2]"),
    ],
)
def test_bad_jsonl_items_are_clear_errors(tmp_path, line, message):
    f = tmp_path / "rec.jsonl"
    f.write_text(json.dumps(line) + "\n")
    with pytest.raises(SPRError, match=message.replace("[", r"\[")):
        load_rec_items(f)


def test_duplicate_ids_are_rejected(tmp_path):
    f = tmp_path / "rec.jsonl"
    row = {"id": "same", "image": "a.jpg", "expression": "x", "box": [0, 0, 1, 1]}
    f.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SPRError, match="duplicate item id"):
        load_rec_items(f)


def test_coco_style_refs_one_item_per_sentence_and_split(tmp_path):
    refs = {
        "images": [{"id": 7, "file_name": "img7.jpg"}],
        "annotations": [{"id": 70, "image_id": 7, "bbox": [10, 20, 30, 40]}],
        "refs": [
            {
                "ref_id": 1,
                "ann_id": 70,
                "image_id": 7,
                "split": "val",
                "sentences": [{"sent": "left man", "sent_id": 11}, {"sent": "man"}],
            },
            {"ref_id": 2, "ann_id": 70, "image_id": 7, "split": "train", "sentences": [{"sent": "other"}]},
        ],
    }
    f = tmp_path / "refs.json"
    f.write_text(json.dumps(refs))
    items = load_rec_items(f, split="val")
    assert [(i.item_id, i.expression) for i in items] == [("1_11", "left man"), ("1_1", "man")]
    assert items[0].box == Box(10, 20, 40, 60)  # COCO x,y,w,h -> corners
    with pytest.raises(SPRError, match="holds the splits train, val; choose one with --split"):
        load_rec_items(f)  # evaluating train and val together by accident is refused


def test_detection_file_gives_only_unambiguous_expressions(synthetic_scenes):
    import collections

    items = rec_items_from_detections(synthetic_scenes, synthetic_scenes.parent / "images")
    assert items
    per_image = collections.Counter((i.image, i.expression) for i in items)
    assert max(per_image.values()) == 1


def test_accuracy_curve_plot_is_a_png(tmp_path):
    from spr_plugin.evaluation.report import plot_accuracy_curves, rec_table

    rows = {"a": rec_summary([0.9, 0.6, None]), "b": rec_summary([0.95, 0.85, 0.7])}
    png = plot_accuracy_curves(rows, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = rec_table(rows)
    assert "Acc@0.9" in table and "IoU >= threshold" in table


def test_ground_truth_answers_score_perfectly_on_real_images(synthetic_scenes):
    """The harness itself is not the bottleneck: answers written from the GT boxes score ~IoU 1."""
    from spr_plugin.evaluation.rec import score_answer

    fmt = get_box_format("qwen2_vl")
    items = rec_items_from_detections(synthetic_scenes, synthetic_scenes.parent / "images")[:10]
    ious = []
    for it in items:
        from PIL import Image

        with Image.open(it.image) as im:
            w, h = im.size
        ious.append(score_answer(it, fmt.render(it.expression, it.box, w, h), fmt)["iou"])
    s = rec_summary(ious)
    assert s.accuracy["0.9"] == 1.0 and s.mean_iou > 0.97  # only [0,1000) grid rounding is lost
