"""Effect study v3 (issue #21): does SPR DPO improve a capable base on a new domain beyond SFT on templated
ground truth, and does refining the model's own answers matter?

    domain A scenes -> 3+ tiny Qwen2-VL bases (rope_theta 10, in process) whose REC Acc@0.9 is off the floor
    (gate on A validation: Acc@0.5 >= 0.6, 0.2 <= Acc@0.9 <= 0.6, region recall@0.5 >= 0.6) and one x1.15
    positive-control base -> on domain B (new colours and a new shape, smaller objects, darker textured
    background, unannotated clutter) only B's *detection annotations* are used: SPR pairs from each base's
    own samples, templated ground truth, chosen answers -> LoRA arms (gt_sft, gt_dpo, chosen_sft, spr_dpo,
    spr_online) at a strength chosen on B validation scenes with "no training" as an option -> REC and
    region metrics on held-out B (the target) and held-out A (forgetting), next to a blind baseline ->
    hierarchical bootstrap over bases, training seeds and images + Welch intervals (bench/study_v3_stats.py).

The region prompt's box is padded by a per-region random share of its size on each side (``jitter_box``), so
the prompt no longer *is* the union of the objects (v2's blind halving matched the base's region F1).

Everything the study decides is pre-registered in docs/effect_study/v3_plan.md; every decision the run takes
(gates, strength choice) is appended to ``<out>/decisions.jsonl`` with the time and the results it saw, and
the published README section is generated from it.

    python bench/study_v3.py --out runs/study_v3                                  # every stage, resumable
    python bench/study_v3.py --out runs/study_v3 --publish docs/effect_study      # results.json/.md
    python bench/study_v3.py --out /tmp/v3toy --toy                                # CI scale (minutes)

Reuses bench/effect_study.py's frame (168x168, 36 tokens), in-process base training, evaluation and
LoRA YAML settings, and bench/study_stats.py's per-item rows and metrics, unchanged.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "bench")) if p not in sys.path]

import numpy as np  # noqa: E402
from effect_study import DATASET, FMT, FRAME, SIDE, enlarge, evaluate, rec_items, save_rows  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from spr_plugin.core.errors import SPRError  # noqa: E402
from spr_plugin.core.records import Box, Region  # noqa: E402
from spr_plugin.core.sharegpt import DEFAULT_TAGS, ranking_record, sft_record  # noqa: E402
from spr_plugin.demo.scenes import CATEGORY_NAMES, COLOURS, _draw_shape, _overlap_too_big  # noqa: E402
from spr_plugin.demo.warmup import grounded_answer  # noqa: E402
from spr_plugin.evaluation.rec import default_prompt, rec_prompt  # noqa: E402
from spr_plugin.families.prompts import training_prompt  # noqa: E402
from spr_plugin.llamafactory.registry import chosen_sft_entry, ranking_entry, register_datasets  # noqa: E402
from spr_plugin.llamafactory.train import CPU_RUN_SETTINGS, run_train, write_yaml  # noqa: E402
from spr_plugin.settings import RegionConfig  # noqa: E402

logger = logging.getLogger("study_v3")


# ------------------------------------------------------------------------------------------ domains


@dataclass(frozen=True)
class Domain:
    """How a domain's scenes look. A's and B's differ in colours, shapes, sizes, background and clutter."""

    name: str
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    rec_radius: tuple[float, float]  # circumradius range of single-shape (REC) scenes, share of the side
    region_radius: tuple[float, float]  # of two-shape (region) scenes
    background: tuple[int, int]  # grey level range of the background
    texture: float  # std of the background noise
    clutter: int  # unannotated distractor strokes per scene


DOMAIN_A = Domain("A", ("red", "green", "blue"), ("circle", "square", "triangle"), (0.25, 0.42), (0.15, 0.22), (200, 246), 6.0, 0)
DOMAIN_B = Domain(
    "B",
    ("red", "blue", "yellow", "purple"),  # two colours A never shows
    ("circle", "square", "star"),  # a shape A never shows
    (0.16, 0.30),  # smaller objects
    (0.13, 0.20),
    (120, 170),  # darker, more textured background
    14.0,
    6,  # thin grey strokes nobody annotated
)


