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


def region_candidates(region: Region, seed: int = 0) -> list[dict]:
    """Three candidates per region: close boxes, loose boxes plus a hallucination, and no boxes."""
    fmt = get_box_format("qwen2_vl")
    rng = random.Random(f"{seed}:{region.region_id}")
    w, h = region.width, region.height
    good = ", ".join(fmt.render(o.category, _jitter(o.box, rng, 0.05), w, h) for o in region.objects)
    loose = ", ".join(fmt.render(o.category, _jitter(o.box, rng, 0.4), w, h) for o in region.objects[:2])
    loose += " and " + fmt.render("pink elephant", Box(0, 0, w / 4, h / 4), w, h)
    texts = [f"The region shows {good}.", f"The region shows {loose}.", "The region shows some shapes."]
    return [{"region_id": region.region_id, "variant": "test", "sample_idx": i, "text": t} for i, t in enumerate(texts)]


def write_candidates(regions_jsonl, out_path) -> int:
    lines = []
    with open(regions_jsonl) as f:
        for line in f:
            lines += region_candidates(Region.from_dict(json.loads(line)))
    with open(out_path, "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in lines)
    return len(lines)
