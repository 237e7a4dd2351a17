"""Scorer ablation: how often does the chosen/rejected choice change with the semantic scorer and grounder?

Scores the same candidates with every configuration (``text``, ``clip``, ``clip+text``, each without and
with the Grounding DINO phrase grounder), builds the pairs as ``spr pair`` would, and compares each
configuration's pairs with the default (``text``, no grounder): per region, is the chosen candidate the
same, the rejected one, both?

Input: ``--regions`` + ``--candidates`` (default: the demo's ``runs/demo/work`` files if they exist,
otherwise a small set rendered here with ``spr_plugin.demo.scenes`` and candidates like the tests').
Models: ``--clip-model`` and ``--grounder`` folders; without them tiny **random** CLIP and Grounding
DINO checkpoints are built in ``--out/models`` so the code paths run offline, and then the numbers say
nothing about CLIP or Grounding DINO: the output says so.

    python bench/ablation_scorers.py --out runs/ablation_scorers
    python bench/ablation_scorers.py --clip-model /models/clip-vit-base-patch32 --grounder /models/grounding-dino-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from spr_plugin.core.jsonl import read_jsonl  # noqa: E402
from spr_plugin.core.records import Region  # noqa: E402
from spr_plugin.families.profiles import get_box_format  # noqa: E402
from spr_plugin.generation.candidates import read_candidates  # noqa: E402
from spr_plugin.scoring.factory import load_grounder, load_semantic_scorer  # noqa: E402
from spr_plugin.scoring.scorer import CandidateScorer  # noqa: E402
from spr_plugin.scoring.stage import score_refine_pair  # noqa: E402
from spr_plugin.settings import PairingConfig, ScoringConfig  # noqa: E402

DEMO = REPO / "runs" / "demo" / "work"
SEMANTICS = ("text", "clip", "clip+text")


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, str]:
    if args.regions and args.candidates:
        return args.regions, args.candidates, "given files"
    if (DEMO / "regions.jsonl").exists() and (DEMO / "candidates.jsonl").exists():
        return DEMO / "regions.jsonl", DEMO / "candidates.jsonl", f"demo run ({DEMO})"
    from candidates_factory import write_candidates
    from spr_plugin.core.jsonl import atomic_write_jsonl
    from spr_plugin.demo.scenes import render_scenes
    from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions

    root = args.out / "scenes"
    ann = render_scenes(root, n_images=12, seed=0)
    regions = list(sample_regions(load_coco(ann), ann.parent / "images", RegionConfig(seed=0)))
    atomic_write_jsonl(args.out / "regions.jsonl", [r.to_dict() for r in regions])
    write_candidates(args.out / "regions.jsonl", args.out / "candidates.jsonl")
    return args.out / "regions.jsonl", args.out / "candidates.jsonl", "rendered scenes + test-style candidates"


def _models(args: argparse.Namespace) -> tuple[str, str, bool]:
    if args.clip_model and args.grounder:
        return str(args.clip_model), str(args.grounder), False
    from spr_plugin.testing.tiny_checkpoints import build_tiny_clip, build_tiny_grounding_dino

    clip = str(args.clip_model or build_tiny_clip(args.out / "models" / "tiny-clip"))
    gdino = str(args.grounder or build_tiny_grounding_dino(args.out / "models" / "tiny-grounding-dino"))
    return clip, gdino, True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regions", type=Path)
    ap.add_argument("--candidates", type=Path)
    ap.add_argument("--clip-model", type=Path, help="CLIP folder (default: a tiny random one, numbers meaningless)")
    ap.add_argument("--grounder", type=Path, help="Grounding DINO folder (default: a tiny random one)")
    ap.add_argument("--grounder-threshold", type=float, default=None, help="default 0.35, or 0.0 for the tiny detector")
    ap.add_argument("--lam", type=float, default=0.8)
    ap.add_argument("--min-margin", type=float, default=0.05)
    ap.add_argument("--box-format", default="qwen2_vl")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation_scorers"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    regions_path, cands_path, source = _inputs(args)
    regions = list(read_jsonl(regions_path, Region.from_dict, what="region"))
    candidates = read_candidates(cands_path)
    clip, gdino, tiny = _models(args)
    threshold = args.grounder_threshold if args.grounder_threshold is not None else (0.0 if tiny else 0.35)
    print(f"data: {source}: {len(regions)} regions, {len(candidates)} candidates")
    print(f"CLIP: {clip}\ngrounder: {gdino} (box threshold {threshold})")
    if tiny:
        print("NOTE: tiny RANDOM CLIP / Grounding DINO: the clip and grounder rows only show that the code runs;")
        print("      their numbers mean nothing. Pass --clip-model and --grounder with real checkpoints.")

    semantic = {s: load_semantic_scorer(ScoringConfig(semantic=s, clip_model=clip)) for s in SEMANTICS}
    grounder = load_grounder(ScoringConfig(grounder=gdino, grounder_box_threshold=threshold))
    fmt = get_box_format(args.box_format)
    results, picks = [], {}
    for name in SEMANTICS:
        for use_grounder in (False, True):
            label = name + (" +grounder" if use_grounder else "")
            cfg = ScoringConfig(
                args.box_format, args.lam, semantic=name, clip_model=clip if name != "text" else None,
                grounder=gdino if use_grounder else None, grounder_box_threshold=threshold,
            )  # fmt: skip
            scorer = CandidateScorer(cfg, semantic[name], fmt, grounder=grounder if use_grounder else None)
            t0 = time.perf_counter()
            pairs, stats = score_refine_pair(regions, candidates, scorer, PairingConfig(args.min_margin), progress=False)
            seconds = time.perf_counter() - t0
            picks[label] = {p.region.region_id: (p.chosen.candidate.key, p.rejected.candidate.key) for p in pairs}
            grounded = sum(p.chosen.localization.n_grounded + p.rejected.localization.n_grounded for p in pairs)
            results.append({"config": label, "pairs": len(pairs), "seconds": round(seconds, 1), "grounded_boxes": grounded})

    ref = picks["text"]
    for row in results:
        mine = picks[row["config"]]
        both = [r for r in ref if r in mine]
        n = len(both) or 1
        row["regions_compared"] = len(both)
        row["chosen_changed_%"] = round(100 * sum(ref[r][0] != mine[r][0] for r in both) / n, 1)
        row["rejected_changed_%"] = round(100 * sum(ref[r][1] != mine[r][1] for r in both) / n, 1)
        row["pair_changed_%"] = round(100 * sum(ref[r] != mine[r] for r in both) / n, 1)
        row["paired_only_here"] = len(set(mine) - set(ref))
        row["paired_only_in_text"] = len(set(ref) - set(mine))

    cols = ["config", "pairs", "chosen_changed_%", "rejected_changed_%", "pair_changed_%", "paired_only_here",
            "paired_only_in_text", "grounded_boxes", "seconds"]  # fmt: skip
    print(f"\nchanges against the default (text, no grounder); lambda={args.lam}, min margin={args.min_margin}")
    print(" | ".join(cols))
    for row in results:
        print(" | ".join(str(row[c]) for c in cols))
    out = {"source": source, "clip_model": clip, "grounder": gdino, "tiny_random_models": tiny, "rows": results}
    (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
