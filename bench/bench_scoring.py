"""Scoring throughput: CandidateScorer (default text scorer) vs raw sentence embedding of the same texts.

The scorer's necessary work is one ``encode`` call over the unique strings it needs (plain descriptions,
region reference sentences, category names, phrase labels). Everything else -- parsing boxes, Hungarian
matching, cosine bookkeeping -- is overhead; the target is < 10 % on top of the embedding time.

Prints candidates/s for: the scorer end to end; raw ``encode`` of the same unique strings (same model,
same batch size); raw ``encode`` of the candidate texts alone (a reference point). Best of ``--repeats``
(the machine is shared, the minimum is the least disturbed run).

    python bench/bench_scoring.py                       # rendered scenes, synthetic grounded candidates
    python bench/bench_scoring.py --regions R.jsonl --candidates C.jsonl
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spr_plugin.core.jsonl import read_jsonl  # noqa: E402
from spr_plugin.core.records import Box, Candidate, Region  # noqa: E402
from spr_plugin.families.profiles import get_box_format  # noqa: E402
from spr_plugin.generation.candidates import read_candidates  # noqa: E402
from spr_plugin.scoring.scorer import CandidateScorer  # noqa: E402
from spr_plugin.scoring.semantic import TextSemanticScorer, region_reference_text  # noqa: E402
from spr_plugin.settings import ScoringConfig  # noqa: E402

FILLERS = ("The region shows", "I can see", "In this area there are", "This part of the image contains", "Here we have")


def synthetic_candidates(n_images: int, per_region: int, seed: int = 0) -> tuple[list[Region], list[Candidate]]:
    """Rendered scenes -> regions -> grounded descriptions with jittered, missing and invented boxes."""
    from spr_plugin.demo.scenes import render_scenes
    from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions

    root = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    coco_path = render_scenes(root, n_images=n_images, seed=seed)
    regions = list(sample_regions(load_coco(coco_path), coco_path.parent / "images", RegionConfig(regions_per_image=2)))
    fmt = get_box_format("qwen2_vl")
    rng = random.Random(seed)
    cands = []
    for r in regions:
        for i in range(per_region):
            objs = rng.sample(list(r.objects), k=max(1, len(r.objects) - rng.randint(0, 2)))
            parts = []
            for o in objs:
                j = rng.uniform(0.0, 0.4)
                b = o.box
                box = Box(b.x1 - j * b.width, b.y1 + j * b.height / 2, b.x2 + j * b.width / 2, b.y2 - j * b.height / 3)
                parts.append(fmt.render(o.category, box, r.width, r.height))
            if rng.random() < 0.3:
                parts.append(fmt.render("pink elephant", Box(0, 0, r.width / 5, r.height / 5), r.width, r.height))
            cands.append(Candidate(r.region_id, "synthetic", i, f"{rng.choice(FILLERS)} {', '.join(parts)}."))
    return regions, cands


def scorer_strings(scorer: CandidateScorer, items) -> list[str]:
    """The unique strings the text scorer embeds for these items (what its encode call receives)."""
    fmt = scorer.box_format
    texts = []
    for r, c in items:
        parse = fmt.parse(c.text, r.width, r.height)
        texts += [fmt.plain_text(c.text, r.width, r.height), region_reference_text(r), *r.categories]
        texts += [p.label for p in parse.phrases if p.label]
    return list(dict.fromkeys(texts))


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=Path)
    ap.add_argument("--candidates", type=Path)
    ap.add_argument("--images", type=int, default=60, help="rendered scenes when no files are given")
    ap.add_argument("--per-region", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    if a.regions and a.candidates:
        regions = list(read_jsonl(a.regions, Region.from_dict, what="region"))
        cands = read_candidates(a.candidates)
    else:
        regions, cands = synthetic_candidates(a.images, a.per_region)
    by_id = {r.region_id: r for r in regions}
    items = [(by_id[c.region_id], c) for c in cands if c.region_id in by_id]

    semantic = TextSemanticScorer.load(batch_size=a.batch_size)
    scorer = CandidateScorer(ScoringConfig(), semantic)
    model = semantic.model
    strings = scorer_strings(scorer, items)
    plain = list(dict.fromkeys(scorer.box_format.plain_text(c.text, r.width, r.height) for r, c in items))

    def encode(texts):
        model.encode(texts, batch_size=a.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    encode(strings[:64])  # warm-up (thread pools, first-call allocations)
    scorer.score(items[:32])
    t_scorer = best_of(a.repeats, lambda: scorer.score(items))
    t_embed = best_of(a.repeats, lambda: encode(strings))
    t_plain = best_of(a.repeats, lambda: encode(plain))
    n = len(items)
    print(f"candidates: {n} in {len(regions)} regions; unique strings embedded by the scorer: {len(strings)}")
    print(f"CandidateScorer (text)                : {n / t_scorer:8.1f} candidates/s  ({t_scorer:.2f} s)")
    print(f"raw encode, the scorer's unique strings: {n / t_embed:8.1f} candidates/s  ({t_embed:.2f} s)")
    print(f"raw encode, candidate texts only       : {n / t_plain:8.1f} candidates/s  ({t_plain:.2f} s)")
    print(f"overhead beyond embedding              : {100 * (t_scorer / t_embed - 1):6.1f} %  (target < 10 %)")


if __name__ == "__main__":
    main()
