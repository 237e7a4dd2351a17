"""The Qwen3-VL, InternVL and GLM-4.1V families (#20): their box syntaxes both ways (round trips, real answers as the
families write them, every bad box counted, never a crash), their profiles, prompts and LLaMA-Factory templates,
and the recipe checks that keep one frame and one tiling from sampling to training."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.options import BOX_FORMATS
from spr_plugin.core.records import Box
from spr_plugin.families.box_formats import DROP, GLM4VFormat, InternVLFormat, Qwen3VLFormat
from spr_plugin.families.profiles import get_box_format, get_profile
from spr_plugin.families.prompts import build_prompt, prompt_template, training_prompt
from spr_plugin.llamafactory.recipe_check import check_recipe, write_meta

W, H = 640, 480
FAMILIES = ("qwen3_vl", "internvl", "glm4v")

# -- real answers, as the families write them ---------------------------------------------------------------

QWEN3_ANSWER = """The region shows a red circle to the left of a blue square.

```json
[
  {"bbox_2d": [100, 200, 300, 400], "label": "red circle"},
  {"bbox_2d": [500, 250, 700, 500], "label": "blue square"}
]
```"""


def test_qwen3_fenced_json_with_prose_is_read_on_the_relative_grid():
    fmt = get_box_format("qwen3_vl")
    parse = fmt.parse(QWEN3_ANSWER, W, H)
    assert parse.dropped == {} and parse.clamped == 0
    assert [p.label for p in parse.phrases] == ["red circle", "blue square"]
    assert parse.boxes == [Box(64.0, 96.0, 192.0, 192.0), Box(320.0, 120.0, 448.0, 240.0)]
    # the grid does not depend on the image size or on the run's pre-resize frame
    small = get_box_format("qwen3_vl", ImageFrame(12544, 1024))
    scaled = [v for b in small.parse(QWEN3_ANSWER, 64, 48).boxes for v in b.as_list()]
    assert scaled == pytest.approx([6.4, 9.6, 19.2, 19.2, 32.0, 12.0, 44.8, 24.0])
    assert small.render_box(Box(0, 0, 32, 24), 64, 48) == fmt.render_box(Box(0, 0, 320, 240), 640, 480) == "[0, 0, 500, 500]"
    # 1000 is the right/bottom edge (Qwen3-VL writes round(x / W * 1000)), not an overshoot
    assert fmt.render_box(Box(0, 0, W, H), W, H) == "[0, 0, 1000, 1000]"


def test_qwen3_plain_text_keeps_the_prose_and_the_labels_it_does_not_name():
    fmt = get_box_format("qwen3_vl")
    assert fmt.plain_text(QWEN3_ANSWER, W, H) == "The region shows a red circle to the left of a blue square."
    only_json = '```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}, {"bbox_2d": [5, 5, 50, 50], "label": "cat"}]\n```'
    assert fmt.plain_text(only_json, W, H) == "dog, cat"
    assert fmt.plain_text("A dog " + only_json, W, H) == "A dog cat"


def test_qwen3_bad_objects_are_counted_and_cleaning_keeps_valid_json():
    fmt = get_box_format("qwen3_vl")
    text = (
        "Two shapes.\n```json\n[\n"
        '  {"bbox_2d": [10, 20, 300, 400], "label": "red circle"},\n'
        '  {"bbox_2d": [400, 20, 300, 400], "label": "reversed"},\n'
        '  {"bbox_2d": [10, 20, 3000, 400], "label": "far out"},\n'
        '  {"bbox_2d": [10, 20, 300], "label": "three numbers"},\n'
        '  {"bbox_2d": [-5, 0, 1004, 990], "label": "overshoot"},\n'
        '  {"bbox_2d": [5, 5'
    )
    parse = fmt.parse(text, W, H)
    assert parse.dropped == {"reversed": 1, "out_of_range": 1, "garbage": 1, "truncated": 1}
    assert parse.clamped == 1  # a slight overshoot is clamped, not dropped
    assert [p.label for p in parse.phrases if p.box is not None] == ["red circle", "overshoot"]
    cleaned = fmt.clean(text, W, H)
    block = re.search(r"```json\n(.*)\n```", cleaned, re.DOTALL)
    assert cleaned.startswith("Two shapes.") and block is not None
    assert [o["label"] for o in json.loads(block.group(1))] == ["red circle", "overshoot"]
    again = fmt.parse(cleaned, W, H)
    assert again.dropped == {} and [p.label for p in again.phrases] == ["red circle", "overshoot"]
    # nothing usable left: the prose stays, no empty JSON block; a clean answer is left as it is
    assert fmt.clean('Nothing.\n```json\n[\n  {"bbox_2d": [400, 20, 300, 400], "label": "x"}\n]\n```', W, H) == "Nothing."
    assert fmt.clean(QWEN3_ANSWER, W, H) == QWEN3_ANSWER


def test_qwen3_rewrite_snaps_and_drops_inside_the_fence():
    fmt = get_box_format("qwen3_vl")
    parse = fmt.parse(QWEN3_ANSWER, W, H)
    out = fmt.rewrite(QWEN3_ANSWER, parse, {0: Box(0, 0, 64, 48), 1: DROP}, W, H)
    block = re.search(r"```json\n(.*)\n```", out, re.DOTALL)
    assert json.loads(block.group(1)) == [{"bbox_2d": [0, 0, 100, 100], "label": "red circle"}]
    assert out.startswith("The region shows a red circle")


INTERNVL_ANSWER = (
    "The region shows <ref>two cups</ref><box>[[100, 200, 300, 400], [500, 250, 700, 500]]</box> "
    "on <ref>a table</ref><box>[[0, 500, 1000, 1000]]</box>."
)


def test_internvl_several_boxes_per_reference():
    fmt = get_box_format("internvl")
    parse = fmt.parse(INTERNVL_ANSWER, W, H)
    assert parse.dropped == {}
    assert [p.label for p in parse.phrases] == ["two cups", "two cups", "a table"]
    assert parse.boxes == [Box(64.0, 96.0, 192.0, 192.0), Box(320.0, 120.0, 448.0, 240.0), Box(0.0, 240.0, 640.0, 480.0)]
    assert parse.phrases[0].span == parse.phrases[1].span  # one reference owns both boxes
    # one box of the two is ungrounded: the other stays inside the same <box>
    out = fmt.rewrite(INTERNVL_ANSWER, parse, {0: None}, W, H)
    assert out.startswith("The region shows <ref>two cups</ref><box>[[500, 250, 700, 500]]</box> on")
    # snapping both writes them back into one <box>, as InternVL does
    both = fmt.rewrite(INTERNVL_ANSWER, parse, {0: Box(0, 0, 64, 48), 1: Box(64, 48, 128, 96)}, W, H)
    assert "<ref>two cups</ref><box>[[0, 0, 100, 100], [100, 100, 200, 200]]</box>" in both
    assert fmt.plain_text(INTERNVL_ANSWER, W, H) == "The region shows two cups on a table."
    dropped = fmt.rewrite(INTERNVL_ANSWER, parse, {2: DROP}, W, H)
    assert dropped.endswith("</box> on .") and "table" not in dropped


@pytest.mark.parametrize(
    "box_text, reason",
    [
        ("<box>[[12, abc, 40, 50]]</box>", "garbage"),
        ("<box>[[12, 30], [40, 50]]</box>", "garbage"),
        ("<box>[[12, 30, 40, 50]", "truncated"),
        ("<box>[[12, 30, 40", "truncated"),
        ("<box>[[12, 30, 4000, 50]]</box>", "out_of_range"),
        ("<box>[[-300, 30, 40, 50]]</box>", "out_of_range"),
        ("<box>[[400, 30, 40, 50]]</box>", "reversed"),
        ("<box>[[40, 30, 40, 50]]</box>", "zero_area"),
    ],
)
def test_internvl_bad_boxes_are_dropped_and_counted(box_text, reason):
    fmt = get_box_format("internvl")
    text = f"A <ref>dog</ref>{box_text} and {fmt.render('cat', Box(10, 20, 200, 180), W, H)}"
    parse = fmt.parse(text, W, H)
    assert parse.dropped == {reason: 1}
    assert len(parse.boxes) == 1
    assert [p.label for p in parse.phrases] == ["dog", "cat"]
    cleaned = fmt.clean(text, W, H)
    assert "dog" in cleaned and cleaned.count("<box>") == cleaned.count("<ref>") == 1
    if reason != "garbage":  # numeric debris goes with the tags; words inside a garbled box are left as words
        assert cleaned == "A dog and <ref>cat</ref><box>[[16, 42, 312, 375]]</box>"
    assert fmt.parse(cleaned, W, H).dropped == {}


def test_internvl_one_bad_box_of_several_keeps_the_others():
    fmt = get_box_format("internvl")
    parse = fmt.parse("<ref>cups</ref><box>[[10, 10, 50, 50], [60, 60, 5000, 90], [100, 100, 200, 200]]</box>", W, H)
    assert parse.dropped == {"out_of_range": 1}
    assert [p.box is not None for p in parse.phrases] == [True, False, True]


def test_internvl_slight_overshoot_is_clamped_and_the_grid_is_relative():
    fmt = get_box_format("internvl")
    parse = fmt.parse("<box>[[-3, 0, 1000, 1015]]</box>", W, H)
    assert parse.dropped == {} and parse.clamped == 1 and parse.boxes == [Box(0.0, 0.0, W, H)]
    assert fmt.render_box(Box(0, 0, 320, 240), 640, 480) == fmt.render_box(Box(0, 0, 32, 24), 64, 48)
    assert fmt.render("dog", Box(0, 0, 320, 240), 640, 480) == "<ref>dog</ref><box>[[0, 0, 500, 500]]</box>"


GLM_ANSWER = (
    "The coordinates of the second bottle are <|begin_of_box|>[[94,598,177,991]]<|end_of_box|>. "
    "Two cups <|begin_of_box|>[[100, 200, 300, 400], [500, 250, 700, 500]]<|end_of_box|> stand on the table."
)


def test_glm_bare_boxes_as_glm_writes_them():
    fmt = get_box_format("glm4v")
    parse = fmt.parse(GLM_ANSWER, W, H)
    assert parse.dropped == {} and [p.label for p in parse.phrases] == ["", "", ""]
    assert parse.boxes[1:] == [Box(64.0, 96.0, 192.0, 192.0), Box(320.0, 120.0, 448.0, 240.0)]
    assert fmt.render("dog", Box(0, 0, 320, 240), W, H) == "dog <|begin_of_box|>[[0, 0, 500, 500]]<|end_of_box|>"
    assert fmt.plain_text(GLM_ANSWER, W, H) == "The coordinates of the second bottle are . Two cups stand on the table."
    # a box of the two is unusable: cleaning keeps the other in the same markers; a non-box answer is garbage
    text = "Cups <|begin_of_box|>[[1, 2, 300, 400], [500, 500, 600, 5000]]<|end_of_box|>, "
    text += "answer <|begin_of_box|>B. Yes.<|end_of_box|>"
    parse = fmt.parse(text, W, H)
    assert parse.dropped == {"out_of_range": 1, "garbage": 1}
    assert fmt.clean(text, W, H) == "Cups <|begin_of_box|>[[1, 2, 300, 400]]<|end_of_box|>, answer B. Yes."
    # consecutive bare boxes stay separate (no reference can capture them)
    two = fmt.render_box(Box(0, 0, 64, 48), W, H) + " " + fmt.render_box(Box(64, 48, 128, 96), W, H)
    assert fmt.clean(two, W, H) == two and len(fmt.parse(two, W, H).phrases) == 2


# -- property-based: round trips and fuzz -------------------------------------------------------------------

_label_chars = st.characters(codec="utf-8", exclude_characters='<>{}[]"\\')
_labels = st.text(_label_chars, min_size=1, max_size=20).map(str.strip).filter(bool)


@st.composite
def _boxes(draw) -> Box:
    x1 = draw(st.floats(0, W - 8))
    y1 = draw(st.floats(0, H - 8))
    return Box(x1, y1, draw(st.floats(x1 + 4, W)), draw(st.floats(y1 + 4, H)))


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(_labels, _boxes()), min_size=1, max_size=6))
def test_render_parse_round_trip(name, items):
    fmt = get_box_format(name)
    if name == "qwen3_vl":
        objects = ",\n  ".join(fmt.render(label, box, W, H) for label, box in items)
        text = f"Some prose first.\n```json\n[\n  {objects}\n]\n```\nAnd after."
        assert json.loads(text.split("```json\n")[1].split("\n```")[0])  # what it writes is JSON
    else:
        text = "The region shows " + ", ".join(fmt.render(label, box, W, H) for label, box in items) + "."
    parse = fmt.parse(text, W, H)
    expected = ["" for _ in items] if name == "glm4v" else [label for label, _ in items]  # GLM boxes carry no label
    assert [p.label for p in parse.phrases] == expected
    tol = max(W, H) / 1000 + 1e-6  # one grid step
    for got, (_, want) in zip(parse.boxes, items, strict=True):
        assert all(abs(a - b) <= tol for a, b in zip(got.as_list(), want.as_list()))
    # rewriting every phrase to its own box leaves a text that parses to the same boxes
    same = fmt.rewrite(text, parse, {i: p.box for i, p in enumerate(parse.phrases)}, W, H)
    assert fmt.parse(same, W, H).boxes == parse.boxes


_MARKERS = ["<ref>", "</ref>", "<box>", "</box>", "<|begin_of_box|>", "<|end_of_box|>", "[[", "]]", "[", "]", ", ", "{", "}"]
_MARKERS += ['"bbox_2d": ', '"label": ', "```json", "```"]


@pytest.mark.parametrize("name", [*FAMILIES, "qwen2_vl", "qwen2_5_vl_json"])
@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.one_of(st.sampled_from(_MARKERS), st.integers(-2000, 3000).map(str), st.text(max_size=8)), max_size=40))
def test_no_input_crashes_any_parser(name, pieces):
    fmt = get_box_format(name)
    text = "".join(pieces)
    parse = fmt.parse(text, W, H)
    assert all(b.area > 0 and 0 <= b.x1 < b.x2 <= W and 0 <= b.y1 < b.y2 <= H for b in parse.boxes)
    for i, p in enumerate(parse.phrases):
        assert 0 <= p.span[0] <= p.span[1] <= len(text), i
    assert isinstance(fmt.plain_text(text, W, H), str)
    cleaned = fmt.clean(text, W, H)
    assert fmt.parse(cleaned, W, H).dropped.get("truncated", 0) == 0 or name == "qwen2_5_vl_json"
    fmt.rewrite(text, parse, {i: DROP for i in range(len(parse.phrases))}, W, H)


@pytest.mark.parametrize("name", FAMILIES)
def test_hostile_sizes_parse_in_linear_time(name):
    import time

    fmt = get_box_format(name)
    for text in ("<box>" * 20000, "[[1, 2, " * 20000, '{"bbox_2d" ' * 20000, "<ref>" + "a" * 200000):
        start = time.perf_counter()
        fmt.parse(text, W, H)
        fmt.clean(text, W, H)
        assert time.perf_counter() - start < 5.0


# -- profiles, prompts, templates ---------------------------------------------------------------------------


def test_profiles_are_the_cli_choices_and_name_real_llamafactory_templates():
    from llamafactory.data.template import TEMPLATES

    assert set(FAMILIES) <= set(BOX_FORMATS)
    plugins = {"qwen3_vl": "Qwen3VLPlugin", "internvl": "InternVLPlugin", "glm4v": "GLM4VPlugin"}
    for name in FAMILIES:
        profile = get_profile(name)
        fmt = get_box_format(name)
        assert isinstance(fmt, (Qwen3VLFormat, InternVLFormat, GLM4VFormat)) and fmt.name == name
        for template in profile.templates:
            assert type(TEMPLATES[template].mm_plugin).__name__ == plugins[name], template
    assert get_profile("qwen3_vl").template == "qwen3_vl_nothink" and "qwen3_vl" in get_profile("qwen3_vl").templates
    assert get_profile("internvl").template == "intern_vl"
    assert get_profile("glm4v").templates == ("glm4v", "glm4_5v")


def test_cli_accepts_the_family_names():
    from spr_plugin.cli import build_parser

    for name in FAMILIES:
        args = build_parser().parse_args(["pair", "--regions", "r", "--candidates", "c", "--out", "o", "--box-format", name])
        assert args.box_format == name


def test_prompts_write_the_query_region_in_the_family_syntax(tmp_path):
    from PIL import Image

    from helpers import region

    image = tmp_path / "im.jpg"
    Image.new("RGB", (W, H)).save(image)
    reg = region(path=str(image))
    for name in FAMILIES:
        fmt = get_box_format(name)
        text = training_prompt(reg, fmt)
        assert (
            text
            == prompt_template(fmt).format(box=fmt.render_box(reg.box, W, H))
            == prompt_template(name).format(box=fmt.render_box(reg.box, W, H))
        )
        assert text.count("<image>") == 1 and fmt.render_box(reg.box, W, H) in text
        refs = build_prompt("refs", reg, fmt)
        crop = build_prompt("crop", reg, fmt)
        assert len(crop.images) == 2 and crop.text.count("<image>") == 2
        start, end = get_profile(name).reference_marks
        assert f"{start}red circle{end}" in refs.text
    # InternVL's prompt box and references are its own tags; its REC prompt is its documented grounding request
    fmt = get_box_format("internvl")
    assert fmt.parse(training_prompt(reg, fmt), W, H).boxes == fmt.parse(fmt.render_box(reg.box, W, H), W, H).boxes
    assert get_profile("internvl").rec_prompt.endswith("<ref>{expression}</ref>")
    assert "JSON" in get_profile("qwen3_vl").rec_prompt and "JSON" in training_prompt(reg, get_box_format("qwen3_vl"))


# -- recipes: shipped files, templates and tiling -----------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, stem", [("qwen3_vl", "spr_qwen3vl"), ("internvl", "spr_internvl"), ("glm4v", "spr_glm4v")])
def test_shipped_recipes_match_their_family(name, stem):
    from spr_plugin.llamafactory.registry import build_entries

    entries = json.loads((ROOT / "recipes/dataset_info.json").read_text())
    gpu = yaml.safe_load((ROOT / f"recipes/{stem}.yaml").read_text())
    cpu = yaml.safe_load((ROOT / f"recipes/{stem}_cpu_demo.yaml").read_text())
    for recipe in (gpu, cpu):
        assert recipe["template"] == get_profile(name).template and recipe["stage"] == "dpo"
        assert recipe["pref_loss"] == "sigmoid" and "crop_to_patches" not in recipe
    assert {k: entries[k] for k in build_entries(stem)} == build_entries(stem)
    assert gpu["dataset"] == stem


def _meta(data, name, box_format):
    meta = {"box_format": box_format, "template": get_profile(box_format).template, "frame": ImageFrame().to_dict()}
    write_meta(data, name, meta)


def test_check_recipe_knows_each_family_template_and_internvl_tiling(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _meta(data, "q3", "qwen3_vl")
    _meta(data, "ivl", "internvl")
    _meta(data, "q2", "qwen2_vl")

    def check(dataset, **keys):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({"dataset": dataset, "dataset_dir": str(data), **keys}))
        return check_recipe(path)

    for template in ("qwen3_vl_nothink", "qwen3_vl", "qwen3_5_nothink"):
        assert "match" in check("q3", template=template)[0]
    with pytest.raises(SPRError, match="template=qwen2_vl but dataset 'q3' was written for template=qwen3_vl_nothink"):
        check("q3", template="qwen2_vl")
    with pytest.raises(SPRError, match="template mismatch"):
        check("q2", template="qwen3_vl")  # the alternatives are per family, not global
    assert "match" in check("ivl", template="intern_vl")[0]
    assert "match" in check("ivl", template="intern_vl", crop_to_patches=False)[0]
    with pytest.raises(SPRError, match="tiling mismatch: .*crop_to_patches=true"):
        check("ivl", template="intern_vl", crop_to_patches=True)
    assert "match" in check("q3", template="qwen3_vl", crop_to_patches=True)[0]  # Qwen's plugin never reads it
    with pytest.raises(SPRError, match="image frame mismatch"):
        check("ivl", template="intern_vl", image_max_pixels=12544)


def test_a_thinking_reply_keeps_its_answer_only():
    """Qwen3-VL-Thinking and GLM-4.1V-Thinking reason before answering: the reasoning is no part of the description."""
    from spr_plugin.core.sanitize import sanitize_answer
    from spr_plugin.generation.transformers_backend import clean_output

    glm = "<think>Cups on the left...</think><answer>Two cups <|begin_of_box|>[[1, 2, 30, 40]]<|end_of_box|>.</answer>"
    assert clean_output(glm) == "Two cups <|begin_of_box|>[[1, 2, 30, 40]]<|end_of_box|>."
    keep = get_profile("glm4v").kept_tokens
    assert sanitize_answer(glm, keep)[0] == "Two cups <|begin_of_box|>[[1, 2, 30, 40]]<|end_of_box|>."
    assert sanitize_answer("<think>cut off while reasoning about [[1, 2", keep)[0] == ""  # no answer was given
    qwen = 'Let me look.</think>\n\nA dog.\n```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]\n```'
    assert get_box_format("qwen3_vl").plain_text(clean_output(qwen), W, H) == "A dog."
    assert clean_output("A plain answer with no reasoning.") == "A plain answer with no reasoning."