def render_domain(out: Path, domain: Domain, n: int, seed: int, objects: int, radius: tuple[float, float]) -> Path:
    """``n`` scenes of ``objects`` shapes of the domain (unique names within a scene), exact COCO boxes.

    Deterministic in ``seed``; written atomically (the json last, so a half-rendered set is redone).
    """
    js = out / "instances.json"
    if js.is_file():
        return js
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    r_min, r_max = SIDE * radius[0], SIDE * radius[1]
    images, anns = [], []
    names = [f"{c} {s}" for c in domain.colours for s in domain.shapes]
    for image_id in range(1, n + 1):
        base = rng.integers(domain.background[0], domain.background[1] + 1, size=3)
        arr = np.clip(base[None, None, :] + rng.normal(0.0, domain.texture, size=(SIDE, SIDE, 1)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        for _ in range(domain.clutter):  # clutter first: objects are drawn over it and stay fully visible
            x, y = rng.uniform(0, SIDE, size=2)
            dx, dy = rng.uniform(-25, 25, size=2)
            g = int(rng.integers(60, 110))
            draw.line([(x, y), (x + dx, y + dy)], fill=(g, g, g), width=2)
        placed: list[tuple[float, float, float, float]] = []
        used: set[str] = set()
        for _ in range(objects * 200):
            if len(placed) == objects:
                break
            r = float(rng.uniform(r_min, r_max))
            cx, cy = (float(rng.uniform(r + 1, SIDE - r - 1)) for _ in range(2))
            corners = (cx - r, cy - r, cx + r, cy + r)
            name = names[int(rng.integers(len(names)))]
            if name in used or _overlap_too_big(corners, placed, 0.05):
                continue
            colour, shape = name.split()
            bbox = _draw_shape(draw, shape, cx, cy, r, COLOURS[colour])
            placed.append(corners)
            used.add(name)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_NAMES.index(name) + 1,
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 2),
                    "iscrowd": 0,
                }
            )
        if len(placed) < objects:
            raise SPRError(f"domain {domain.name}: could place only {len(placed)} of {objects} shapes; smaller radius")
        file_name = f"scene_{image_id:05d}.jpg"
        img.save(out / "images" / file_name, format="JPEG", quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": SIDE, "height": SIDE})
    coco = {
        "info": {"description": f"study v3 domain {domain.name} (seed={seed})"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": nm, "supercategory": nm.split()[1]} for i, nm in enumerate(CATEGORY_NAMES)],
    }
    tmp = js.with_suffix(".tmp")
    tmp.write_text(json.dumps(coco))
    tmp.replace(js)
    return js


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class V3Config:
    """Every knob of v3, fixed before the runs (written to <out>/config.json; a resumed run may not change it)."""

    out: Path
    world_seed: int = 1  # the base probe (v3_probes.json) used 0: the study's scenes are all new to it
    # world sizes (domain A: base training, validation gate and forgetting test; domain B: SPR, selection, test)
    a_rec_scenes: int = 3000
    a_region_scenes: int = 2500
    b_spr_scenes: int = 300
    val_scenes: int = 100
    test_scenes: int = 300
    jitter: tuple[float, float] = (0.05, 0.25)  # prompt box padded on each side by U(lo, hi) x its width/height
    # bases (in process; settings fixed from the probes in docs/effect_study/v3_probes.json)
    hidden_size: int = 64
    num_layers: int = 2
    rope_theta: float = 10.0
    base_steps: int = 6000  # probe: seed 0 reached A val Acc@0.9 0.52 at 6000 (gate <= 0.6); more steps risk > 0.6
    base_lr: float = 3e-3
    base_batch: int = 8
    base_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # trained in order until n_bases pass the gate
    n_bases: int = 3
    gate: tuple[float, float, float, float] = (0.6, 0.2, 0.6, 0.6)  # acc@0.5 >=, acc@0.9 >=, acc@0.9 <=, recall@0.5 >=
    control_scale: float = 1.15
    # sampling
    num_samples: int = 8
    temperature: float = 0.7
    top_p: float = 0.9
    # LoRA arms
    lora_rank: int = 8
    pref_beta: float = 0.1
    train_seeds: tuple[int, ...] = (0, 1, 2)
    online_rounds: int = 2
    # the strengths each arm may take, chosen on B validation (base 0, seed 0); "none" = no training
    strengths: tuple[str, ...] = ("none", "lr1e-4_ep3", "lr5e-4_ep3")
    arms: tuple[str, ...] = ("gt_sft", "gt_dpo", "chosen_sft", "spr_dpo", "spr_online")
    #: toy only: skip the selection and train every arm at this strength (a toy base cannot win a selection, and CI
    #: must exercise the training paths); recorded as a decision
    force_strength: str | None = None
    #: The builder's rule that a chosen answer names or boxes a region object (PairingConfig.require_region_object).
    #: On in the study (the builder's default); the toy turns it off, since a toy base names nothing and CI must
    #: still exercise every stage after the pairs.
    require_region_object: bool = True

    def __post_init__(self) -> None:
        if self.n_bases > len(self.base_seeds):
            raise SPRError(f"n_bases {self.n_bases} needs at least as many base_seeds, got {self.base_seeds}")
        unknown = [s for s in self.strengths if s not in STRENGTHS] + [a for a in self.arms if a not in ARMS]
        if self.force_strength is not None and self.force_strength not in STRENGTHS:
            unknown.append(self.force_strength)
        if unknown or "none" not in self.strengths:
            raise SPRError(f"unknown strengths/arms {unknown} (strengths must include 'none': no training is an option)")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def load(cls, out: Path) -> V3Config:
        d = json.loads((out / "config.json").read_text())
        d["out"] = out
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        return cls(**d)

    def save(self) -> None:
        path = self.out / "config.json"
        if path.is_file():
            old = V3Config.load(self.out)
            if old != self:
                diff = {k: (getattr(old, k), getattr(self, k)) for k in asdict(self) if getattr(old, k) != getattr(self, k)}
                raise SPRError(f"{self.out} was started with other settings {diff}; use another --out")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))


TOY = {
    "a_rec_scenes": 24,
    "a_region_scenes": 16,
    "b_spr_scenes": 8,
    "val_scenes": 6,
    "test_scenes": 6,
    "base_steps": 40,
    "base_seeds": (0,),
    "n_bases": 1,
    "gate": (0.0, 0.0, 1.0, 0.0),  # a toy base cannot localize; the gate's code path still runs
    "num_samples": 2,
    "train_seeds": (0,),
    "online_rounds": 2,
    "strengths": ("none", "lr1e-3_ep1"),
    "force_strength": "lr1e-3_ep1",
    "require_region_object": False,
}

#: name -> LoRA YAML overrides. "none" is the base itself (no training).
STRENGTHS: dict[str, dict[str, Any]] = {
    "none": {},
    "lr1e-4_ep3": {"learning_rate": 1e-4, "num_train_epochs": 3.0},
    "lr5e-4_ep3": {"learning_rate": 5e-4, "num_train_epochs": 3.0},
    "lr1e-3_ep1": {"learning_rate": 1e-3, "num_train_epochs": 1.0},  # the toy's only strength
}

