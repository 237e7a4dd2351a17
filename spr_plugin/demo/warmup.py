"""Teach a random tiny Qwen2-VL to *write* grounded region descriptions (SFT via LLaMA-Factory).

Why: SPR samples several grounded descriptions per region, parses their boxes and ranks them. A
freshly initialised model emits byte soup, so nothing would parse and no preference pair could be
built. A short full-parameter SFT on ground-truth descriptions of synthetic scenes teaches it the
Qwen2-VL grounding syntax (a label in its reference tokens, then its box in box tokens, written by
:class:`~spr_plugin.families.box_formats.Qwen2VLFormat`; coordinates in Qwen2-VL's [0,1000) grid). Sampling at temperature 1
then yields parseable but varied, imperfect boxes -- exactly what the scorer needs to separate best from worst.

Training goes through ``llamafactory-cli train`` (not an in-process call) so the demo exercises the
same entry point users run, and so LLaMA-Factory's global state cannot leak into the caller.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.sharegpt import sft_record
from spr_plugin.families.box_formats import Qwen2VLFormat
from spr_plugin.families.prompts import training_prompt
from spr_plugin.llamafactory.registry import chosen_sft_entry, register_dataset
from spr_plugin.llamafactory.train import CPU_RUN_SETTINGS, run_train, write_yaml
from spr_plugin.regions.sampling import RegionConfig, sample_regions_stage

DATASET_NAME = "spr_warmup_sft"

# Files that make a checkpoint loadable with AutoProcessor; LLaMA-Factory may not write them all.
_PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
)


def grounded_answer(units: list[str]) -> str:
    """``The region shows <ref>a</ref><box>..</box>, <ref>b</ref><box>..</box> and <ref>c</ref>...``."""
    body = units[0] if len(units) == 1 else ", ".join(units[:-1]) + " and " + units[-1]
    return f"The region shows {body}."


def write_sft_dataset(
    scenes_json: str | Path,
    image_root: str | Path,
    dataset_dir: str | Path,
    *,
    regions_per_image: int = 4,
    min_objects: int = 5,
    seed: int = 0,
) -> Path:
    """Write a ShareGPT SFT dataset + ``dataset_info.json`` of GT grounded region descriptions.

    The user turn is exactly the DPO training prompt (:func:`spr_plugin.families.prompts.training_prompt`),
    so the warmed-up model answers the question candidate generation will ask. Image paths are
    absolute so LLaMA-Factory never has to resolve them against a ``media_dir``.
    Returns ``dataset_dir`` (the folder to pass as LLaMA-Factory's ``dataset_dir``).
    """
    fmt = Qwen2VLFormat()
    config = RegionConfig(k=min_objects - 1, regions_per_image=regions_per_image, seed=seed)
    records: list[dict[str, Any]] = []
    regions, _ = sample_regions_stage(config, scenes_json, image_root)  # the regions stage every command runs
    for region in regions:
        # Members left to right: a fixed order is easy for a tiny model to learn.
        members = sorted(region.objects, key=lambda o: (o.box.x1, o.box.y1))
        w, h = region.width, region.height
        answer = grounded_answer([fmt.render(o.category, o.box, w, h) for o in members])
        records.append(sft_record(training_prompt(region, fmt), answer, [region.image_path]))
    out = Path(dataset_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{DATASET_NAME}.json").write_text(json.dumps(records, indent=1))
    # Through the registry's lock, like every writer of dataset_info.json: other entries are kept.
    register_dataset(out, DATASET_NAME, chosen_sft_entry(f"{DATASET_NAME}.json"), overwrite=True)
    return out


def _copy_processor_files(src: Path, dst: Path) -> None:
    """Make ``dst`` loadable with AutoProcessor even if the trainer did not save processor files."""
    for name in _PROCESSOR_FILES:
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copy2(src / name, dst / name)


def warmup_sft(
    model_dir: str | Path,
    scenes_json: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    *,
    steps: int = 700,
    learning_rate: float = 3e-3,
    batch_size: int = 8,
    regions_per_image: int = 4,
    image_max_pixels: int = 12544,
    cutoff_len: int = 512,
    seed: int = 0,
    log_file: str | Path | None = None,
    echo: bool = False,
) -> Path:
    """Full-parameter SFT of ``model_dir`` on GT grounded descriptions; returns the trained model dir.

    Writes the dataset and YAML under ``out_dir/_warmup/``, runs ``llamafactory-cli train`` with
    the Hub disabled, and copies tokenizer/processor files from ``model_dir`` where LLaMA-Factory
    did not write them. Vision tower and projector are trained too: the boxes should depend on
    the image, not only on the prompt. Raises :class:`SPRError` with the log tail on failure.

    Defaults were measured on a 2-core CPU with the default tiny model (hidden 64, 2 layers) and
    300 rendered scenes x 4 regions: ~70 s wall (about 60 s of it training, 0.085 s/step), after
    which temperature-1 samples contain a complete grounded unit in ~100% of outputs (about 94%
    of parsed boxes have x1<x2 and y1<y2). Boxes are syntactically right but not yet grounded
    (IoU with GT is at chance level), which leaves the scorer plenty of spread. Few scenes (e.g.
    24) are memorised within a few hundred steps; more scenes generalise better at the same cost.
    """
    model_dir = Path(model_dir).resolve()
    out = Path(out_dir).resolve()
    work = out / "_warmup"
    dataset_dir = write_sft_dataset(scenes_json, image_root, work / "data", regions_per_image=regions_per_image, seed=seed)
    config: dict[str, Any] = {
        **CPU_RUN_SETTINGS,
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
        "dataset": DATASET_NAME,
        "dataset_dir": str(dataset_dir),
        "template": "qwen2_vl",
        "cutoff_len": cutoff_len,
        "image_max_pixels": image_max_pixels,
        "output_dir": str(out),
        "save_only_model": True,
        "logging_steps": max(1, steps // 10),
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": learning_rate,
        "max_steps": steps,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, steps // 20),
        "seed": seed,
    }
    log_path = Path(log_file) if log_file else work / "train.log"
    # offline env, log file and the error tail (as SPRError) come from spr_plugin.llamafactory.train
    run_train(write_yaml(work / "sft.yaml", config), log_path=log_path, echo=echo)
    if not (out / "model.safetensors").is_file():
        raise SPRError(f"warm-up SFT finished but saved no model.safetensors in {out}; see {log_path}")
    _copy_processor_files(model_dir, out)
    return out
