"""Effect study: do SPR preference pairs improve a model's localization? (CPU, ~30 min)

    rendered scenes -> tiny Qwen2-VL -> pretraining (single-shape "where is the shape", in process,
    bench/vision_probe.py) -> SFT through LLaMA-Factory (grounded region descriptions + REC answers)
    -> SPR pairs from the SFT model's own samples -> (a) LoRA DPO on the pairs, (b) LoRA SFT on the
    chosen side only (the paper's ablation) -> REC and region evaluation on held-out scenes.

Everything is local: scenes are drawn with Pillow, the model is built from scratch, SFT and the
preference stage run through ``llamafactory-cli train``. Stages reuse finished outputs in ``--out``
(delete a folder to redo it). The numbers are written to ``--out/results.json`` and the plot to
``--out/rec_curve.png``.

Why the pretraining: SFT from random weights never made the tiny model's boxes depend on the image
(800-2500 steps); localization appears only after a phase change at several thousand steps of the
simplest task (bench/vision_probe.py). Why the SFT mixes in REC data: it gives the box tokens a
direct image signal besides the descriptions. docs/evaluation.md has the runs, numbers and diagnosis.

    python bench/effect_study.py --out runs/effect_study --seeds 0,1,2   # the reported run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One thread per process: on a shared 2-core machine, OpenMP spin-waiting of 2 threads per process
# under oversubscription stalled training for minutes (measured); 1 thread degrades gracefully.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data_builders.synthetic import CATEGORY_NAMES, SCENE_WORDS, render_scenes  # noqa: E402
from data_builders.warmup import DATASET_NAME, _copy_processor_files, write_sft_dataset  # noqa: E402
from spr_plugin.core.errors import SPRError  # noqa: E402
from spr_plugin.core.records import Region  # noqa: E402
from spr_plugin.evaluation.metrics import RecSummary, RegionSummary  # noqa: E402
from spr_plugin.evaluation.model import load_model  # noqa: E402
from spr_plugin.evaluation.rec import RecConfig, default_prompt, evaluate_rec, rec_prompt  # noqa: E402
from spr_plugin.evaluation.rec_data import RecItem, rec_items_from_detections  # noqa: E402
from spr_plugin.evaluation.region import RegionEvalConfig, evaluate_region  # noqa: E402
from spr_plugin.evaluation.report import plot_accuracy_curves, rec_table, region_table, write_json  # noqa: E402
from spr_plugin.families.box_formats import Qwen2VLFormat  # noqa: E402
from spr_plugin.llamafactory.registry import chosen_sft_name, read_dataset_info  # noqa: E402
from spr_plugin.llamafactory.train import CPU_RUN_SETTINGS, run_train, write_yaml  # noqa: E402
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions  # noqa: E402
from spr_plugin.testing.tiny_model import build_tiny_qwen2vl, set_image_budget  # noqa: E402

logger = logging.getLogger("effect_study")


@dataclass(frozen=True)
class StudyConfig:
    out: Path
    seed: int = 0
    # world
    size: tuple[int, int] = (448, 336)
    min_objects: int = 3
    max_objects: int = 5
    radius: tuple[float, float] = (0.12, 0.20)  # shape circumradius, fraction of the shorter side
    sft_scenes: int = 1000
    spr_scenes: int = 120
    test_scenes: int = 200
    region_k: int = 2  # a query region holds more than k objects
    position_cue: bool = False  # paint the background with an x/y colour gradient (see add_position_cue)
    # model
    hidden_size: int = 64
    num_layers: int = 2
    max_image_tokens: int = 16  # merged 28x28 visual tokens per image (processor max_pixels = 784 * this)
    # pretraining (bench/vision_probe.py): single-object "where is the shape" answers, in process
    pretrain_steps: int = 12000  # at most; 0 = start SFT from the random tiny model
    pretrain_scenes: int = 3000
    pretrain_seed: int = 1  # model init, data order and pretraining scenes (see pretrain_base)
    pretrain_target_acc: float = 0.8  # stop pretraining once held-out single-object Acc@0.5 reaches this
    # SFT
    sft_steps: int = 10000
    sft_lr: float = 3e-3
    train_vision: str = "all"  # which vision parts SFT trains: "all" (tower + projector), "projector", "none"
    rec_copies: int = 1  # REC records per REC-able object in the SFT set (0 = descriptions only)
    regions_per_image: int = 2
    # SPR
    num_samples: int = 4
    variants: tuple[str, ...] = ("box_text", "refs")
    temperature: float = 0.7  # at 1.0 the tiny model's samples were mostly broken text (empty answers, box debris)
    top_p: float = 0.9
    min_margin: float = 0.02
    lam: float = 0.8
    # preference / ablation training (LoRA)
    pref_epochs: float = 3.0
    pref_lr: float = 5e-4
    pref_beta: float = 0.1
    lora_rank: int = 8

    @property
    def max_pixels(self) -> int:
        return 28 * 28 * self.max_image_tokens


# ---------------------------------------------------------------------------------------- world


def make_world(cfg: StudyConfig) -> dict[str, Path]:
    """Three disjoint scene sets: SFT, SPR pair building and held-out test (different seeds)."""
    sets = {"sft": (cfg.sft_scenes, 1000), "spr": (cfg.spr_scenes, 2000), "test": (cfg.test_scenes, 3000)}
    out = {}
    for name, (n, offset) in sets.items():
        d = cfg.out / "world" / name
        js = d / "instances.json"
        if not js.is_file():
            render_scenes(
                d,
                n_images=n,
                seed=cfg.seed + offset,
                size=cfg.size,
                min_objects=cfg.min_objects,
                max_objects=cfg.max_objects,
                radius=cfg.radius,
            )
        if cfg.position_cue:
            add_position_cue(js)
        out[name] = js
    return out


def add_position_cue(scenes_json: Path) -> None:
    """Repaint background pixels with a colour gradient (red grows with x, blue with y).

    Why: Qwen2-VL's vision tower has no absolute position embedding (2D RoPE only) and the LM sees
    image-token positions only through M-RoPE rotations, so a 2-layer, 64-wide model has no easy way
    to turn "where the red circle is" into coordinate digits. A gradient puts absolute position into
    the pixel content itself. Shapes are saturated colours and stay untouched (background = pixels
    whose smallest channel is above 150); boxes do not change. Idempotent via a marker file.
    """
    import numpy as np
    from PIL import Image

    marker = scenes_json.parent / ".position_cue"
    if marker.exists():
        return
    for img_path in sorted((scenes_json.parent / "images").glob("*.jpg")):
        arr = np.asarray(Image.open(img_path).convert("RGB")).astype(np.float32)
        h, w, _ = arr.shape
        bg = arr.min(axis=2) > 150
        xs = np.linspace(0.0, 1.0, w)[None, :].repeat(h, 0)
        ys = np.linspace(0.0, 1.0, h)[:, None].repeat(w, 1)
        grad = np.stack([150 + 100 * xs, np.full_like(xs, 225.0), 150 + 100 * ys], axis=2)  # pale: never a shape colour
        arr[bg] = grad[bg]
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(img_path, format="JPEG", quality=90)
    marker.write_text("1")


def rec_items(scenes_json: Path) -> list[RecItem]:
    """REC items of a scene set: every object whose category name is unique in its image."""
    return rec_items_from_detections(scenes_json, scenes_json.parent / "images")


def held_out_regions(scenes_json: Path, cfg: StudyConfig) -> list[Region]:
    rc = RegionConfig(k=cfg.region_k, regions_per_image=1, seed=cfg.seed)
    return list(sample_regions(load_coco(scenes_json), scenes_json.parent / "images", rc))


# ---------------------------------------------------------------------------------------- training


def _base_train_config(model: Path, dataset: str, dataset_dir: Path, out: Path, cfg: StudyConfig) -> dict[str, Any]:
    return {
        **CPU_RUN_SETTINGS,
        "model_name_or_path": str(model),
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "template": "qwen2_vl",
        "cutoff_len": 512,
        "image_max_pixels": cfg.max_pixels,
        "output_dir": str(out),
        "seed": cfg.seed,
    }


def write_mixed_sft(scenes_json: Path, dataset_dir: Path, cfg: StudyConfig) -> tuple[Path, dict[str, int]]:
    """Grounded region descriptions (the warm-up data) plus single-object REC answers, shuffled together."""
    import random

    write_sft_dataset(
        scenes_json,
        scenes_json.parent / "images",
        dataset_dir,
        regions_per_image=cfg.regions_per_image,
        min_objects=cfg.region_k + 1,
        seed=cfg.seed,
    )
    path = dataset_dir / f"{DATASET_NAME}.json"
    records = json.loads(path.read_text())
    n_desc = len(records)
    fmt, template = Qwen2VLFormat(), default_prompt("qwen2_vl")
    rec_records = []
    for _ in range(cfg.rec_copies):
        for it in rec_items(scenes_json):
            w, h = cfg.size
            answer = fmt.render(it.expression, it.box, w, h)
            rec_records.append(
                {
                    "conversations": [
                        {"from": "human", "value": rec_prompt(it.expression, template)},
                        {"from": "gpt", "value": answer},
                    ],
                    "images": [it.image],
                }
            )
    records += rec_records
    random.Random(cfg.seed).shuffle(records)
    path.write_text(json.dumps(records))
    return dataset_dir, {"descriptions": n_desc, "rec": len(rec_records)}


def pretrain_base(cfg: StudyConfig) -> Path:
    """The base the SFT starts from: the random tiny model, or (default) one pretrained to localize.

    Why: SFT through LLaMA-Factory from random weights never made the boxes depend on the image in
    800-2500 steps (docs/evaluation.md). ``bench/vision_probe.py`` measured that the same tiny model
    does learn to localize a single shape after ~6000 steps of "where is the shape" answers, with
    the label hidden so that both name and box must come from the image. That stage plays the role
    of a real MLLM's pretraining; it runs in process because it is ~3x faster per step than a
    ``llamafactory-cli`` run here, and it is reused if its checkpoint exists.
    """
    if cfg.pretrain_steps <= 0:
        base = build_tiny_qwen2vl(
            cfg.out / "tiny_base",
            seed=cfg.seed,
            corpus=[*CATEGORY_NAMES, *SCENE_WORDS],
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
        )
        set_image_budget(base, cfg.max_pixels)
        return base
    from vision_probe import ProbeConfig, run_probe

    out = cfg.out / "pretrained"
    if not (out / "model.safetensors").is_file():
        probe = ProbeConfig(
            out=cfg.out / "pretrain",
            steps=cfg.pretrain_steps,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            max_image_tokens=cfg.max_image_tokens,
            scenes=cfg.pretrain_scenes,
            hide_label=True,
            eval_every=1000,
            target_acc=cfg.pretrain_target_acc,
            save=out,
            seed=cfg.pretrain_seed,
        )
        run_probe(probe)
    return out


def train_sft_model(world: dict[str, Path], cfg: StudyConfig) -> Path:
    out = cfg.out / "sft_model"
    if (out / "model.safetensors").is_file():
        return out
    base = pretrain_base(cfg)
    data_dir, counts = write_mixed_sft(world["sft"], cfg.out / "sft_data", cfg)
    logger.info("SFT data: %s", counts)
    conf = _base_train_config(base, DATASET_NAME, data_dir, out, cfg) | {
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": cfg.train_vision != "all",
        "freeze_multi_modal_projector": cfg.train_vision == "none",
        "per_device_train_batch_size": 8,
        "learning_rate": cfg.sft_lr,
        "max_steps": cfg.sft_steps,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, cfg.sft_steps // 20),
        "logging_steps": max(1, cfg.sft_steps // 10),
        "save_only_model": True,
    }
    run_train(write_yaml(cfg.out / "sft.yaml", conf), log_path=cfg.out / "sft.log", echo=False)
    _copy_processor_files(base, out)
    shutil.copy2(base / "processor_config.json", out / "processor_config.json")
    return out


def build_pairs(sft_model: Path, world: dict[str, Path], cfg: StudyConfig) -> Path:
    """SPR pairs from the SFT model's own samples on the SPR scene set (spr_plugin.pipeline)."""
    from spr_plugin.generation.transformers_backend import GenerationConfig, TransformersGenerator
    from spr_plugin.pipeline import BuildConfig, build_dataset
    from spr_plugin.scoring.pairing import PairingConfig
    from spr_plugin.scoring.scorer import ScoringConfig

    data = cfg.out / "spr_data"
    if (data / "spr_study.jsonl").is_file():
        return data
    gen = GenerationConfig(
        model=str(sft_model),
        num_samples=cfg.num_samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=160,
        batch_size=8,
        variants=cfg.variants,
        seed=cfg.seed,
    )
    build = BuildConfig(
        annotations=world["spr"],
        image_root=world["spr"].parent / "images",
        work_dir=cfg.out / "spr_work",
        dataset_dir=data,
        name="spr_study",
        regions=RegionConfig(k=cfg.region_k, regions_per_image=2, seed=cfg.seed),
        scoring=ScoringConfig(box_format="qwen2_vl", lam=cfg.lam),
        pairing=PairingConfig(min_margin=cfg.min_margin),
        generation=gen,
        image_mode="absolute",
        overwrite=True,
    )
    summary = build_dataset(build, TransformersGenerator(gen))
    logger.info("pairs: %s", json.dumps(summary.pairs.to_dict()))
    return data


