"""Small builders of records shared by the unit tests."""

from spr_plugin.core.records import AnnotatedObject, Box, Candidate, Region

W, H = 640, 480


def region(boxes=((64, 48, 128, 96), (320, 240, 400, 320)), cats=("red circle", "blue square"), path="/nonexistent.jpg"):
    objs = tuple(AnnotatedObject(i + 1, c, Box(*b)) for i, (b, c) in enumerate(zip(boxes, cats)))
    union = objs[0].box
    for o in objs[1:]:
        union = union.union(o.box)
    return Region("1_0", 1, path, W, H, union, objs, 1)


def cand(text, idx=0, variant="box_text", region_id="1_0"):
    return Candidate(region_id, variant, idx, text)


def load_bench(name: str):
    """Import a ``bench/`` script as a module (bench/ holds scripts, not a package)."""
    import importlib
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)
