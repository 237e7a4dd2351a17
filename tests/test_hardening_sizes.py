"""Hostile sizes: every box format's parse, plain-text and clean steps are linear in the text length.

A quadratic step turns one 500 kB server reply into a hang of ``spr build``. Timing figures belong to
``bench/bench_parsers.py``; here only the growth is checked (doubling the text may at most ~triple the
best-of-three time; quadratic would quadruple it) plus a generous bound for 1 MB.
"""

from __future__ import annotations

import time

import pytest

from spr_plugin.families.box_formats import BOX_END, BOX_START, REF_END, REF_START
from spr_plugin.families.profiles import available_formats, get_box_format

W, H = 1280, 960
UNITS = {
    "grounded": f"a {REF_START}red car{REF_END}{BOX_START}(100,200),(300,400){BOX_END} and ",
    "json_objects": '{"bbox_2d": [10, 20, 300, 400], "label": "red car"}, ',
    "unclosed_refs": f"{REF_START}car {BOX_START}(1,2),(3,",
    "unclosed_json": '{"bbox_2d" ',
    "stray_markers": f"{BOX_END}{REF_END}(1,2),(3,4) ",
    # InternVL's and GLM-4.xV's units (#20)
    "internvl_grounded": "a <ref>red car</ref><box>[[100, 200, 300, 400], [5, 6, 70, 80]]</box> and ",
    "glm_boxes": "a red car <|begin_of_box|>[[100, 200, 300, 400]]<|end_of_box|> and ",
    "unclosed_lists": "<ref>car <box>[[1, 2, 3, <|begin_of_box|>[[",
}


def _text(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _best(fn, text: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.parametrize("fmt_name", available_formats())
@pytest.mark.parametrize("step", ["parse", "plain_text", "clean"])
@pytest.mark.parametrize("unit", list(UNITS))
def test_box_format_steps_grow_linearly(fmt_name, step, unit):
    fmt = get_box_format(fmt_name)
    fn = getattr(fmt, step)
    small, large = _text(UNITS[unit], 50_000), _text(UNITS[unit], 100_000)
    t_small = _best(lambda t: fn(t, W, H), small)
    t_large = _best(lambda t: fn(t, W, H), large)
    assert t_large < 3.2 * t_small + 0.02, (t_small, t_large)


@pytest.mark.parametrize("fmt_name", available_formats())
def test_one_megabyte_of_hostile_text_parses_in_bounded_time(fmt_name):
    """A generous bound (the measured figure is well under a second, bench/bench_parsers.py)."""
    fmt = get_box_format(fmt_name)
    text = "".join(_text(unit, 200_000) for unit in UNITS.values())
    start = time.perf_counter()
    result = fmt.parse(text, W, H)
    fmt.plain_text(text, W, H)
    assert time.perf_counter() - start < 10.0
    assert result.phrases  # it did find the well-formed units
