"""What the hallucination penalty's weight does to rewards and pair choices (docs/scoring.md, "Hallucinated mentions").

S = λ·S_sem + (1-λ)·S_loc - w·h, with h the share of a description's judged mentions that name categories absent
from the image (:mod:`spr_plugin.scoring.mentions`). Without the penalty (w = 0) neither part sees a name written
in plain words: MiniLM's S_sem hardly moves when absent objects are appended, S_loc cannot (no boxes).

Two worlds, real regions and the default text scorer (MiniLM): rendered shape scenes (16 colour x shape
categories, regions sampled by ``spr regions``), and hand-made regions over COCO's 80 category names. Per region:

* ``G``: every object of the region named and boxed on its annotation ("The region shows a A [box], ...").
* ``G+k``: ``G`` with k absent categories appended in plain words (", and a X").
* ``O``: ``G`` with one object left out (honest, one box short); ``J``: ``G`` with every box jittered to IoU ~0.7.

Printed, per weight w: the mean reward of G+k (k = 0..8, through :class:`spr_plugin.trl.grpo_reward.SPRReward`'s
score), the share of regions where the reward falls with *every* appended object (monotone), and how often the
honest O and J outrank G+1 (a pair built from these would reject the hallucinating one). A weight should make
the reward fall with every hallucinated name and make a hallucination cost more than one missing box, without
making a hallucination outweigh the grounding of the whole region (G+1 must still beat an answer with no box).

    python bench/bench_hallucination_penalty.py [--regions 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spr_plugin.core.records import AnnotatedObject, Box, Candidate, Region  # noqa: E402
from spr_plugin.families.profiles import get_box_format  # noqa: E402
from spr_plugin.scoring.mentions import Vocabulary  # noqa: E402
from spr_plugin.scoring.scorer import CandidateScorer  # noqa: E402
from spr_plugin.scoring.semantic import TextSemanticScorer  # noqa: E402
from spr_plugin.settings import ScoringConfig  # noqa: E402
from spr_plugin.trl.grpo_reward import SPRReward  # noqa: E402

COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter bench "
    "bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis "
    "snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork "
    "knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed "
    "dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock "
    "vase scissors teddy_bear hair_drier toothbrush"
).split()
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75)
KS = (0, 1, 2, 4, 8)
FMT = get_box_format("qwen2_vl")


def shape_regions(n: int, seed: int) -> tuple[list[Region], list[str]]:
    from spr_plugin.demo.scenes import CATEGORY_NAMES, render_scenes
    from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions

    root = Path(tempfile.mkdtemp(prefix="bench_halluc_"))
    coco_path = render_scenes(root, n_images=max(4, n // 2), seed=seed)
    regions = list(sample_regions(load_coco(coco_path), coco_path.parent / "images", RegionConfig(regions_per_image=2)))
    return regions[:n], list(CATEGORY_NAMES)


def coco_regions(n: int, seed: int) -> tuple[list[Region], list[str]]:
    rng = random.Random(seed)
    names = [c.replace("_", " ") for c in COCO_NAMES]
    out = []
    for i in range(n):
        cats = rng.sample(names, 7)
        objs = []
        for j, cat in enumerate(cats[:5]):
            x, y = 20 + j * 110, 40 + rng.randint(0, 200)
            objs.append(AnnotatedObject(j + 1, cat, Box(x, y, x + 80 + rng.randint(0, 20), y + 60 + rng.randint(0, 40))))
        union = objs[0].box
        for o in objs[1:]:
            union = union.union(o.box)
        out.append(Region(f"c{i}", i, "/nonexistent.jpg", 640, 480, union, tuple(objs), 1, in_image=tuple(cats)))
    return out, names


def _jitter(b: Box) -> Box:
    dx, dy = 0.09 * b.width, 0.09 * b.height  # shifts right and down: IoU ~0.7 with the annotation
    return Box(b.x1 + dx, b.y1 + dy, b.x2 + dx, b.y2 + dy)


def texts_for(region: Region, absent: list[str], rng: random.Random) -> dict[str, str]:
    w, h = region.width, region.height
    units = [FMT.render(o.category, o.box, w, h) for o in region.objects]
    out = {}
    for k in range(max(KS) + 1):
        extra = "".join(f", and a {name}" for name in absent[:k])
        out[f"G+{k}"] = f"The region shows {', '.join(units)}{extra}."
    drop = rng.randrange(len(units))
    out["O"] = f"The region shows {', '.join(u for i, u in enumerate(units) if i != drop)}."
    out["J"] = f"The region shows {', '.join(FMT.render(o.category, _jitter(o.box), w, h) for o in region.objects)}."
    out["no boxes"] = f"The region shows {', '.join(o.category for o in region.objects)}."
    return out


def run_world(name: str, regions: list[Region], vocab: list[str], semantic: TextSemanticScorer, seed: int) -> None:
    rng = random.Random(seed)
    keys: list[str] = []
    per_region: list[dict[str, str]] = []
    for r in regions:
        present = set(r.in_image) | {o.category for o in r.objects}
        absent = [v for v in vocab if v not in present]
        rng.shuffle(absent)
        per_region.append(texts_for(r, absent, rng))
        keys = list(per_region[-1])
    print(f"\n## {name}: {len(regions)} regions, {statistics.fmean(len(r.objects) for r in regions):.1f} objects each")
    print(
        "\n| w | " + " | ".join(f"G+{k}" for k in KS) + " | reward falls with every name | O > G+1 | J > G+1 | G+1 > no boxes |"
    )
    print("|---" * (len(KS) + 5) + "|")
    for w in WEIGHTS:
        scorer = CandidateScorer(ScoringConfig(hallucination_penalty=w), semantic, FMT, vocabulary=Vocabulary.of(vocab))
        reward = SPRReward(scorer)
        flat = [(r, t[k]) for r, t in zip(regions, per_region) for k in keys]
        results = reward.score([t for _, t in flat], [r for r, _ in flat])
        table = [dict(zip(keys, (x.reward for x in results[i * len(keys) : (i + 1) * len(keys)]))) for i in range(len(regions))]
        mean = {k: statistics.fmean(t[f"G+{k}"] for t in table) for k in KS}
        monotone = sum(all(t[f"G+{k}"] < t[f"G+{k - 1}"] for k in range(1, max(KS) + 1)) for t in table) / len(table)
        o_wins = sum(t["O"] > t["G+1"] for t in table) / len(table)
        j_wins = sum(t["J"] > t["G+1"] for t in table) / len(table)
        still = sum(t["G+1"] > t["no boxes"] for t in table) / len(table)
        cells = " | ".join(f"{mean[k]:.3f}" for k in KS)
        print(f"| {w:g} | {cells} | {monotone:.0%} | {o_wins:.0%} | {j_wins:.0%} | {still:.0%} |")
    base = [replace(r) for r in regions]  # S_sem alone: what appending does to the semantic part
    scorer = CandidateScorer(ScoringConfig(hallucination_penalty=0.0), semantic, FMT, vocabulary=Vocabulary.of(vocab))
    items = [
        (r, Candidate(r.region_id, "b", i, t[k])) for r, t in zip(base, per_region) for i, k in enumerate(("G+0", "G+1", "G+8"))
    ]
    sem = [s.semantic.score for s in scorer.score(items)]
    d1 = [sem[3 * i + 1] - sem[3 * i] for i in range(len(regions))]
    d8 = [sem[3 * i + 2] - sem[3 * i] for i in range(len(regions))]
    print(
        f"\nS_sem change from appending absent names (w plays no part): 1 name mean {statistics.fmean(d1):+.4f} "
        f"(max {max(d1):+.4f}), 8 names mean {statistics.fmean(d8):+.4f} (max {max(d8):+.4f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    semantic = TextSemanticScorer.load()
    for name, make in (("shape scenes", shape_regions), ("COCO names", coco_regions)):
        regions, vocab = make(a.regions, a.seed)
        run_world(name, regions, vocab, semantic, a.seed)


if __name__ == "__main__":
    main()
