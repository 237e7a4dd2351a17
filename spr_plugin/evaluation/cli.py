"""``spr eval rec`` and ``spr eval region``: argument parsing and the printed/JSON reports.

Kept out of :mod:`spr_plugin.cli` so the main CLI only has to register one subcommand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SPRError
from ..lf_image import add_pre_resize_args
from .metrics import CONVENTIONS, DEFAULT_THRESHOLDS


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="local checkpoint folder (the base model when --adapter is given)")
    g.add_argument("--adapter", default=None, help="LoRA adapter folder from LLaMA-Factory (applied with peft, merged)")
    g.add_argument(
        "--box-format", default="qwen2_vl", help="qwen2_vl | qwen2_5_vl | qwen2_5_vl_json (how the model writes boxes)"
    )
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--device", default="cpu")
    add_pre_resize_args(g)
    f = p.add_argument_group("one image frame: refuse to evaluate in another frame than training used")
    f.add_argument("--recipe", type=Path, default=None, help="the training YAML: its image_max/min_pixels must match")
    f.add_argument("--dataset-dir", type=Path, default=None, help="with --name: a dataset spr built; its frame must match")
    f.add_argument("--name", default=None, help="dataset name in --dataset-dir")
    g.add_argument(
        "--out", type=Path, required=True, help="report JSON; per-item results go to OUT with .items.jsonl (resumable)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise SPRError(f"--thresholds must be comma-separated numbers, got {text!r}") from None


def items_path(out: Path) -> Path:
    return out.with_suffix(".items.jsonl")


def check_eval_frame(a: argparse.Namespace) -> None:
    """Refuse, before loading anything, an evaluation frame that differs from the recipe's or the dataset's."""
    from ..lf_image import ImageFrame, frame_from_args
    from ..recipe_check import check_frames, check_recipe_frame, meta_path, read_meta

    frame = frame_from_args(a)
    if a.recipe is not None:
        check_recipe_frame(a.recipe, frame, "this evaluation")
    if (a.dataset_dir is None) != (a.name is None):
        raise SPRError("--dataset-dir and --name go together (the dataset whose frame the evaluation must use)")
    if a.dataset_dir is not None:
        meta = read_meta(a.dataset_dir, a.name)
        if meta is None:
            raise SPRError(f"{meta_path(a.dataset_dir, a.name)} not found: was dataset {a.name!r} built by spr?")
        built = ImageFrame.from_dict(meta["frame"])
        check_frames(built, f"dataset {a.name!r} ({meta_path(a.dataset_dir, a.name)})", frame, "this evaluation")


def cmd_eval_rec(a: argparse.Namespace) -> int:
    from .model import load_model
    from .rec import RecConfig, evaluate_rec
    from .rec_data import load_rec_items
    from .report import rec_table, write_json

    check_eval_frame(a)
    cfg = RecConfig(
        box_format=a.box_format,
        prompt=a.prompt,
        convention=a.convention,
        thresholds=_thresholds(a.thresholds),
        batch_size=a.batch_size,
        max_new_tokens=a.max_new_tokens or 64,
        image_max_pixels=a.image_max_pixels,
        image_min_pixels=a.image_min_pixels,
    )
    items = load_rec_items(a.annotations, a.images, a.split)
    if a.limit is not None:
        items = items[: a.limit]
    loaded = load_model(a.model, a.adapter, device=a.device)
    report = evaluate_rec(items, loaded, cfg, items_path(a.out), annotations=str(a.annotations), progress=not a.quiet)
    write_json(a.out, report.to_dict())
    print(f"prompt: {report.prompt!r}")
    print(rec_table({loaded.name: report.summary}))
    print(f"report: {a.out}  per-item results: {items_path(a.out)} ({report.reused} reused from an earlier run)")
    return 0


def cmd_eval_region(a: argparse.Namespace) -> int:
    from data_builders.coco_builder import load_regions

    from ..regions import RegionConfig, load_coco, sample_regions
    from .model import load_model
    from .region import RegionEvalConfig, evaluate_region
    from .report import region_table, write_json

    check_eval_frame(a)
    if a.regions is not None:
        regions, source = load_regions(a.regions), str(a.regions)
    else:
        if a.annotations is None or a.images is None:
            raise SPRError("give --regions FILE, or --annotations and --images to sample held-out query regions")
        rc = RegionConfig(k=a.k, regions_per_image=a.regions_per_image, max_regions=a.limit, seed=a.seed)
        regions, source = list(sample_regions(load_coco(a.annotations), a.images, rc)), str(a.annotations)
    if a.limit is not None:
        regions = regions[: a.limit]
    if not regions:
        raise SPRError(f"no query region in {source} (images need more than --k {a.k} usable objects)")
    cfg = RegionEvalConfig(
        box_format=a.box_format,
        iou_threshold=a.iou_threshold,
        batch_size=a.batch_size,
        max_new_tokens=a.max_new_tokens or 160,
        image_max_pixels=a.image_max_pixels,
        image_min_pixels=a.image_min_pixels,
    )
    loaded = load_model(a.model, a.adapter, device=a.device)
    report = evaluate_region(regions, loaded, cfg, items_path(a.out), regions_source=source, progress=not a.quiet)
    write_json(a.out, report.to_dict())
    print(region_table({loaded.name: report.summary}))
    print(f"report: {a.out}  per-region results: {items_path(a.out)} ({report.reused} reused from an earlier run)")
    return 0


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``spr eval {rec,region}`` on the main CLI's subparsers."""
    ev = sub.add_parser("eval", help="evaluate a model: REC accuracy (rec) or grounded-description localization (region)")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="WHAT")

    p = ev_sub.add_parser("rec", help="referring expression comprehension: Acc@IoU thresholds and mean IoU")
    p.add_argument(
        "--annotations",
        type=Path,
        required=True,
        help="JSONL {id, image, expression, box:[x1,y1,x2,y2]} or COCO-style refs .json",
    )
    p.add_argument(
        "--images", type=Path, default=None, help="folder relative image paths start from (default: the file's folder)"
    )
    p.add_argument("--split", default=None, help="refs json only: evaluate this split (e.g. val)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
    p.add_argument("--prompt", default=None, help="prompt template with {expression} (default depends on --box-format)")
    p.add_argument(
        "--convention",
        default=">=",
        choices=list(CONVENTIONS),
        help="correct iff IoU >= t (Qwen-VL, Ferret) or > t (Groma, VLM-R1)",
    )
    p.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS))
    _model_args(p)
    p.set_defaults(func=cmd_eval_rec)

    p = ev_sub.add_parser("region", help="grounded region descriptions: localization P/R/F1 at IoU 0.5 and matched mean IoU")
    p.add_argument("--regions", type=Path, default=None, help="regions JSONL from `spr regions` (held-out images)")
    p.add_argument("--annotations", type=Path, default=None, help="or: COCO-format detection json to sample regions from")
    p.add_argument("--images", type=Path, default=None)
    p.add_argument("--k", type=int, default=4, help="a region holds more than K objects")
    p.add_argument("--regions-per-image", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--iou-threshold", type=float, default=0.5, help="a box matches an object iff IoU > this")
    _model_args(p)
    p.set_defaults(func=cmd_eval_region)
