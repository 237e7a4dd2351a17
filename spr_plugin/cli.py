"""``spr``: the command line of spr-plugin, one subcommand per SPR stage plus ``build`` and ``demo``.

Each stage reads and writes plain files, so stages can run on different machines or be rerun alone:

    spr regions  -> regions.jsonl          spr pair    -> pairs.jsonl + summary
    spr generate -> candidates.jsonl       spr export  -> LLaMA-Factory dataset + dataset_info.json entry

User errors (missing files, malformed input, name clashes) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.options import BOX_FORMATS, DEFAULT_BOX_FORMAT
from spr_plugin.llamafactory.image import add_pre_resize_args
from spr_plugin.settings import BuildConfig, PairingConfig, RegionConfig, ScoringConfig, add_flags, from_args

logger = logging.getLogger("spr")


def _add_region_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("regions")
    add_flags(g, BuildConfig, only=("annotations", "image_root"))
    add_flags(g, RegionConfig)


def _add_generation_args(p: argparse.ArgumentParser, required: bool) -> None:
    from spr_plugin.generation.cli import add_generation_args  # both back ends, see docs/generation.md

    add_generation_args(p, required)


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring and pairing")
    add_flags(g, ScoringConfig, only=("box_format", "lam", "loc_metric", "iou_threshold"))
    add_flags(g, PairingConfig, only=("min_margin",))
    add_flags(g, BuildConfig, only=("text_model",))
    add_flags(g, ScoringConfig, only=("semantic", "clip_model", "clip_long_text", "grounder", "grounder_box_threshold"))
    add_flags(g, ScoringConfig, only=("grounder_phrases", "label_match", "label_threshold", "score_norm"))
    add_flags(g, ScoringConfig, only=("hallucination_penalty",))
    add_flags(g, PairingConfig, only=("refine_policy",))


def _add_export_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export")
    add_flags(g, BuildConfig, only=("dataset_dir", "name", "image_mode", "overwrite", "recipe"), dataset_dir=Path("data"))


def _region_config(a: argparse.Namespace) -> RegionConfig:
    return from_args(RegionConfig, a)


def _scoring(a: argparse.Namespace) -> tuple[ScoringConfig, PairingConfig]:
    return from_args(ScoringConfig, a), from_args(PairingConfig, a)


def _generation_config(a: argparse.Namespace, seed: int):
    from spr_plugin.generation.cli import generation_config

    return generation_config(a, seed)


def cmd_regions(a: argparse.Namespace) -> int:
    from spr_plugin.core.jsonl import atomic_write_jsonl
    from spr_plugin.core.preflight import require_writable_file
    from spr_plugin.regions.sampling import RegionStats, check_images_found, load_coco, require_regions, sample_regions

    config = _region_config(a)
    require_writable_file(a.out, "--out")
    coco = load_coco(a.annotations)
    check_images_found(coco, a.image_root)
    stats = RegionStats()
    regions = list(sample_regions(coco, a.image_root, config, stats))
    require_regions(regions, stats, a.annotations)
    atomic_write_jsonl(a.out, [r.to_dict() for r in regions])
    print(json.dumps(stats.to_dict()))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from spr_plugin.generation.cli import cmd_generate as run  # back ends, sharding, resume: docs/generation.md

    return run(a)


def cmd_pair(a: argparse.Namespace) -> int:
    from spr_plugin.core.jsonl import atomic_write_jsonl
    from spr_plugin.core.preflight import require_writable_file
    from spr_plugin.core.sanitize import SanitizeStats
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.generation.candidates import merge_candidates, sanitize_candidates
    from spr_plugin.llamafactory.image import frame_from_args
    from spr_plugin.regions.sampling import read_regions
    from spr_plugin.scoring.factory import build_candidate_scorer
    from spr_plugin.scoring.stage import score_refine_pair

    scoring, pairing = _scoring(a)
    require_writable_file(a.out, "--out")
    scorer = build_candidate_scorer(scoring, a.text_model, box_format=get_box_format(scoring.box_format, frame_from_args(a)))
    sanitized = SanitizeStats()
    regions = read_regions(a.regions, sanitized)
    candidates = sanitize_candidates(merge_candidates(a.candidates)[0], scorer.box_format, sanitized)
    if a.annotations is not None:
        from spr_plugin.regions.annotations import category_vocabulary, load_coco
        from spr_plugin.scoring.mentions import Vocabulary

        scorer.vocabulary = Vocabulary.of(category_vocabulary(load_coco(a.annotations)))
    pairs, stats = score_refine_pair(regions, candidates, scorer, pairing)
    atomic_write_jsonl(a.out, [p.to_dict() for p in pairs])
    print(json.dumps({**stats.to_dict(), "sanitized": sanitized.to_dict()}, indent=2))
    return 0 if pairs else 1


def cmd_export(a: argparse.Namespace) -> int:
    from spr_plugin.core.jsonl import read_jsonl
    from spr_plugin.core.preflight import require_writable_dir
    from spr_plugin.core.records import PreferencePair
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.llamafactory.export import ExportConfig, export_dataset
    from spr_plugin.llamafactory.image import frame_from_args
    from spr_plugin.llamafactory.recipe_check import check_recipe_frame

    frame = frame_from_args(a)
    config = ExportConfig(a.dataset_dir, a.name, a.image_mode, a.overwrite, frame, a.images)
    box_format = get_box_format(a.box_format, frame)
    if a.recipe is not None:
        check_recipe_frame(a.recipe, frame, "this export")
    require_writable_dir(a.dataset_dir, "--dataset-dir")
    pairs = list(read_jsonl(a.pairs, PreferencePair.from_dict, what="pair"))
    res = export_dataset(pairs, config, box_format)
    print(f"wrote {res.records} pairs to {res.dataset_file}; registered {a.name!r} in {res.dataset_info}")
    return 0


def cmd_register(a: argparse.Namespace) -> int:
    from spr_plugin.core.preflight import check_dataset_name
    from spr_plugin.llamafactory.registry import ranking_entry, register_dataset

    check_dataset_name(a.name)
    path = register_dataset(a.dataset_dir, a.name, ranking_entry(a.file_name), overwrite=a.overwrite)
    print(f"registered {a.name!r} ({a.file_name}) in {path}")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from spr_plugin.pipeline import build_dataset, prepare_build

    scoring, pairing = _scoring(a)
    gcfg = None
    if a.candidates_file is None:
        if not (a.model or a.base_url):
            raise SPRError("give --candidates FILE, --model CHECKPOINT or --backend openai --base-url URL to generate candidates")
        gcfg = _generation_config(a, a.seed)
    from spr_plugin.llamafactory.image import frame_from_args

    cfg = from_args(
        BuildConfig,
        a,
        frame=frame_from_args(a),
        regions=_region_config(a),
        scoring=scoring,
        pairing=pairing,
        generation=gcfg,
    )
    prepared = prepare_build(cfg)  # names, folders, files, images, manifest: before the model loads
    generator = None
    if gcfg is not None:
        from spr_plugin.generation.cli import make_generator

        generator = make_generator(a, gcfg)
    try:
        summary = build_dataset(cfg, generator, prepared)
    finally:
        if generator is not None:
            generator.close()
    print(json.dumps(summary.to_dict()["pairs"], indent=2))
    assert summary.export is not None
    print(f"dataset {a.name!r}: {summary.export.records} pairs in {summary.export.dataset_file}")
    return 0


def cmd_check_recipe(a: argparse.Namespace) -> int:
    from spr_plugin.llamafactory.recipe_check import check_recipe

    for line in check_recipe(a.recipe, a.dataset_dir):
        print(line)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from data_builders.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            out_dir=a.out,
            recipe=a.recipe,
            train=not a.no_train,
            n_images=a.images,
            seed=a.seed,
            warmup_scenes=a.warmup_scenes,
            warmup_steps=a.warmup_steps,
            num_samples=a.num_samples,
        )
    )
    return 0


def cmd_webui(a: argparse.Namespace) -> int:
    from spr_plugin.llamafactory.webui import WebUIConfig, run_webui

    run_webui(WebUIConfig(a.dataset_dir, a.workspace, a.port, a.host))
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from spr_plugin.inspect.viewer import ShowConfig, show_pairs

    res = show_pairs(ShowConfig(a.pairs, a.dataset_dir, a.name, a.out, a.n, a.box_format))
    print(f"rendered {res.pairs} pairs: open {res.html}")
    return 0


def cmd_export_hf(a: argparse.Namespace) -> int:
    from spr_plugin.core.preflight import check_dataset_name, require_writable_dir
    from spr_plugin.inspect.hf_export import FrameFacts, export_hf

    check_dataset_name(a.name)
    require_writable_dir(a.out, "--out")
    facts = FrameFacts.of_dataset(a.dataset_dir, a.name, a.box_format, a.image_max_pixels, a.image_min_pixels)
    res = export_hf(a.dataset_dir, a.name, a.out, facts, image_root=a.images)
    print(f"wrote {res.rows} rows to {res.parquet}; load with datasets.load_dataset('parquet', data_files=...)")
    return 0


def cmd_export_grpo(a: argparse.Namespace) -> int:
    from spr_plugin.core.preflight import require_writable_file
    from spr_plugin.inspect.hf_export import FrameFacts
    from spr_plugin.llamafactory.image import frame_from_args
    from spr_plugin.regions.sampling import read_regions
    from spr_plugin.trl.grpo_export import export_grpo

    facts = FrameFacts(a.box_format, frame_from_args(a))
    if a.max_regions is not None and a.max_regions < 1:
        raise SPRError(f"--max-regions must be at least 1, got {a.max_regions}")
    require_writable_file(a.out, "--out")
    regions = read_regions(a.regions)[: a.max_regions]  # names sanitised, duplicate ids refused
    res = export_grpo(regions, a.out, facts, image_root=a.images)
    print(f"wrote {res.rows} prompts ({res.images} images) to {res.parquet}; reward: spr_plugin.trl.grpo_reward.SPRReward")
    return 0


def _add_frame_args(p: argparse.ArgumentParser, recorded: bool) -> None:
    """The box format and image frame the data was built with: every exported row records them (docs/trl.md).

    ``recorded``: the dataset recorded them at build time (``<name>.spr.json``); the flags then default to
    those values and must agree with them.
    """
    from spr_plugin.llamafactory.image import NOT_GIVEN, add_pre_resize_args

    g = p.add_argument_group(
        "box format and image frame (default: as the build recorded them)" if recorded else "box format and image frame"
    )
    g.add_argument("--box-format", default=None if recorded else DEFAULT_BOX_FORMAT, help=" | ".join(BOX_FORMATS))
    add_pre_resize_args(g)
    if recorded:
        p.set_defaults(image_max_pixels=NOT_GIVEN, image_min_pixels=NOT_GIVEN)


def _add_viewer_commands(sub) -> None:
    """``webui``, ``show``, ``export-hf`` and ``export-grpo``: look at a built dataset or take it to TRL
    (docs/viewing.md, docs/trl.md)."""
    p = sub.add_parser("webui", help="start LlamaBoard (llamafactory-cli webui) with its Data dir on a dataset folder")
    p.add_argument("--dataset-dir", type=Path, required=True, help="folder holding dataset_info.json")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--workspace", type=Path, default=None, help="LlamaBoard's working folder (default: DIR/../llamaboard)")
    p.set_defaults(func=cmd_webui)

    p = sub.add_parser("show", help="render chosen vs rejected pairs (boxes on the image, scores) as HTML + PNGs")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path, help="pairs JSONL (work/pairs.jsonl or <dataset_dir>/<name>.pairs.jsonl)")
    src.add_argument("--dataset-dir", type=Path, help="a built dataset folder (use with --name)")
    p.add_argument("--name", default="spr_qwen2vl")
    p.add_argument("--out", type=Path, required=True, help="folder for index.html and the PNGs")
    p.add_argument("-n", type=int, default=8, help="number of pairs to render")
    p.add_argument("--box-format", default=DEFAULT_BOX_FORMAT, help=" | ".join(BOX_FORMATS))
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export-hf", help="export a built dataset as parquet for TRL (prompt/chosen/rejected/images)")
    p.add_argument("--dataset-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=Path, default=None, help="folder absolute image paths must lie under (--image-mode absolute)")
    _add_frame_args(p, recorded=True)
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser("export-grpo", help="write query regions as a GRPO prompt parquet for TRL with the SPR reward")
    p.add_argument("--regions", type=Path, required=True, help="regions JSONL (spr regions, or a build's work-dir)")
    p.add_argument("--out", type=Path, required=True, help="the .parquet file to write")
    p.add_argument("--max-regions", type=int, default=None, help="export only the first N regions")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder every image must lie under (default: the root recorded with each region)",
    )
    _add_frame_args(p, recorded=False)
    p.set_defaults(func=cmd_export_grpo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spr",
        description="Spatial Preference Rewarding (SPR) data for LLaMA-Factory DPO: query regions -> grounded "
        "candidate descriptions -> semantic + localization scores -> refined best vs worst pairs -> dataset.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("regions", help="sample query regions from COCO-format annotations")
    _add_region_args(p)
    p.add_argument("--out", type=Path, required=True, help="regions JSONL to write")
    p.set_defaults(func=cmd_regions)

    p = sub.add_parser("generate", help="sample grounded region descriptions with a local model (resumable)")
    p.add_argument("--regions", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="candidates JSONL (appended to; finished keys are skipped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--box-format", default=DEFAULT_BOX_FORMAT, help=" | ".join(BOX_FORMATS))
    _add_generation_args(p, required=True)
    from spr_plugin.generation.cli import add_merge_parser, add_shard_args

    add_shard_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs stay quiet under a job scheduler)")
    p.add_argument("--fresh", action="store_true", help="start over: remove OUT (a rerun with other settings refuses without it)")
    p.set_defaults(func=cmd_generate)
    add_merge_parser(sub)  # spr merge: join shard candidate files

    p = sub.add_parser("pair", help="score, refine and pair candidates")
    p.add_argument("--regions", type=Path, required=True)
    p.add_argument(
        "--candidates",
        type=Path,
        nargs="+",
        required=True,
        help="JSONL: region_id, text[, variant, sample_idx]; several files (shards) are merged",
    )
    p.add_argument("--out", type=Path, required=True, help="pairs JSONL to write")
    p.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="the regions' annotation file: its category vocabulary judges named objects (default: the names the regions record)",
    )
    _add_scoring_args(p)
    add_pre_resize_args(p.add_argument_group("image frame the candidates were sampled in (Qwen2.5-VL pixel boxes)"))
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("export", help="write pairs as a LLaMA-Factory dataset and register it")
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder every image of the pairs must lie under (default: the image root recorded with each region)",
    )
    p.add_argument("--box-format", default=DEFAULT_BOX_FORMAT, help=" | ".join(BOX_FORMATS))
    _add_export_args(p)
    add_pre_resize_args(p.add_argument_group("image frame the candidates were sampled in"))
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check-recipe", help="check a training YAML's image frame and template against the datasets it names")
    p.add_argument("recipe", type=Path, help="LLaMA-Factory training YAML")
    p.add_argument("--dataset-dir", type=Path, default=None, help="override the YAML's dataset_dir")
    p.set_defaults(func=cmd_check_recipe)

    p = sub.add_parser("register", help="merge a dataset entry into a dataset_info.json")
    p.add_argument("--dataset-dir", type=Path, default=Path("data"))
    p.add_argument("--name", required=True)
    p.add_argument("--file-name", required=True, help="dataset file, relative to --dataset-dir")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("build", help="all stages: annotations + generator (or candidates file) -> dataset")
    _add_region_args(p)
    add_flags(p, BuildConfig, only=("candidates_file", "work_dir", "fresh"), work_dir=Path("spr_work"))
    _add_generation_args(p, required=False)
    _add_scoring_args(p)
    _add_export_args(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("demo", help="the whole chain on rendered scenes and a tiny local Qwen2-VL, on CPU")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--recipe", type=Path, default=Path("recipes/spr_qwen2vl_cpu_demo.yaml"))
    p.add_argument("--images", type=int, default=24, help="number of synthetic scenes to build pairs from")
    p.add_argument("--warmup-scenes", type=int, default=300, help="scenes for the tiny model's warm-up SFT")
    p.add_argument("--warmup-steps", type=int, default=700, help="warm-up SFT steps")
    p.add_argument("--num-samples", type=int, default=3, help="samples per region and prompt variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train", action="store_true", help="stop after building the dataset")
    p.set_defaults(func=cmd_demo)
    _add_viewer_commands(sub)
    from spr_plugin.evaluation.cli import add_eval_parser

    add_eval_parser(sub)  # spr eval rec / spr eval region
    return parser


#: OS errors that are the user's or the machine's (a full disk, a read-only or missing folder, a file where
#: a folder belongs, a name too long), reported in one line like any other user error.
_USER_OS_ERRORS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
    errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ELOOP, errno.EMFILE, errno.EIO,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except SPRError as exc:
        print(f"spr {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"spr {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spr {args.command}: interrupted; finished records are kept, rerun the same command to resume", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    """Messages quote user data (names, paths); a newline in it must not break the one-line promise."""
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


if __name__ == "__main__":
    sys.exit(main())