#: The arms of issue #21: name -> (training stage, data). spr_online is spr_dpo's round 1 then rounds on its merge.
ARMS: dict[str, tuple[str, str]] = {
    "gt_sft": ("sft", "gt_sft"),  # SFT on templated ground-truth descriptions of the same B regions
    "gt_dpo": ("dpo", "gt_dpo"),  # templated ground truth (chosen) vs the same worst own sample (rejected)
    "chosen_sft": ("sft", "spr_jit_chosen"),  # SFT on SPR's refined chosen answers
    "spr_dpo": ("dpo", "spr_jit"),  # SPR: refined best own sample vs worst own sample
    "spr_online": ("dpo", "spr_jit"),  # rounds of sampling -> pairs -> DPO from the updated model
}


# ------------------------------------------------------------------------------------------ world and prompts


def make_world(cfg: V3Config) -> dict[str, Path]:
    w, s = cfg.out / "world", cfg.world_seed
    A, B = DOMAIN_A, DOMAIN_B
    return {
        "A_base_rec": render_domain(w / "A_base_rec", A, cfg.a_rec_scenes, s + 1000, 1, A.rec_radius),
        "A_base_region": render_domain(w / "A_base_region", A, cfg.a_region_scenes, s + 1500, 2, A.region_radius),
        "A_val_rec": render_domain(w / "A_val_rec", A, cfg.val_scenes, s + 2500, 1, A.rec_radius),
        "A_val_region": render_domain(w / "A_val_region", A, cfg.val_scenes, s + 2600, 2, A.region_radius),
        "A_test_rec": render_domain(w / "A_test_rec", A, cfg.test_scenes, s + 3000, 1, A.rec_radius),
        "A_test_region": render_domain(w / "A_test_region", A, cfg.test_scenes, s + 3500, 2, A.region_radius),
        "B_spr": render_domain(w / "B_spr", B, cfg.b_spr_scenes, s + 5000, 2, B.region_radius),
        "B_val_rec": render_domain(w / "B_val_rec", B, cfg.val_scenes, s + 5500, 1, B.rec_radius),
        "B_val_region": render_domain(w / "B_val_region", B, cfg.val_scenes, s + 5600, 2, B.region_radius),
        "B_test_rec": render_domain(w / "B_test_rec", B, cfg.test_scenes, s + 6000, 1, B.rec_radius),
        "B_test_region": render_domain(w / "B_test_region", B, cfg.test_scenes, s + 6500, 2, B.region_radius),
    }


