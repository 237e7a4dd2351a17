"""``spr eval rec`` and ``spr eval region``: argument parsing and the printed/JSON reports.

Kept out of :mod:`spr_plugin.cli` so the main CLI only has to register one subcommand.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import add_pre_resize_args
from spr_plugin.evaluation.config import RecConfig, RegionEvalConfig
from spr_plugin.settings import GenerationConfig, RegionConfig, add_flags, from_args


def _model_args(p: argparse.ArgumentParser, config: type) -> None:
    """The model, its decoding and the frame; decoding flags come from ``config``'s fields (defaults per command)."""
    g = p.add_argument_group("model")
    add_flags(g, GenerationConfig, only=("model",), required=True, note="(the base model when --adapter is given)")
    g.add_argument("--adapter", default=None, help="LoRA adapter folder from LLaMA-Factory (applied with peft, merged)")
    add_flags(g, config, only=("box_format", "batch_size", "max_new_tokens"))
    add_flags(g, GenerationConfig, only=("device",), note="(checked before the model loads)")
    add_pre_resize_args(g, "--recipe or --dataset-dir/--name")
    f = p.add_argument_group("one image frame: refuse to evaluate in another frame than training used")
    f.add_argument("--recipe", type=Path, default=None, help="the training YAML: its image_max/min_pixels must match")
    f.add_argument("--dataset-dir", type=Path, default=None, help="with --name: a dataset spr built; its frame must match")
    f.add_argument("--name", default=None, help="dataset name in --dataset-dir")
    g.add_argument(
        "--out", type=Path, required=True, help="report JSON; per-item results go to OUT with .items.jsonl (resumable)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument(
        "--fresh", action="store_true", help="discard per-item results of an earlier run (a rerun with other settings refuses)"
    )


def _config(cls: type, a: argparse.Namespace):
    """The command's config from its flags; the frame comes from the shared pre-resize flags (LLaMA-Factory's
    defaults for a flag not given, unless :func:`check_eval_frame` already wrote the recipe's or dataset's frame)."""
    from spr_plugin.llamafactory.recipe_check import adopt_frame

    frame = adopt_frame(a, [])
    return from_args(cls, a, frame=frame)


def check_eval_frame(a: argparse.Namespace) -> None:
    """The evaluation's frame, resolved before loading anything: the flags, else the recipe's or the dataset's
    (``--recipe``, ``--dataset-dir/--name``), else LLaMA-Factory's default; any two that differ are refused."""
    from spr_plugin.core.frame import ImageFrame
    from spr_plugin.llamafactory.recipe_check import adopt_frame, meta_path, read_meta, recipe_source

    sources = recipe_source(a.recipe)
    if (a.dataset_dir is None) != (a.name is None):
        raise SPRError("--dataset-dir and --name go together (the dataset whose frame the evaluation must use)")
    if a.dataset_dir is not None:
        meta = read_meta(a.dataset_dir, a.name)
        if meta is None:
            raise SPRError(f"{meta_path(a.dataset_dir, a.name)} not found: was dataset {a.name!r} built by spr?")
        sources.append((f"dataset {a.name!r} ({meta_path(a.dataset_dir, a.name)})", ImageFrame.from_dict(meta["frame"])))
    adopt_frame(a, sources)


def check_eval_inputs(a: argparse.Namespace) -> None:
    """Everything the user names, checked in one line each before data or a model loads: counts, the device,
    the adapter folder and the frame."""
    from spr_plugin.core.preflight import check_adapter, check_count, check_device
    from spr_plugin.generation.transformers_backend import resolve_device

    check_count(a.limit, "--limit")
    a.device = resolve_device(check_device(a.device))  # "auto" as generation resolves it; torch has no such device
    check_adapter(a.adapter)
    check_eval_frame(a)


def _run(a: argparse.Namespace):
    from spr_plugin.evaluation.stage import EvalRun

    return EvalRun(a.model, a.adapter, a.out, device=a.device, fresh=a.fresh, progress=not a.quiet)


