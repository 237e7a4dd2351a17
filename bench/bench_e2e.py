"""End-to-end throughput of the embedded default: rendered scenes -> regions -> candidates from the tiny
local Qwen2-VL (the demo's warmed-up copy if ``runs/demo`` has one, else a fresh random one) -> scores ->
pairs -> LLaMA-Factory dataset. No training. Prints regions/min per stage and peak resident memory.

    python bench/bench_e2e.py                      # 12 scenes, 3 samples per prompt variant
    python bench/bench_e2e.py --images 48 --model runs/demo/tiny-qwen2vl-warm
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spr_plugin.core.errors import SPRError  # noqa: E402
from spr_plugin.generation.transformers_backend import TransformersGenerator  # noqa: E402
from spr_plugin.pipeline import build_dataset  # noqa: E402
from spr_plugin.regions.sampling import RegionConfig  # noqa: E402
from spr_plugin.settings import BuildConfig, GenerationConfig, PairingConfig  # noqa: E402

WARM = REPO / "runs" / "demo" / "tiny-qwen2vl-warm"


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident set size of this process and of its waited-for children, in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--num-samples", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=160, help="the demo's setting")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", type=Path, default=None)
    a = ap.parse_args()

    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS, render_scenes
    from spr_plugin.demo.tiny_model import build_tiny_qwen2vl

    work = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    model = a.model or (WARM if (WARM / "model.safetensors").is_file() else None)
    if model is None:
        model = build_tiny_qwen2vl(work / "tiny-qwen2vl", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])
        print("model: fresh random tiny Qwen2-VL (no warmed-up demo model found; outputs will rarely parse)")
    else:
        print(f"model: {model}")
    t0 = time.monotonic()
    scenes = render_scenes(work / "scenes", n_images=a.images, seed=0)
    gen = GenerationConfig(
        model=str(model),
        num_samples=a.num_samples,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=a.max_new_tokens,
        batch_size=a.batch_size,
    )
    cfg = BuildConfig(
        annotations=scenes,
        image_root=scenes.parent / "images",
        work_dir=work / "work",
        dataset_dir=work / "data",
        name="bench_e2e",
        regions=RegionConfig(k=4, regions_per_image=2, seed=0),
        pairing=PairingConfig(min_margin=0.02),
        generation=gen,
        progress=False,
    )
    t_setup = time.monotonic() - t0
    t1 = time.monotonic()
    try:
        summary = build_dataset(cfg, TransformersGenerator(gen)).to_dict()
    except SPRError as exc:  # no pair survived: the counts are still in summary.json
        print(f"build: {exc}")
        summary = json.loads((work / "work" / "summary.json").read_text())
    total = time.monotonic() - t1
    n_regions = summary["regions"]["regions"]
    g = summary["generation"]
    own, children = peak_rss_mb()
    print(f"scenes: {a.images}, regions: {n_regions}, candidates: {g['generated']}, pairs: {summary['pairs']['pairs']}")
    print(f"render scenes: {t_setup:.1f} s")
    print(f"generation: {g['seconds']:.1f} s, {g['candidates_per_second']:.2f} candidates/s")
    print(f"build total (model load, regions, generation, scoring, pairing, export): {total:.1f} s")
    print(f"end to end: {60 * n_regions / total:.1f} regions/min")
    print(f"peak RSS: {own:.0f} MiB (this process), {children:.0f} MiB (largest child)")


if __name__ == "__main__":
    main()
