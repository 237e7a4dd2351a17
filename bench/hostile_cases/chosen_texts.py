"""Hostile candidate texts against refinement (#22): floods of absent-object names and of box debris, in every box
format, must leave a refined (chosen) text with neither, and the measurement must agree."""

from __future__ import annotations

from hostile_cases import HostileCase

FORMATS = ("qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json")


def _region():
    from spr_plugin.core.records import AnnotatedObject, Box, Region

    objs = (AnnotatedObject(1, "red circle", Box(64, 48, 128, 96)), AnnotatedObject(2, "blue square", Box(320, 240, 400, 320)))
    return Region(
        "1_0", 1, "/nonexistent.jpg", 640, 480, Box(64, 48, 400, 320), objs, 1, in_image=("red circle", "blue square", "dog")
    )


def _check(text_of, name: str) -> None:
    from spr_plugin.core.records import Candidate
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.scoring.mentions import Vocabulary, describe
    from spr_plugin.scoring.refine import refine_candidate

    fmt, region = get_box_format(name), _region()
    vocab = Vocabulary.of(["red circle", "blue square", "purple square", "green triangle", "dog"])
    text = text_of(fmt, region)
    for policy in ("correct", "strip", "drop"):
        out = refine_candidate(Candidate("1_0", "h", 0, text), region, fmt, policy=policy, vocabulary=vocab).candidate.text
        facts = describe(out, region, fmt, vocab)
        assert facts.hallucinated == 0 and facts.debris == 0, (name, policy, out[:200])
        assert fmt.parse(out, region.width, region.height).dropped == {}, (name, policy, out[:200])


def _flood(fmt, region) -> str:
    unit = fmt.render("red circle", region.objects[0].box, region.width, region.height)
    return f"{unit} and " + "a purple square, some GREEN TRIANGLES and " * 400 + "a dog."


def _debris(fmt, region) -> str:
    unit = fmt.render("blue square", region.objects[1].box, region.width, region.height)
    return f"{unit}" + "<|box_end|>,174,495,655,59,29273,2716 (12,40),(5" * 300 + '[{"bbox_2d": [5, 6'


def _case(kind, text_of, name):
    return HostileCase("chosen texts", f"{kind} ({name})", lambda _tmp, t=text_of, n=name: _check(t, n))


CASES: list[HostileCase] = [
    *(_case("absent-name flood", _flood, n) for n in FORMATS),
    *(_case("debris flood", _debris, n) for n in FORMATS),
]