def write_chosen_sft(dpo_data: Path) -> tuple[Path, str]:
    """The paper's ablation: the same pairs' chosen answers as plain SFT data (no rejected side), which every
    build registers next to the DPO dataset as ``<name>_chosen``."""
    name = chosen_sft_name("spr_study")
    if name not in read_dataset_info(dpo_data):
        raise SPRError(f"{dpo_data} has no {name} entry; rebuild the study's dataset")
    return dpo_data, name


def train_lora(stage: str, sft_model: Path, data_dir: Path, dataset: str, out: Path, cfg: StudyConfig, seed: int) -> Path:
    if (out / "adapter_model.safetensors").is_file():
        return out
    conf = _base_train_config(sft_model, dataset, data_dir, out, replace(cfg, seed=seed)) | {
        "stage": stage,
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": cfg.lora_rank,
        "lora_target": "all",
        "per_device_train_batch_size": 4,
        "learning_rate": cfg.pref_lr,
        "num_train_epochs": cfg.pref_epochs,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "logging_steps": 5,
    }
    if stage == "dpo":
        conf |= {"pref_beta": cfg.pref_beta, "pref_loss": "sigmoid"}
    run_train(write_yaml(out.parent / f"{out.name}.yaml", conf), log_path=out.parent / f"{out.name}.log", echo=False)
    return out