def jitter_box(region: Region, jitter: tuple[float, float], seed: int) -> Box:
    """The region's box padded on each side by a share U(lo, hi) of its width/height, clipped to the image.

    Deterministic per (region id, seed), so base training, sampling, DPO records and evaluation show the same
    box for the same region. The objects stay inside (padding only), so "describe the objects in this box"
    keeps its meaning, but the box no longer tells where the objects' edges are.
    """
    h = int.from_bytes(hashlib.sha256(f"{seed}:{region.region_id}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(h)
    left, top, right, bottom = rng.uniform(*jitter, size=4)
    b, w, ht = region.box, region.box.width, region.box.height
    return Box(
        max(0.0, b.x1 - left * w),
        max(0.0, b.y1 - top * ht),
        min(float(region.width), b.x2 + right * w),
        min(float(region.height), b.y2 + bottom * ht),
    )


def regions_of(js: Path, cfg: V3Config) -> list[Region]:
    """The query region of each two-shape scene (both shapes, k = 1), with its prompt box jittered."""
    from spr_plugin.regions.sampling import load_coco, sample_regions

    regs = sample_regions(load_coco(js), js.parent / "images", RegionConfig(k=1, regions_per_image=1, seed=cfg.world_seed))
    return [replace(r, box=jitter_box(r, cfg.jitter, cfg.world_seed)) for r in regs]


def region_answer(region: Region, scale: float = 1.0) -> str:
    """Templated ground truth: the members left to right, optionally with boxes enlarged (the control)."""
    members = sorted(region.objects, key=lambda o: (o.box.x1, o.box.y1))
    w, h = region.width, region.height
    return grounded_answer([FMT.render(o.category, enlarge(o.box, scale, w, h), w, h) for o in members])


def base_samples(world: dict[str, Path], cfg: V3Config, scale: float) -> list[tuple[str, str, str]]:
    template = default_prompt("qwen2_vl")
    out = [
        (it.image, rec_prompt(it.expression, template), FMT.render(it.expression, enlarge(it.box, scale, SIDE, SIDE), SIDE, SIDE))
        for it in rec_items(world["A_base_rec"])
    ]
    out += [(r.image_path, training_prompt(r, FMT), region_answer(r, scale)) for r in regions_of(world["A_base_region"], cfg)]
    return out


# ------------------------------------------------------------------------------------------ blind baselines


def blind_rows(world: dict[str, Path], cfg: V3Config, split: str) -> tuple[list[dict], list[dict]]:
    """Rows of the blind baseline on ``split`` ("A_test", "B_test", ...): REC answers the A training set's mean
    box (a REC prompt holds no box), region answers split the prompt's box into strips (bench/study_v3_stats.py)."""
    from study_stats import rec_row, region_row
    from study_v3_stats import blind_region_answer

    train = rec_items(world["A_base_rec"])
    mean = np.mean([[it.box.x1, it.box.y1, it.box.x2, it.box.y2] for it in train], axis=0)
    mean_box = Box(*map(float, mean))
    rec = [
        rec_row(FMT.render(it.expression, mean_box, SIDE, SIDE), it.box, SIDE, SIDE, FMT)
        for it in rec_items(world[f"{split}_rec"])
    ]
    regs = regions_of(world[f"{split}_region"], cfg)
    reg = [
        region_row(
            blind_region_answer(r.box, [o.category for o in sorted(r.objects, key=lambda o: o.box.x1)], FMT, SIDE, SIDE), r, FMT
        )
        for r in regs
    ]
    return rec, reg


# ------------------------------------------------------------------------------------------ decisions (disclosure)


def decide(cfg: V3Config, what: str, choice: Any, evidence: dict[str, Any]) -> None:
    """Append a decision the run took, with the results it saw, to ``decisions.jsonl`` (published as is)."""
    line = json.dumps(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": what, "choice": choice, "evidence": evidence}
    )
    with (cfg.out / "decisions.jsonl").open("a") as fh:
        fh.write(line + "\n")


def decisions(cfg: V3Config) -> list[dict[str, Any]]:
    p = cfg.out / "decisions.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []


# ------------------------------------------------------------------------------------------ stages


def _evaluate_split(cfg: V3Config, model: Path, adapter: Path | None, split: str, prefix: Path) -> dict[str, Any]:
    world = make_world(cfg)
    rec, reg = evaluate(model, adapter, rec_items(world[f"{split}_rec"]), regions_of(world[f"{split}_region"], cfg), prefix)
    return {"rec": rec, "region": reg}


def gate_ok(cfg: V3Config, m: dict[str, float]) -> bool:
    a5, a9_lo, a9_hi, rec5 = cfg.gate
    return m["rec_acc@0.5"] >= a5 and a9_lo <= m["rec_acc@0.9"] <= a9_hi and m["region_recall@0.5"] >= rec5


def stage_base(cfg: V3Config, seed: int, kind: str = "normal") -> None:
    """Train one base on domain A (``kind`` "control": boxes x1.15), evaluate it on A validation (the gate) and on
    both test sets; the gate's outcome is recorded whatever it is."""
    from effect_study import build_init, train_base
    from study_stats import model_metrics

    world = make_world(cfg)
    name = f"base_{kind}_s{seed}"
    model = cfg.out / "bases" / name
    t0 = time.monotonic()
    if not (model / "model.safetensors").is_file():
        init = build_init(cfg.out / "bases" / f"init_s{seed}", seed, cfg)  # type: ignore[arg-type]
        samples = base_samples(world, cfg, 1.0 if kind == "normal" else cfg.control_scale)
        train_base(samples, init, model, steps=cfg.base_steps, lr=cfg.base_lr, batch=cfg.base_batch, seed=seed)
    val = _evaluate_split(cfg, model, None, "A_val", cfg.out / "eval" / f"{name}.A_val")
    m = model_metrics(val["rec"], val["region"])
    # the control is loose by design (IoU of a x1.15 box is 0.76: Acc@0.9 near 0), so only the other two parts apply
    ok = gate_ok(cfg, m) if kind == "normal" else (m["rec_acc@0.5"] >= cfg.gate[0] and m["region_recall@0.5"] >= cfg.gate[3])
    info = {"seed": seed, "kind": kind, "seconds": round(time.monotonic() - t0), "val_A": m, "gate": ok}
    (cfg.out / "bases" / f"{name}.json").write_text(json.dumps(info, indent=1))
    for split in ("A_test", "B_test"):
        rows = _evaluate_split(cfg, model, None, split, cfg.out / "eval" / f"{name}.{split}")
        ref = "sft" if kind == "normal" else "control_sft"
        save_rows(cfg.out / "rows" / split / ref / f"b{seed}_s0.json", rows["rec"], rows["region"])


def passing_bases(cfg: V3Config) -> list[int]:
    """The first ``n_bases`` base seeds that passed the gate (in seed order)."""
    ok = []
    for s in cfg.base_seeds:
        f = cfg.out / "bases" / f"base_normal_s{s}.json"
        if f.is_file() and json.loads(f.read_text())["gate"]:
            ok.append(s)
    return ok[: cfg.n_bases]


def stage_sample(cfg: V3Config, model: Path, adapter: Path | None, out: Path) -> Path:
    """Candidates of ``model`` (+ ``adapter``) on B's SPR regions with their jittered prompt boxes."""
    from spr_plugin.generation.candidates import generate_candidates
    from spr_plugin.generation.transformers_backend import TransformersGenerator
    from spr_plugin.settings import GenerationConfig

    world = make_world(cfg)
    path = out / "candidates.jsonl"
    if adapter is not None:
        model = merge_adapter(model, adapter, out / "merged")
    gen = GenerationConfig(
        model=str(model),
        num_samples=cfg.num_samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=96,
        batch_size=8,
        variants=("box_text",),
        seed=cfg.world_seed,
        frame=FRAME,
    )
    out.mkdir(parents=True, exist_ok=True)
    generator = TransformersGenerator(gen)
    try:
        generate_candidates(
            regions_of(world["B_spr"], cfg),
            generator,
            FMT,
            path,
            variants=("box_text",),
            num_samples=cfg.num_samples,
            batch_size=8,
            temperature=cfg.temperature,
            seed=cfg.world_seed,
        )
    finally:
        generator.close()
    return path


def merge_adapter(model: Path, adapter: Path, out: Path) -> Path:
    """The base with a LoRA adapter merged in (the starting point of an online round)."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    merged = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32), adapter
    ).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    AutoProcessor.from_pretrained(model).save_pretrained(tmp)
    for f in model.glob("*.json"):
        if not (tmp / f.name).exists():
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def stage_pairs(cfg: V3Config, candidates: Path, out: Path) -> Path:
    """SPR pairs (builder defaults) from ``candidates``, then the templated-ground-truth datasets of the same regions:
    ``gt_sft`` (SFT) and ``gt_dpo`` (ground truth chosen vs the *same* rejected answer as SPR's pair).

    The build re-samples the regions from the annotations (unjittered boxes); the exported prompts are then given
    the jittered box the samples were drawn with, so DPO trains on the prompt it is evaluated with.
    """
    from spr_plugin.pipeline import build_dataset
    from spr_plugin.settings import BuildConfig, PairingConfig, ScoringConfig

    world = make_world(cfg)
    data = out / "data"
    build = BuildConfig(
        annotations=world["B_spr"],
        image_root=world["B_spr"].parent / "images",
        work_dir=out / "work",
        dataset_dir=data,
        name=DATASET,
        regions=RegionConfig(k=1, regions_per_image=1, seed=cfg.world_seed),
        scoring=ScoringConfig(box_format="qwen2_vl"),
        pairing=PairingConfig(require_region_object=cfg.require_region_object),
        generation=None,
        candidates_file=candidates,
        image_mode="absolute",
        overwrite=True,
        progress=False,
        frame=FRAME,
    )
    build_dataset(build, None)
    # one region per image: the exported records are keyed by their image file. spr's own files stay as written;
    # the study writes copies whose prompt holds the jittered box the samples were drawn with
    regions = {Path(r.image_path).name: r for r in regions_of(world["B_spr"], cfg)}
    rejected: dict[str, str] = {}
    content = DEFAULT_TAGS["content_tag"]
    for src, dst in ((f"{DATASET}.jsonl", "spr_jit.json"), (f"{DATASET}_chosen.jsonl", "spr_jit_chosen.json")):
        recs = [json.loads(x) for x in (data / src).read_text().splitlines() if x.strip()]
        for rec in recs:
            key = Path(rec["images"][0]).name
            rec["conversations"][0][content] = training_prompt(regions[key], FMT)
            if "rejected" in rec:
                rejected[key] = rec["rejected"][content]
        _write_json(data / dst, recs)
    gt = [sft_record(training_prompt(r, FMT), region_answer(r), [r.image_path]) for r in regions.values()]
    gt_dpo = [
        ranking_record(training_prompt(regions[k], FMT), region_answer(regions[k]), rej, [regions[k].image_path])
        for k, rej in rejected.items()
    ]
    _write_json(data / "gt_sft.json", gt)
    _write_json(data / "gt_dpo.json", gt_dpo)
    entries = {
        "spr_jit": ranking_entry("spr_jit.json"),
        "spr_jit_chosen": chosen_sft_entry("spr_jit_chosen.json"),
        "gt_sft": chosen_sft_entry("gt_sft.json"),
        "gt_dpo": ranking_entry("gt_dpo.json"),
    }
    register_datasets(data, entries, overwrite=True)
    return data


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def lora_conf(
    cfg: V3Config, model: Path, stage: str, dataset: str, data: Path, strength: str, seed: int, out: Path
) -> dict[str, Any]:
    conf = {
        **CPU_RUN_SETTINGS,
        "model_name_or_path": str(model),
        "dataset": dataset,
        "dataset_dir": str(data),
        "template": "qwen2_vl",
        "cutoff_len": 512,
        "image_max_pixels": FRAME.image_max_pixels,
        "image_min_pixels": FRAME.image_min_pixels,
        "output_dir": str(out),
        "seed": seed,
        "stage": stage,
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": cfg.lora_rank,
        "lora_target": "all",
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-4,
        "num_train_epochs": 3.0,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "logging_steps": 10,
    }
    if stage == "dpo":
        conf |= {"pref_beta": cfg.pref_beta, "pref_loss": "sigmoid"}
    return conf | STRENGTHS[strength]


def _train(conf: dict[str, Any], out: Path) -> None:
    if not (out / "adapter_model.safetensors").is_file():
        run_train(write_yaml(out.parent / f"{out.name}.yaml", conf), log_path=out.parent / f"{out.name}.log", echo=False)


def stage_arm(cfg: V3Config, arm: str, base: int, seed: int, strength: str, splits: tuple[str, ...], tag: str) -> None:
    """One arm on one base at one strength and training seed; rows of every split under ``rows/<split>/<tag>``.

    ``spr_online``: round 1 is spr_dpo's run; each further round samples from the merged model of the previous
    round, builds pairs and trains DPO from it (``online_rounds`` in all).
    """
    base_dir = cfg.out / "bases" / f"base_{'control' if arm.startswith('control') else 'normal'}_s{base}"
    runs = cfg.out / "runs"
    if strength == "none":
        model, adapter = base_dir, None
    elif arm == "spr_online":
        model, adapter = base_dir, None
        for rnd in range(1, cfg.online_rounds + 1):
            if rnd == 1:
                data = cfg.out / "pairs" / f"b{base}" / "data"
            else:
                rdir = cfg.out / "pairs" / f"online_b{base}_s{seed}_{strength}_r{rnd}"
                data = rdir / "data"
                model = merge_adapter(model, adapter, rdir / "from")  # the previous round's model
                if not (data / "dataset_info.json").is_file():
                    stage_pairs(cfg, stage_sample(cfg, model, None, rdir), rdir)
            out = runs / f"spr_online_b{base}_s{seed}_{strength}_r{rnd}"
            _train(lora_conf(cfg, model, "dpo", "spr_jit", data, strength, seed, out), out)
            adapter = out
    else:
        stage, dataset = ARMS["spr_dpo" if arm == "control_spr_dpo" else arm]
        data = cfg.out / "pairs" / ("control" if arm.startswith("control") else f"b{base}") / "data"
        out = runs / f"{arm}_b{base}_s{seed}_{strength}"
        _train(lora_conf(cfg, base_dir, stage, dataset, data, strength, seed, out), out)
        model, adapter = base_dir, out
    for split in splits:
        ev = cfg.out / "eval" / f"{tag}_b{base}_s{seed}.{split}"
        rows = _evaluate_split(cfg, model, adapter, split, ev)
        save_rows(cfg.out / "rows" / split / tag / f"b{base}_s{seed}.json", rows["rec"], rows["region"])


def selection_score(m: dict[str, float]) -> float:
    """The pre-registered selection score on B validation (unchanged from v2): REC mIoU + region F1@0.5."""
    return m["rec_miou"] + m["region_f1@0.5"]


def chosen_strength(cfg: V3Config, arm: str) -> str:
    """The strength of ``arm`` with the highest B-validation selection score ("none" wins ties: no training
    unless training helps on validation). Recorded as a decision the first time it is made."""
    from study_stats import model_metrics

    marker = cfg.out / "selection" / f"{arm}.json"
    if cfg.force_strength is not None:
        if not marker.is_file():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"arm": arm, "chosen": cfg.force_strength, "scores": {}, "forced": True}))
            decide(cfg, f"strength of {arm}: forced by the configuration (toy)", cfg.force_strength, {})
        return cfg.force_strength
    scores = {}
    for s in cfg.strengths:
        f = cfg.out / "rows" / "B_val" / f"sel_{arm}_{s}" / f"b{passing_bases(cfg)[0]}_s0.json"
        if not f.is_file():
            raise SPRError(f"the strength selection of {arm} has not finished ({f} is missing)")
        r = json.loads(f.read_text())
        scores[s] = round(selection_score(model_metrics(r["rec"], r["region"])), 6)
    best = max(cfg.strengths, key=lambda s: (scores[s], s == "none"))
    if not marker.is_file():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"arm": arm, "chosen": best, "scores": scores}))
        decide(cfg, f"strength of {arm} (B validation, base {passing_bases(cfg)[0]}, seed 0)", best, scores)
    return best


def selected_strength(cfg: V3Config, arm: str) -> str:
    """The strength the driver chose for ``arm`` (arm tasks only read it: one process decides, see run_study)."""
    marker = cfg.out / "selection" / f"{arm}.json"
    if not marker.is_file():
        raise SPRError(f"no strength has been chosen for {arm} yet ({marker} is missing)")
    return json.loads(marker.read_text())["chosen"]


# ------------------------------------------------------------------------------------------ orchestration


def _done(cfg: V3Config, task: str) -> Path:
    return cfg.out / "done" / (task.replace(":", "__") + ".json")


def run_task(cfg: V3Config, task: str) -> None:
    """``base:KIND:SEED``, ``pairs:BASE`` ("control" or a base seed), ``sel:ARM:STRENGTH``, ``arm:ARM:BASE:SEED``."""
    p = task.split(":")
    t0 = time.monotonic()
    if p[0] == "base":
        stage_base(cfg, int(p[2]), p[1])
    elif p[0] == "pairs":
        key = p[1]
        base_dir = cfg.out / "bases" / (f"base_control_s{cfg.base_seeds[0]}" if key == "control" else f"base_normal_s{key}")
        out = cfg.out / "pairs" / (key if key == "control" else f"b{key}")
        stage_pairs(cfg, stage_sample(cfg, base_dir, None, out), out)
    elif p[0] == "sel":
        b0 = passing_bases(cfg)[0]
        if p[2] == "none":
            src = cfg.out / "bases" / f"base_normal_s{b0}"
            rows = _evaluate_split(cfg, src, None, "B_val", cfg.out / "eval" / f"sel_{p[1]}_none.B_val")
            save_rows(cfg.out / "rows" / "B_val" / f"sel_{p[1]}_none" / f"b{b0}_s0.json", rows["rec"], rows["region"])
        else:
            stage_arm(cfg, p[1], b0, 0, p[2], ("B_val",), f"sel_{p[1]}_{p[2]}")
    elif p[0] == "arm":
        arm, base, seed = p[1], int(p[2]), int(p[3])
        strength = selected_strength(cfg, "spr_dpo" if arm == "control_spr_dpo" else arm)
        stage_arm(cfg, arm, base, seed, strength, ("B_test", "A_test"), arm)
    else:
        raise SPRError(f"unknown task {task!r}")
    done = _done(cfg, task)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"task": task, "seconds": round(time.monotonic() - t0, 1)}))


def run_parallel(cfg: V3Config, tasks: list[str], workers: int) -> list[str]:
    """The not-yet-done ``tasks`` as subprocesses of this script, ``workers`` at a time; returns the failed ones."""
    todo = [t for t in tasks if not _done(cfg, t).is_file()]
    failed: list[str] = []
    logs = cfg.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def one(task: str) -> None:
        log = logs / (task.replace(":", "__") + ".log")
        logger.info("start %s", task)
        with log.open("a") as fh:
            rc = subprocess.run(
                [sys.executable, __file__, "--out", str(cfg.out), "--task", task], stdout=fh, stderr=subprocess.STDOUT
            ).returncode
        if rc:
            failed.append(task)
            logger.error("%s failed (rc %d); see %s", task, rc, log)

    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, todo))
    return failed


def main_arms(cfg: V3Config) -> list[str]:
    return [a for a in cfg.arms if a != "spr_online" or cfg.online_rounds >= 2]


def run_study(cfg: V3Config, workers: int = 2, base_workers: int | None = None) -> dict[str, Any]:
    """Every stage in waves, resumable: bases (until n_bases pass the gate) + control, pairs, strength selection
    on B validation, then every arm x passing base x training seed, then the control's DPO."""
    cfg.save()
    make_world(cfg)
    bw = workers if base_workers is None else base_workers  # a base holds ~8 GB (cached images): memory may limit it
    # bases: two at a time in seed order until n_bases passed (every attempt and its gate recorded)
    pending = list(cfg.base_seeds)
    first = [f"base:control:{cfg.base_seeds[0]}"]
    while len(passing_bases(cfg)) < cfg.n_bases and pending:
        need = cfg.n_bases - len(passing_bases(cfg))
        wave, pending = pending[: max(need, bw - len(first))], pending[max(need, bw - len(first)) :]
        _record_failures(cfg, run_parallel(cfg, [*first, *(f"base:normal:{s}" for s in wave)], bw))
        first = []
    _record_failures(cfg, run_parallel(cfg, first, bw))
    bases = passing_bases(cfg)
    for kind, s in [("normal", s) for s in cfg.base_seeds] + [("control", cfg.base_seeds[0])]:
        f = cfg.out / "bases" / f"base_{kind}_s{s}.json"
        if f.is_file() and not (cfg.out / "done" / f"gate_{kind}_s{s}").is_file():
            info = json.loads(f.read_text())
            verdict = "pass" if info["gate"] else "FAIL (not used)"
            if kind == "control":  # used either way; a failure is stated next to the control's comparison
                verdict = "pass (Acc@0.5 and region recall)" if info["gate"] else "FAIL (used; stated with its result)"
            decide(cfg, f"{kind} base seed {s}: gate on A validation", verdict, info["val_A"])
            (cfg.out / "done" / f"gate_{kind}_s{s}").write_text("")
    if len(bases) < cfg.n_bases:
        decide(cfg, "bases", f"only {len(bases)} of {cfg.n_bases} bases passed the gate; the study stops", {"passing": bases})
        raise SPRError(f"only {len(bases)} of {cfg.n_bases} bases passed the gate; see {cfg.out / 'decisions.jsonl'}")
    failed = run_parallel(cfg, ["pairs:control", *(f"pairs:{b}" for b in bases)], workers)
    if failed:
        _record_failures(cfg, failed)
        raise SPRError(f"stages failed: {failed}; see {cfg.out / 'logs'} and rerun the same command to resume")
    if cfg.force_strength is None:
        _record_failures(cfg, run_parallel(cfg, [f"sel:{a}:{s}" for a in main_arms(cfg) for s in cfg.strengths], workers))
    for a in main_arms(cfg):  # decided here, in one process, before any test run of the arm
        chosen_strength(cfg, a)
    arms = [f"arm:{a}:{b}:{s}" for s in cfg.train_seeds for b in bases for a in main_arms(cfg)]
    arms += [f"arm:control_spr_dpo:{cfg.base_seeds[0]}:{s}" for s in cfg.train_seeds]
    failed = run_parallel(cfg, arms, workers)
    result = analyse(cfg)
    if failed:
        _record_failures(cfg, failed)
        raise SPRError(f"{len(failed)} arm runs failed ({failed[:3]}...); see {cfg.out / 'logs'} and rerun to resume")
    return result


def _record_failures(cfg: V3Config, failed: list[str]) -> None:
    """A task that crashed is a fact of the run: logged with the decisions (it reruns on resume)."""
    for task in failed:
        decide(cfg, f"task {task} failed (see logs/{task.replace(':', '__')}.log); rerun to resume", "failed", {})


# ------------------------------------------------------------------------------------------ analysis


KEY_METRICS = (
    "rec_acc@0.5",
    "rec_acc@0.7",
    "rec_acc@0.9",
    "rec_miou",
    "rec_box_area_ratio",
    "region_f1@0.5",
    "region_f1@0.75",
    "region_f1@0.9",
    "region_recall@0.5",
    "region_matched_miou",
    "region_label_acc",
)
#: arm -> reference it is compared with (sft is the base); the ones beyond the issue's main question last.
REFERENCES = {
    "gt_sft": "sft",
    "gt_dpo": "sft",
    "chosen_sft": "sft",
    "spr_dpo": "sft",
    "spr_online": "sft",
    "spr_dpo vs gt_sft": ("spr_dpo", "gt_sft"),
    "spr_dpo vs gt_dpo": ("spr_dpo", "gt_dpo"),
    "spr_dpo vs chosen_sft": ("spr_dpo", "chosen_sft"),
    "spr_online vs spr_dpo": ("spr_online", "spr_dpo"),
    "control_spr_dpo": "control_sft",
}


def load_runs(cfg: V3Config, split: str) -> dict[str, dict[int, dict[int, dict[str, list[dict]]]]]:
    """split -> arm -> base -> seed -> rows."""
    out: dict[str, dict[int, dict[int, dict[str, list[dict]]]]] = {}
    root = cfg.out / "rows" / split
    passing = set(passing_bases(cfg))
    for d in sorted(root.glob("*")) if root.is_dir() else []:
        for f in sorted(d.glob("b*_s*.json")):
            b, s = f.stem[1:].split("_s")
            if not d.name.startswith("control") and int(b) not in passing:
                continue  # a base that failed its gate is reported (bases, decisions) but never analysed
            out.setdefault(d.name, {}).setdefault(int(b), {})[int(s)] = json.loads(f.read_text())
    return out


def analyse(cfg: V3Config, n_boot: int = 2000) -> dict[str, Any]:
    """results.json in v2's schema (``arms``: metrics + n_seeds, ``comparisons``) per split, plus v3's extras."""
    from study_stats import model_metrics
    from study_v3_stats import hierarchical_compare

    world = make_world(cfg)
    result: dict[str, Any] = {"study": "v3", "config": cfg.to_dict(), "arms": {}, "comparisons": [], "blind": {}}
    for split in ("B_test", "A_test"):
        runs = load_runs(cfg, split)
        brec, breg = blind_rows(world, cfg, split)
        result["blind"][split] = {k: round(v, 5) for k, v in model_metrics(brec, breg).items() if k in KEY_METRICS}
        for arm, bases in runs.items():
            per_run = [model_metrics(r["rec"], r["region"]) for b in bases.values() for r in b.values()]
            mean = {k: round(sum(m[k] for m in per_run) / len(per_run), 5) for k in per_run[0]}
            key = arm if split == "B_test" else f"{arm}@A"
            result["arms"][key] = {"metrics": mean, "n_seeds": len(per_run), "bases": sorted(bases), "split": split}
        for name, ref in REFERENCES.items():
            arm, vs = (name, ref) if isinstance(ref, str) else ref
            if arm not in runs or vs not in runs or not set(runs[arm]) & set(runs[vs]):
                continue
            for part in ("rec", "region"):
                keys = [k for k in KEY_METRICS if k.startswith(part)]
                a = {b: {s: r[part] for s, r in ss.items()} for b, ss in runs[arm].items()}
                r = {b: {s: x[part] for s, x in ss.items()} for b, ss in runs[vs].items()}
                for c in hierarchical_compare(arm, a, vs, r, keys, n_boot=n_boot):
                    d = c.to_dict() | {"split": split}
                    if split == "A_test":
                        d["arm"], d["vs"] = f"{arm}@A", f"{vs}@A"
                    result["comparisons"].append(d)
    result["bases"] = {p.stem: json.loads(p.read_text()) for p in sorted((cfg.out / "bases").glob("base_*.json"))}
    result["selection"] = {p.stem: json.loads(p.read_text()) for p in sorted((cfg.out / "selection").glob("*.json"))}
    result["decisions"] = decisions(cfg)
    result["stage_seconds"] = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((cfg.out / "done").glob("*.json"))}
    result["stage_seconds_total"] = round(sum(result["stage_seconds"].values()))
    tmp = cfg.out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(cfg.out / "results.json")
    return result


def results_md(result: dict[str, Any]) -> str:
    """results.md: arms next to the blind baseline, comparisons, bases and gates, decisions in order, limits."""
    cols = ("rec_acc@0.5", "rec_acc@0.9", "rec_miou", "region_f1@0.5", "region_f1@0.75", "region_recall@0.5")
    md = [
        "# Effect study v3 results (generated by bench/study_v3.py --publish; do not edit)",
        "",
        "Pre-registration: [v3_plan.md](v3_plan.md) (committed before any run). Domain B = the new domain SPR is applied",
        "on (target); `@A` = domain A, where the bases were trained (forgetting). Fractions, not percents.",
        "",
    ]
    for split in ("B_test", "A_test"):
        md += [f"## Arms on {split} (run means over bases x training seeds)", "", "| arm | runs | " + " | ".join(cols) + " |"]
        md.append("|---|---|" + "---|" * len(cols))
        b = result["blind"].get(split, {})
        md.append("| blind baseline (prompt only) | - | " + " | ".join(f"{b.get(c, 0):.3f}" for c in cols) + " |")
        for name, a in result["arms"].items():
            if a["split"] == split:
                md.append(f"| {name} | {a['n_seeds']} | " + " | ".join(f"{a['metrics'].get(c, 0):.3f}" for c in cols) + " |")
        md.append("")
    md += [
        "## Comparisons",
        "",
        "`ci95`: hierarchical bootstrap (bases, training seeds, images); `ci95 (runs)`: Welch over runs; an effect needs",
        "both to exclude 0 on the same side and >= 80% of the arm's runs to agree in sign (rule fixed in v3_plan.md).",
        "",
        "| arm | vs | split | metric | delta | ci95 | ci95 (runs) | runs same sign | effect |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        cs = "-" if c["ci95_seeds"] is None else f"[{c['ci95_seeds'][0]:+.3f}, {c['ci95_seeds'][1]:+.3f}]"
        ci = f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        md.append(
            f"| {c['arm']} | {c['vs']} | {c['split']} | {c['metric']} | {c['delta']:+.3f} | {ci} | "
            f"{cs} | {c['seeds_same_sign']}/{c['n_seeds']} | {'yes' if c['effect'] else 'no'} |"
        )
    md += [
        "",
        "## Bases and their gate (A validation)",
        "",
        "| base | gate | acc@0.5 | acc@0.9 | region recall@0.5 |",
        "|---|---|---|---|---|",
    ]
    for name, info in result["bases"].items():
        v = info["val_A"]
        figures = " | ".join(f"{v[k]:.3f}" for k in ("rec_acc@0.5", "rec_acc@0.9", "region_recall@0.5"))
        verdict = "pass" if info["gate"] else "FAIL"
        if info["kind"] == "control":
            verdict += " (control: Acc@0.5 and recall parts only)"
        md.append(f"| {name} | {verdict} | {figures} |")
    md += ["", "## Decisions, in the order the run took them", ""]
    md += [
        f"* {d['time']}: {d['what']} -> **{d['choice']}** (saw: `{json.dumps(d['evidence'])[:300]}`)" for d in result["decisions"]
    ]
    md += [
        "",
        "## Limits",
        "",
        "* A synthetic world and a tiny Qwen2-VL trained from scratch: the numbers are about this world, not about real MLLMs.",
        "* Strengths were chosen on one base (the first passing one) and training seed 0, on B validation scenes.",
        "* GRPO with the SPR reward did not run in this study (budget; see v3_plan.md).",
        f"* Stage time: {result['stage_seconds_total'] / 60:.0f} min in all.",
    ]
    return "\n".join(md) + "\n"


def check_publish_dest(dest: Path) -> None:
    """Refuse to overwrite another study's results (v2's live in docs/effect_study until they are moved to history)."""
    old = dest / "results.json"
    if old.is_file() and json.loads(old.read_text()).get("study") != "v3":
        raise SPRError(f"{old} holds another study's results; move them to history first (v3_plan.md, 'After the run')")


def publish(cfg: V3Config, dest: Path) -> None:
    check_publish_dest(dest)
    result = analyse(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(result, indent=1))
    (dest / "results.md").write_text(results_md(result))


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/study_v3"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--base-workers", type=int, default=None, help="bases trained side by side (default --workers; ~8 GB each)")
    p.add_argument("--toy", action="store_true", help="CI scale: a few scenes and steps, two bases, one strength")
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("--analyse", action="store_true")
    p.add_argument("--publish", type=Path, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = a.out.resolve()
    try:
        if a.task:
            run_task(V3Config.load(out), a.task)
            return 0
        if (out / "config.json").is_file() and (a.analyse or a.publish):
            cfg = V3Config.load(out)
        else:
            cfg = V3Config(out=out, **(TOY if a.toy else {}))
        if a.publish:
            publish(cfg, a.publish)
        elif a.analyse:
            analyse(cfg)
        else:
            run_study(cfg, a.workers, a.base_workers)
    except SPRError as exc:
        print(f"study_v3: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
