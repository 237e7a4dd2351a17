"""Candidate texts for tests: grounded descriptions derived from a region's annotations with
controlled errors (jittered, hallucinated and missing boxes), so scores have a known order."""

import json
import random

from spr_plugin.core.records import Box, Region
from spr_plugin.families.profiles import get_box_format


def _jitter(box: Box, rng: random.Random, amount: float) -> Box:
    w, h = box.width, box.height
    return Box(
        box.x1 + rng.uniform(-amount, amount) * w,
        box.y1 + rng.uniform(-amount, amount) * h,
        box.x2 + rng.uniform(-amount, amount) * w,
        box.y2 + rng.uniform(-amount, amount) * h,
    )


def describe(fmt, items: list[tuple[str, Box]], w: int, h: int) -> str:
    """A grounded description of ``items`` (label, box) in the family's own shape: inline units for the token
    syntaxes, prose followed by a fenced JSON list for the JSON ones (as Qwen2.5-VL / Qwen3-VL answer)."""
    if not items:
        return "The region shows some shapes."
    if fmt.name.endswith("json") or fmt.name == "qwen3_vl":
        names = ", ".join(label for label, _ in items)
        objects = ",\n  ".join(fmt.render(label, box, w, h) for label, box in items)
        return f"The region shows {names}.\n```json\n[\n  {objects}\n]\n```"
    return "The region shows " + ", ".join(fmt.render(label, box, w, h) for label, box in items) + "."


def region_candidates(region: Region, seed: int = 0, box_format: str = "qwen2_vl") -> list[dict]:
    """Three candidates per region: close boxes, loose boxes plus a hallucination, and no boxes."""
    fmt = get_box_format(box_format)
    rng = random.Random(f"{seed}:{region.region_id}")
    w, h = region.width, region.height
    if box_format == "qwen2_vl":  # the texts every existing Qwen2-VL test was written against
        good = ", ".join(fmt.render(o.category, _jitter(o.box, rng, 0.05), w, h) for o in region.objects)
        loose = ", ".join(fmt.render(o.category, _jitter(o.box, rng, 0.4), w, h) for o in region.objects[:2])
        loose += " and " + fmt.render("pink elephant", Box(0, 0, w / 4, h / 4), w, h)
        texts = [f"The region shows {good}.", f"The region shows {loose}.", "The region shows some shapes."]
    else:
        good_items = [(o.category, _jitter(o.box, rng, 0.05)) for o in region.objects]
        loose_items = [(o.category, _jitter(o.box, rng, 0.4)) for o in region.objects[:2]]
        loose_items.append(("pink elephant", Box(0, 0, w / 4, h / 4)))
        texts = [describe(fmt, good_items, w, h), describe(fmt, loose_items, w, h), describe(fmt, [], w, h)]
    return [{"region_id": region.region_id, "variant": "test", "sample_idx": i, "text": t} for i, t in enumerate(texts)]


def write_candidates(regions_jsonl, out_path, box_format: str = "qwen2_vl") -> int:
    lines = []
    with open(regions_jsonl) as f:
        for line in f:
            lines += region_candidates(Region.from_dict(json.loads(line)), box_format=box_format)
    with open(out_path, "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in lines)
    return len(lines)


def build_family_dataset(root, box_format: str, name: str, image_max_pixels: int, n_images: int = 4):
    """A finished ``spr build`` in ``box_format`` from scripted candidates (close, loose + hallucinated, unboxed)
    over rendered scenes, in the given frame: returns (dataset dir, the scenes' instances.json, regions.jsonl)."""
    from pathlib import Path

    from helpers import run_spr
    from spr_plugin.demo.scenes import render_scenes

    root = Path(root)
    scenes = render_scenes(root / "scenes", n_images=n_images, seed=21)
    regions, candidates, data = root / "regions.jsonl", root / "candidates.jsonl", root / "data"
    proc = run_spr("regions", "--annotations", scenes, "--images", scenes.parent / "images", "--out", regions)
    assert proc.returncode == 0, proc.stderr
    write_candidates(regions, candidates, box_format=box_format)
    cmd = ["build", "--annotations", scenes, "--images", scenes.parent / "images", "--candidates", candidates]
    cmd += ["--work-dir", root / "work", "--dataset-dir", data, "--name", name, "--min-margin", "0"]
    cmd += ["--box-format", box_format, "--image-max-pixels", str(image_max_pixels)]
    proc = run_spr(*cmd)
    assert proc.returncode == 0, proc.stderr
    return data, scenes, regions