# ---------------------------------------------------------------------------------------- evaluation


def evaluate(
    name: str, base: Path, adapter: Path | None, items: list[RecItem], regions: list[Region], cfg: StudyConfig
) -> dict[str, Any]:
    loaded = load_model(base, adapter)
    ev = cfg.out / "eval"
    rec = evaluate_rec(items, loaded, RecConfig(batch_size=16), ev / f"{name}.rec.jsonl", progress=False)
    reg = evaluate_region(regions, loaded, RegionEvalConfig(batch_size=16), ev / f"{name}.region.jsonl", progress=False)
    return {"rec": rec.to_dict(), "region": reg.to_dict()}


def run(cfg: StudyConfig, seeds: list[int], stages: set[str]) -> dict[str, Any]:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    cfg.out.mkdir(parents=True, exist_ok=True)
    world = make_world(cfg)
    items, regions = rec_items(world["test"]), held_out_regions(world["test"], cfg)
    logger.info("held-out: %d REC items, %d regions", len(items), len(regions))
    sft = train_sft_model(world, cfg)
    timings["sft"] = time.monotonic() - t0
    results: dict[str, Any] = {"config": json.loads(json.dumps(asdict(cfg), default=str)), "seeds": seeds, "models": {}}
    history = cfg.out / "pretrain" / "history.json"
    if history.is_file():  # held-out single-shape REC of the pretrained base, per evaluation step
        results["pretrain_history"] = json.loads(history.read_text())
    results["models"]["sft"] = evaluate("sft", sft, None, items, regions, cfg)
    timings["eval_sft"] = time.monotonic() - t0
    if "pairs" in stages:
        data = build_pairs(sft, world, cfg)
        timings["pairs"] = time.monotonic() - t0
        summary = json.loads((cfg.out / "spr_work" / "summary.json").read_text())
        results["pairs"] = summary["pairs"]
        chosen_dir, chosen_name = write_chosen_sft(data)
        for seed in seeds:
            dpo = train_lora("dpo", sft, data, "spr_study", cfg.out / f"dpo_s{seed}", cfg, seed)
            results["models"][f"sft+spr_dpo(s{seed})"] = evaluate(f"dpo_s{seed}", sft, dpo, items, regions, cfg)
            ch = train_lora("sft", sft, chosen_dir, chosen_name, cfg.out / f"chosen_sft_s{seed}", cfg, seed)
            results["models"][f"sft+chosen_sft(s{seed})"] = evaluate(f"chosen_s{seed}", sft, ch, items, regions, cfg)
            timings[f"seed{seed}"] = time.monotonic() - t0
    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    rec_rows = {
        k: RecSummary(**{**v["rec"]["summary"], "thresholds": tuple(v["rec"]["summary"]["thresholds"])})
        for k, v in results["models"].items()
    }
    reg_rows = {k: RegionSummary(**v["region"]["summary"]) for k, v in results["models"].items()}
    results["rec_table"] = rec_table(rec_rows)
    results["region_table"] = region_table(reg_rows)
    write_json(cfg.out / "results.json", results)
    plot_accuracy_curves(rec_rows, cfg.out / "rec_curve.png", title=f"held-out synthetic REC ({len(items)} expressions)")
    print(results["rec_table"])
    print(results["region_table"])
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/effect_study"))
    p.add_argument("--seeds", default="0", help="comma-separated training seeds for the DPO / chosen-SFT stage")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--pretrain-steps", type=int, default=StudyConfig.pretrain_steps)
    p.add_argument("--pretrain-seed", type=int, default=StudyConfig.pretrain_seed)
    p.add_argument("--sft-steps", type=int, default=StudyConfig.sft_steps)
    p.add_argument("--sft-scenes", type=int, default=StudyConfig.sft_scenes)
    p.add_argument("--spr-scenes", type=int, default=StudyConfig.spr_scenes)
    p.add_argument("--test-scenes", type=int, default=StudyConfig.test_scenes)
    p.add_argument("--max-image-tokens", type=int, default=StudyConfig.max_image_tokens)
    p.add_argument("--hidden-size", type=int, default=StudyConfig.hidden_size)
    p.add_argument("--num-layers", type=int, default=StudyConfig.num_layers)
    p.add_argument("--sft-lr", type=float, default=StudyConfig.sft_lr)
    p.add_argument("--min-objects", type=int, default=StudyConfig.min_objects)
    p.add_argument("--max-objects", type=int, default=StudyConfig.max_objects)
    p.add_argument("--rec-copies", type=int, default=StudyConfig.rec_copies)
    p.add_argument("--temperature", type=float, default=StudyConfig.temperature)
    p.add_argument("--top-p", type=float, default=StudyConfig.top_p)
    p.add_argument("--num-samples", type=int, default=StudyConfig.num_samples)
    p.add_argument("--pref-epochs", type=float, default=StudyConfig.pref_epochs)
    p.add_argument("--pref-lr", type=float, default=StudyConfig.pref_lr)
    p.add_argument("--train-vision", choices=("all", "projector", "none"), default=StudyConfig.train_vision)
    p.add_argument("--position-cue", action="store_true", help="x/y colour gradient background (absolute position in pixels)")
    p.add_argument("--sft-only", action="store_true", help="stop after evaluating the SFT model (for exploring SFT settings)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = StudyConfig(
        out=a.out.resolve(),
        seed=a.world_seed,
        sft_steps=a.sft_steps,
        pretrain_steps=a.pretrain_steps,
        pretrain_seed=a.pretrain_seed,
        sft_scenes=a.sft_scenes,
        spr_scenes=a.spr_scenes,
        test_scenes=a.test_scenes,
        max_image_tokens=a.max_image_tokens,
        hidden_size=a.hidden_size,
        num_layers=a.num_layers,
        sft_lr=a.sft_lr,
        min_objects=a.min_objects,
        max_objects=a.max_objects,
        rec_copies=a.rec_copies,
        num_samples=a.num_samples,
        temperature=a.temperature,
        top_p=a.top_p,
        pref_epochs=a.pref_epochs,
        pref_lr=a.pref_lr,
        position_cue=a.position_cue,
        train_vision=a.train_vision,
    )
    try:
        run(cfg, [int(s) for s in a.seeds.split(",") if s.strip()], set() if a.sft_only else {"pairs"})
    except SPRError as exc:
        print(f"effect_study: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
