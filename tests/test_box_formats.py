"""Box formats: round trips per format, frames, and every kind of bad box counted, never raised."""

import json

import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessor

from spr_plugin.core.errors import SPRError
from spr_plugin.core.records import Box
from spr_plugin.families.box_formats import ResizeSpec
from spr_plugin.families.profiles import get_box_format

W, H = 640, 480
BOXES = [Box(10, 20, 200, 180), Box(300.5, 100.2, 639, 479), Box(0, 0, 5, 7)]


def _close(a: Box, b: Box, tol: float) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a.as_list(), b.as_list()))


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json"])
def test_render_parse_round_trip(name):
    fmt = get_box_format(name)
    text = "The region shows " + ", ".join(fmt.render(f"obj {i}", b, W, H) for i, b in enumerate(BOXES)) + "."
    parse = fmt.parse(text, W, H)
    assert parse.dropped == {}
    assert [p.label for p in parse.phrases] == ["obj 0", "obj 1", "obj 2"]
    # One frame unit of rounding error, expressed in pixels.
    fw, fh = fmt.frame_size(W, H)
    tol = max(W / fw, H / fh) + 1e-6
    for got, want in zip(parse.boxes, BOXES):
        assert _close(got, want, tol), (got, want)


def test_qwen2vl_is_normalised_to_1000_grid_independent_of_size():
    fmt = get_box_format("qwen2_vl")
    assert fmt.render_box(Box(0, 0, 320, 240), 640, 480) == "<|box_start|>(0,0),(500,500)<|box_end|>"
    assert fmt.render_box(Box(0, 0, 32, 24), 64, 48) == "<|box_start|>(0,0),(500,500)<|box_end|>"
    # The grid is [0, 1000): the right/bottom edge is written as 999, never 1000.
    assert fmt.render_box(Box(0, 0, 640, 480), 640, 480) == "<|box_start|>(0,0),(999,999)<|box_end|>"
    (box,) = fmt.parse("<|box_start|>(100,200),(500,750)<|box_end|>", 640, 480).boxes
    assert box == Box(64.0, 96.0, 320.0, 360.0)


def test_qwen25vl_frame_matches_what_the_model_sees():
    """Qwen2.5-VL boxes are pixels of the resized input: the frame must equal the processor's grid."""
    spec = ResizeSpec(min_pixels=56 * 56, max_pixels=28 * 28 * 64, pre_max_pixels=300 * 300)
    fmt = get_box_format("qwen2_5_vl", resize=spec)
    processor = Qwen2VLImageProcessor(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    for w, h in [(640, 480), (333, 777), (100, 60)]:
        image = Image.new("RGB", (w, h))
        # LLaMA-Factory's own pre-resize (image_max_pixels) happens before the processor.
        if w * h > spec.pre_max_pixels:
            f = (spec.pre_max_pixels / (w * h)) ** 0.5
            image = image.resize((int(w * f), int(h * f)))
        grid = processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert fmt.frame_size(w, h) == (grid[2] * 14, grid[1] * 14)
    # Same pixel box, different text in the two Qwen generations: never interchangeable.
    assert get_box_format("qwen2_vl").render_box(BOXES[0], W, H) != fmt.render_box(BOXES[0], W, H)


def test_multiple_boxes_after_one_reference():
    fmt = get_box_format("qwen2_vl")
    text = (
        "<|object_ref_start|>two cups<|object_ref_end|>"
        "<|box_start|>(0,0),(100,100)<|box_end|><|box_start|>(200,200),(300,300)<|box_end|> on a table"
    )
    parse = fmt.parse(text, W, H)
    assert [p.label for p in parse.phrases] == ["two cups", "two cups"]
    assert len(parse.boxes) == 2


@pytest.mark.parametrize(
    "box_text, reason",
    [
        ("<|box_start|>(12,abc),(40,50)<|box_end|>", "garbage"),
        ("<|box_start|>(12,30),(40,50)", "truncated"),
        ("<|box_start|>(12,30),(40", "truncated"),
        ("<|box_start|>(12,30),(4000,50)<|box_end|>", "out_of_range"),
        ("<|box_start|>(-300,30),(40,50)<|box_end|>", "out_of_range"),
        ("<|box_start|>(400,30),(40,50)<|box_end|>", "reversed"),
        ("<|box_start|>(40,30),(40,50)<|box_end|>", "zero_area"),
    ],
)
def test_bad_boxes_are_dropped_and_counted(box_text, reason):
    fmt = get_box_format("qwen2_vl")
    text = f"A <|object_ref_start|>dog<|object_ref_end|>{box_text} and {fmt.render('cat', BOXES[0], W, H)}"
    parse = fmt.parse(text, W, H)
    assert parse.dropped == {reason: 1}
    assert len(parse.boxes) == 1  # the good box survives the bad one
    assert [p.label for p in parse.phrases] == ["dog", "cat"]


def test_slight_overshoot_is_clamped_not_dropped():
    fmt = get_box_format("qwen2_vl")
    parse = fmt.parse("<|box_start|>(-3,0),(1000,1005)<|box_end|>", W, H)
    assert parse.dropped == {} and parse.clamped == 1
    assert parse.boxes == [Box(0.0, 0.0, W, H)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no boxes at all",
        "<|box_end|><|object_ref_end|><|box_start|>",
        "<|object_ref_start|>unterminated reference",
        "<|box_start|>" * 50,
        '[{"bbox_2d": [1, 2, 3], "label": "x"}, {"bbox_2d": "oops"}',
        "\x00\uffff<|box_start|>(1e9,1),(2,3)<|box_end|>",
    ],
)
@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json"])
def test_garbage_never_raises(name, text):
    fmt = get_box_format(name)
    parse = fmt.parse(text, W, H)
    assert all(b.area > 0 for b in parse.boxes)
    assert isinstance(fmt.plain_text(text, W, H), str)


def test_json_format_counts_bad_objects_and_truncation():
    fmt = get_box_format("qwen2_5_vl_json")
    text = '```json\n[{"bbox_2d": [1, 2, 3], "label": "a"}, {"bbox_2d": [10, 10, 50, 60], "label": "b"}, {"bbox_2d": [5, 5'
    parse = fmt.parse(text, W, H)
    assert parse.dropped == {"garbage": 1, "truncated": 1}
    assert [p.label for p in parse.phrases if p.box is not None] == ["b"]


def test_rewrite_snaps_and_ungrounds():
    fmt = get_box_format("qwen2_vl")
    text = f"A {fmt.render('dog', BOXES[0], W, H)} near {fmt.render('cat', BOXES[1], W, H)}."
    parse = fmt.parse(text, W, H)
    out = fmt.rewrite(text, parse, {0: Box(0, 0, 64, 48), 1: None}, W, H)
    assert out == "A <|object_ref_start|>dog<|object_ref_end|><|box_start|>(0,0),(100,100)<|box_end|> near cat."
    assert fmt.plain_text(text, W, H) == "A dog near cat."


def test_json_rewrite_keeps_valid_json():
    fmt = get_box_format("qwen2_5_vl_json")
    text = "[" + ", ".join(fmt.render(f"o{i}", b, W, H) for i, b in enumerate(BOXES)) + "]"
    parse = fmt.parse(text, W, H)
    for drop in range(3):
        out = fmt.rewrite(text, parse, {drop: None}, W, H)
        assert [o["label"] for o in json.loads(out)] == [f"o{i}" for i in range(3) if i != drop]


def test_unknown_format_is_a_clear_error():
    with pytest.raises(SPRError, match="unknown box format 'qwen9'"):
        get_box_format("qwen9")
