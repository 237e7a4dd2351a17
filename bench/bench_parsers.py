"""Hostile sizes: seconds to parse, plain-text, clean and sanitise large texts, per box format.

Model output and candidate files are arbitrary text; a step that is quadratic in the text length turns one
500 kB server reply into a hang of ``spr build`` / ``spr pair``. This prints, for every box format and for
the sanitiser, the time for texts of 125 kB .. 1 MB built from well-formed and from malformed pieces, and
the ratio between the 1 MB and the 500 kB time (about 2 when linear, 4 when quadratic). Best of
``--repeats`` (the machine is shared; the minimum is the least disturbed run).

    python bench/bench_parsers.py              # all formats, 1 MB max
    python bench/bench_parsers.py --max-kb 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spr_plugin.core.sanitize import remove_tokens, sanitize_answer  # noqa: E402
from spr_plugin.families.box_formats import BOX_END, BOX_START, REF_END, REF_START  # noqa: E402
from spr_plugin.families.profiles import QWEN_GROUNDING_TOKENS, available_formats, get_box_format  # noqa: E402

W, H = 1280, 960

#: Repeated units: well-formed grounding, and the malformed shapes that made regex parsers backtrack.
UNITS: dict[str, str] = {
    "grounded": f"a {REF_START}red car{REF_END}{BOX_START}(100,200),(300,400){BOX_END} and ",
    "json_objects": '{"bbox_2d": [10, 20, 300, 400], "label": "red car"}, ',
    "unclosed_refs": f"{REF_START}car {BOX_START}(1,2),(3,",
    "unclosed_json": '{"bbox_2d" ',
    "stray_markers": f"{BOX_END}{REF_END}(1,2),(3,4) ",
    "nested_media": "<im<image>age><|vision_<|image_pad|>start|>",
}


def text_of(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def best(fn: Callable[[str], object], text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-kb", type=int, default=1000, help="largest text, in kB (default 1000 = 1 MB)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    sizes = [a.max_kb * 1000 // 8, a.max_kb * 1000 // 4, a.max_kb * 1000 // 2, a.max_kb * 1000]
    steps: dict[str, Callable[[str], object]] = {}
    for name in available_formats():
        fmt = get_box_format(name)
        steps[f"{name}.parse"] = lambda t, f=fmt: f.parse(t, W, H)
        steps[f"{name}.plain_text"] = lambda t, f=fmt: f.plain_text(t, W, H)
        steps[f"{name}.clean"] = lambda t, f=fmt: f.clean(t, W, H)
    steps["sanitize.remove_tokens"] = lambda t: remove_tokens(t, QWEN_GROUNDING_TOKENS)
    steps["sanitize.answer"] = lambda t: sanitize_answer(t, QWEN_GROUNDING_TOKENS)
    head = f"{'step':34} {'text':14} " + " ".join(f"{s // 1000:>7}kB" for s in sizes) + "   ratio"
    print(head)
    print("-" * len(head))
    worst = 0.0
    for step, fn in steps.items():
        for unit_name, unit in UNITS.items():
            secs = [best(fn, text_of(unit, s), a.repeats) for s in sizes]
            ratio = secs[-1] / secs[-2] if secs[-2] > 1e-4 else float("nan")
            worst = max(worst, secs[-1])
            print(f"{step:34} {unit_name:14} " + " ".join(f"{t:8.3f}s" for t in secs) + f"   {ratio:5.2f}")
    print(f"\nslowest step on a {a.max_kb} kB text: {worst:.3f} s")


if __name__ == "__main__":
    main()