def cmd_eval_rec(a: argparse.Namespace) -> int:
    from spr_plugin.core.preflight import require_writable_file
    from spr_plugin.evaluation.report import rec_table
    from spr_plugin.evaluation.stage import items_path, rec_stage

    check_eval_inputs(a)
    cfg = _config(RecConfig, a)
    require_writable_file(a.out, "--out")
    report, name = rec_stage(cfg, _run(a), a.annotations, a.images, a.split, a.limit)
    print(f"prompt: {report.prompt!r}")
    print(rec_table({name: report.summary}))
    print(f"report: {a.out}  per-item results: {items_path(a.out)} ({report.reused} reused from an earlier run)")
    if report.skipped_items:
        print(f"skipped {sum(report.skipped_items.values())} items with unusable images: {dict(report.skipped_items)}")
    return 0


def cmd_eval_region(a: argparse.Namespace) -> int:
    from spr_plugin.core.manifest import file_digest
    from spr_plugin.core.preflight import require_writable_file
    from spr_plugin.evaluation.report import region_table
    from spr_plugin.evaluation.stage import items_path, region_stage
    from spr_plugin.regions.sampling import RegionConfig, read_regions, sample_regions_stage

    require_writable_file(a.out, "--out")
    check_eval_inputs(a)
    cfg = _config(RegionEvalConfig, a)
    if a.regions is not None:
        from spr_plugin.core.images import confine_regions
        from spr_plugin.core.paths import ImageRoots

        # A regions file names its own images: read only those under --images (default: the file's folder).
        regions = confine_regions(read_regions(a.regions), ImageRoots.of(a.images), progress=not a.quiet)
        source = str(a.regions)
        data_inputs: dict = {"regions": file_digest(a.regions)}
    else:
        if a.annotations is None or a.images is None:
            raise SPRError("give --regions FILE, or --annotations and --images to sample held-out query regions")
        rc = RegionConfig(k=a.k, regions_per_image=a.regions_per_image, max_regions=a.limit, seed=a.seed)
        regions, _ = sample_regions_stage(rc, a.annotations, a.images)  # says why none (missing images, too few objects)
        source = str(a.annotations)
        data_inputs = {"annotations": file_digest(a.annotations), "images": os.path.abspath(a.images), "sampling": rc.__dict__}
    report, name, _ = region_stage(cfg, _run(a), regions, source, data_inputs, a.limit)
    print(region_table({name: report.summary}))
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
        nargs="+",
        required=True,
        help="REC file(s): refer's refs(unc).p (instances.json beside it), merged refs .json, MDETR "
        "finetune_refcoco_*.json, Qwen-VL grounding .jsonl, lmms-eval RefCOCO .parquet, or our JSONL "
        "{id, image, expression, box:[x1,y1,x2,y2]} (docs/evaluation.md)",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder relative image paths start from and the only folder images are read from (default: the file's folder)",
    )
    p.add_argument(
        "--split", default=None, help="files holding several splits (refer pickles, merged refs json): the split to evaluate"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
    add_flags(p, RecConfig, only=("prompt", "convention", "thresholds"))
    _model_args(p, RecConfig)
    p.set_defaults(func=cmd_eval_rec)

    p = ev_sub.add_parser("region", help="grounded region descriptions: localization P/R/F1 at IoU 0.5 and matched mean IoU")
    p.add_argument("--regions", type=Path, default=None, help="regions JSONL from `spr regions` (held-out images)")
    p.add_argument("--annotations", type=Path, default=None, help="or: COCO-format detection json to sample regions from")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="with --annotations: the image folder; with --regions: the only folder images are read from "
        "(default: the regions file's folder)",
    )
    add_flags(p, RegionConfig, only=("k", "regions_per_image", "seed"))  # the regions' own settings, once
    p.add_argument("--limit", type=int, default=None)
    add_flags(p, RegionEvalConfig, only=("iou_threshold",))
    _model_args(p, RegionEvalConfig)
    p.set_defaults(func=cmd_eval_region)
