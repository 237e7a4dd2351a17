"""The embedded default: the whole SPR chain on a fresh CPU machine, with nothing downloaded.

    rendered scenes (COCO json) -> tiny local Qwen2-VL (+ short warm-up SFT so it writes boxes)
    -> query regions -> sampled candidates -> scores -> refined pairs -> LLaMA-Factory dataset
    -> `llamafactory-cli train` LoRA DPO -> saved adapter

Every step reuses what a previous (possibly interrupted) run already finished: the scenes and the
model are rebuilt only if missing, candidate generation resumes from its JSONL file.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS, render_scenes
from spr_plugin.demo.tiny_model import build_tiny_qwen2vl
from spr_plugin.demo.warmup import warmup_sft
from spr_plugin.generation.backends import make_generator
from spr_plugin.llamafactory.shipped_recipes import RECIPES_DIR
from spr_plugin.llamafactory.train import run_train
from spr_plugin.pipeline import BuildSummary, build_dataset
from spr_plugin.regions.sampling import RegionConfig
from spr_plugin.settings import BuildConfig, DemoConfig, GenerationConfig, PairingConfig

logger = logging.getLogger(__name__)

DEMO_DATASET = "spr_demo"
#: The demo's one image frame: warm-up SFT, sampling and recipes/spr_qwen2vl_cpu_demo.yaml all use it.
DEMO_FRAME = ImageFrame(image_max_pixels=12544)


@dataclass(frozen=True)
class DemoResult:
    summary: BuildSummary
    dataset_dir: Path
    adapter_dir: Path | None
    train_loss: float | None


def _step(i: int, text: str) -> None:
    logger.info("[%d/6] %s", i, text)


def run_demo(config: DemoConfig) -> DemoResult:
    if config.recipe is None:  # the shipped one: the demo runs from any folder
        config = replace(config, recipe=RECIPES_DIR / "spr_qwen2vl_cpu_demo.yaml")
    out = config.out_dir.resolve()
    if config.train and not config.recipe.is_file():
        raise SPRError(
            f"training recipe not found: {config.recipe} (pass an existing --recipe, or list the shipped ones with: spr recipes)"
        )
    t0 = time.monotonic()

    _step(1, "rendering synthetic scenes with COCO-format boxes")
    scenes = render_scenes(out / "scenes", n_images=config.n_images, seed=config.seed)

    _step(2, "building a tiny random Qwen2-VL locally")
    base = build_tiny_qwen2vl(out / "tiny-qwen2vl", seed=config.seed, corpus=[*CATEGORY_NAMES, *SCENE_WORDS])

    warm = out / "tiny-qwen2vl-warm"
    if not (warm / "model.safetensors").is_file():
        _step(3, "warm-up SFT so the tiny model writes grounded descriptions (llamafactory-cli train, stage sft)")
        warm_scenes = render_scenes(out / "warmup_scenes", n_images=config.warmup_scenes, seed=config.seed + 1000)
        warmup_sft(
            base,
            warm_scenes,
            warm_scenes.parent / "images",
            warm,
            steps=config.warmup_steps,
            seed=config.seed,
            echo=True,
            image_max_pixels=DEMO_FRAME.image_max_pixels,
        )
    else:
        _step(3, f"reusing the warmed-up model in {warm}")

    _step(4, "regions -> candidates -> scores -> pairs -> LLaMA-Factory dataset")
    gen = GenerationConfig(
        model=str(warm),
        num_samples=config.num_samples,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=config.max_new_tokens,
        batch_size=8,
        seed=config.seed,
        frame=DEMO_FRAME,
    )
    build = BuildConfig(
        frame=DEMO_FRAME,
        recipe=config.recipe if config.train else None,  # the recipe must train in the frame the pairs come from
        annotations=scenes,
        image_root=scenes.parent / "images",
        work_dir=out / "work",
        dataset_dir=out / "data",
        name=DEMO_DATASET,
        regions=RegionConfig(k=4, regions_per_image=2, seed=config.seed),
        pairing=PairingConfig(min_margin=0.02),
        generation=gen,
        overwrite=True,
    )
    summary = build_dataset(build, make_generator(gen))
    logger.info("pairs: %s", json.dumps(summary.pairs.to_dict()))

    adapter, loss = None, None
    if config.train:
        _step(5, "LoRA DPO with llamafactory-cli train " + str(config.recipe))
        adapter = out / "spr_dpo_lora"
        if adapter.exists():
            shutil.rmtree(adapter)
        run_train(
            config.recipe,
            {"model_name_or_path": warm, "dataset_dir": out / "data", "dataset": DEMO_DATASET, "output_dir": adapter},
            log_path=out / "train_dpo.log",
        )
        if not (adapter / "adapter_model.safetensors").is_file():
            raise SPRError(f"training finished but no adapter was saved in {adapter}; see {out / 'train_dpo.log'}")
        loss = json.loads((adapter / "train_results.json").read_text()).get("train_loss")
        if loss is None or not math.isfinite(loss):
            raise SPRError(f"training loss is not finite ({loss}); see {out / 'train_dpo.log'}")
    _step(6, f"done in {time.monotonic() - t0:.0f} s")
    assert summary.export is not None
    print(f"\nSPR demo: {summary.export.records} preference pairs in {summary.export.dataset_file}")
    if adapter is not None:
        print(f"LoRA adapter: {adapter} (train loss {loss:.4f})")
    print(
        f"See them in LlamaBoard: spr webui --dataset-dir {out / 'data'} (Stage DPO lists {DEMO_DATASET}; the default "
        f"Stage lists {DEMO_DATASET}_chosen, the chosen-only SFT ablation: recipe spr_qwen2vl_chosen_sft_cpu_demo in spr recipes)"
    )
    return DemoResult(summary, out / "data", adapter, loss)
