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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import add_pre_resize_args
from spr_plugin.core.options import DEFAULT_BOX_FORMAT
from spr_plugin.settings import (
    BuildConfig,
    DemoConfig,
    PairingConfig,
    RegionConfig,
    ScoringConfig,
    ShowConfig,
    WebUIConfig,
    add_flags,
    from_args,
)

logger = logging.getLogger("spr")


def add_images_flag(p: argparse.ArgumentParser, what: str, default: str = "none: every image is refused") -> None:
    """``--images FOLDER`` (repeatable): the only folders a command reads images of a file from elsewhere from.

    The image paths and ``image_root`` a regions or pairs file records are never trusted (docs/inputs.md).
    """
    p.add_argument(
        "--images",
        type=Path,
        action="append",
        default=None,
        metavar="FOLDER",
        help=f"folder holding {what}; images are read only under the folders given here (repeatable; default: "
        f"{default}). The image root a file records is never trusted",
    )


def add_box_format_flag(g: argparse._ActionsContainer, recorded: str | None = None) -> None:
    """``--box-format`` (the one flag, :class:`ScoringConfig`'s field). ``recorded``: the input file whose record
    decides when the flag is not given (the flag then defaults to None and may only agree with the record)."""
    if recorded is None:
        add_flags(g, ScoringConfig, only=("box_format",))
    else:
        note = f"(default: as {recorded} records it, else {DEFAULT_BOX_FORMAT}; a different value is refused)"
        add_flags(g, ScoringConfig, only=("box_format",), note=note, box_format=None)


def _add_region_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("regions")
    add_flags(g, BuildConfig, only=("annotations", "image_root"))
    add_flags(g, RegionConfig)


def _add_generation_args(p: argparse.ArgumentParser, required: bool, frame_from: str | None = None) -> None:
    from spr_plugin.generation.cli import add_generation_args  # both back ends, see docs/generation.md

    add_generation_args(p, required, frame_from)


def _add_scoring_args(p: argparse.ArgumentParser, box_format: bool = True) -> None:
    """``box_format=False``: the flag defaults to None, the candidates' record decides (see :func:`cmd_pair`)."""
    g = p.add_argument_group("scoring and pairing")
    add_box_format_flag(g, None if box_format else "the --candidates files")
    add_flags(g, ScoringConfig, only=("lam", "loc_metric", "iou_threshold"))
    add_flags(g, PairingConfig, only=("min_margin",))
    add_flags(g, BuildConfig, only=("text_model",))
    add_flags(g, ScoringConfig, only=("semantic", "clip_model", "clip_long_text", "grounder", "grounder_box_threshold"))
    add_flags(g, ScoringConfig, only=("grounder_phrases", "label_match", "label_threshold", "score_norm"))
    add_flags(g, ScoringConfig, only=("hallucination_penalty",))
    add_flags(g, PairingConfig, only=("refine_policy", "require_region_object"))


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
    from spr_plugin.core.preflight import require_not_input, require_writable_file
    from spr_plugin.regions.sampling import sample_regions_stage

    config = _region_config(a)
    require_not_input(a.out, [a.annotations], "--out")  # first: a link to the input is named as such
    require_writable_file(a.out, "--out")
    regions, stats = sample_regions_stage(config, a.annotations, a.image_root, progress=True)
    atomic_write_jsonl(a.out, [r.to_dict() for r in regions])
    print(json.dumps(stats.to_dict()))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from spr_plugin.generation.cli import cmd_generate as run  # back ends, sharding, resume: docs/generation.md

    return run(a)


def _adopt_candidates_format(a: argparse.Namespace, files) -> list:
    """The box format and frame candidate files record (``spr generate`` / ``spr merge``): ``a.box_format`` is set to
    it (a different ``--box-format`` is refused) and the frame is returned as a source for ``adopt_frame``. Files
    without a record (hand-made: a documented input) are read in the command line's format, default qwen2_vl."""
    from spr_plugin.core.frame import ImageFrame
    from spr_plugin.generation.candidates import candidates_format

    recorded = candidates_format(files or [])
    if recorded is None:
        a.box_format = a.box_format or DEFAULT_BOX_FORMAT
        return []
    rec, where = recorded
    if a.box_format is not None and a.box_format != rec["box_format"]:
        raise SPRError(
            f"the candidates are in box format {rec['box_format']} ({where}) but --box-format says {a.box_format}; "
            "leave --box-format out to score them in their own format"
        )
    a.box_format = rec["box_format"]
    return [(where, ImageFrame.from_dict(rec["frame"]))]


def cmd_pair(a: argparse.Namespace) -> int:
    from spr_plugin.core.jsonl import atomic_write_jsonl, dumps, finite_or_null
    from spr_plugin.core.manifest import check_recordable, forget_format, record_format
    from spr_plugin.core.preflight import require_not_input, require_writable_file
    from spr_plugin.core.sanitize import SanitizeStats
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.generation.candidates import merge_candidates
    from spr_plugin.llamafactory.recipe_check import adopt_frame
    from spr_plugin.regions.sampling import read_regions
    from spr_plugin.scoring.semantic import check_text_model
    from spr_plugin.scoring.stage import score_pairs_stage

    sources = _adopt_candidates_format(a, a.candidates)
    frame = adopt_frame(a, sources)
    scoring, pairing = _scoring(a)
    require_not_input(a.out, [a.regions, *a.candidates], "--out")  # first: a link to an input is named as such
    require_writable_file(a.out, "--out")
    check_text_model(a.text_model)
    check_recordable(a.out)  # before the scoring: its record must be writable too
    sanitized = SanitizeStats()
    regions = read_regions(a.regions, sanitized)  # every value validated, before any model loads
    if scoring.semantic != "text" or scoring.grounder:  # CLIP and the grounder read the images
        from spr_plugin.core.images import confine_regions
        from spr_plugin.core.paths import ImageRoots

        regions = confine_regions(regions, ImageRoots.of(a.images), progress=True)
    merged, read = merge_candidates(a.candidates)
    names = None
    if a.annotations is not None:
        from spr_plugin.regions.annotations import category_vocabulary, load_coco

        names = category_vocabulary(load_coco(a.annotations))
    box_format = get_box_format(scoring.box_format, frame)
    pairs, stats = score_pairs_stage(
        regions,
        merged,
        scoring,
        pairing,
        box_format=box_format,
        text_model=a.text_model,
        category_names=names,
        sanitized=sanitized,
    )
    forget_format(a.out)  # a crash between the two writes leaves no record rather than a stale one
    atomic_write_jsonl(a.out, [p.to_dict() for p in pairs])
    record_format(
        a.out,
        "pairs",
        scoring.box_format,
        frame.to_dict(),
        candidates_record=sources[0][0] if sources else "none (command line)",
        vocabulary=list(stats.vocabulary),  # what judged the mentions: spr show and the export's record measure with it
    )
    print(
        dumps(finite_or_null({**stats.to_dict(), "candidate_files": read.to_dict(), "sanitized": sanitized.to_dict()}), indent=2)
    )
    return 0 if pairs else 1


def cmd_export(a: argparse.Namespace) -> int:
    from spr_plugin.core.jsonl import read_jsonl
    from spr_plugin.core.paths import ImageRoots
    from spr_plugin.core.preflight import check_dataset_name, require_writable_dir
    from spr_plugin.core.records import PreferencePair
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.llamafactory.export import ExportConfig, export_dataset
    from spr_plugin.llamafactory.recipe_check import pairs_format, recorded_vocabulary

    check_dataset_name(a.name)
    box_name, frame = pairs_format(a)  # the pairs' recorded format and frame; flags and --recipe must agree
    config = ExportConfig(a.dataset_dir, a.name, a.image_mode, a.overwrite, frame, ImageRoots.of(a.images))
    box_format = get_box_format(box_name, frame)
    require_writable_dir(a.dataset_dir, "--dataset-dir")
    torn: list[str] = []
    pairs = list(read_jsonl(a.pairs, PreferencePair.from_dict, what="pair", skipped=torn))
    vocabulary = recorded_vocabulary(a.pairs)
    res = export_dataset(pairs, config, box_format, None if vocabulary is None else {"vocabulary": list(vocabulary)})
    print(f"wrote {res.records} pairs to {res.dataset_file} (box format {box_name}, frame {frame.to_dict()}); "
          f"registered {a.name!r} in {res.dataset_info}")  # fmt: skip
    for note in torn:
        print(f"skipped 1 line of {a.pairs}: {note}")
    if res.skip_line():
        print(f"spr export: {res.skip_line()}", file=sys.stderr)
    return 0


def cmd_register(a: argparse.Namespace) -> int:
    from spr_plugin.core.preflight import check_dataset_name
    from spr_plugin.llamafactory.registry import ranking_entry, register_dataset, require_data_file

    check_dataset_name(a.name)
    require_data_file(a.dataset_dir, a.file_name)
    path = register_dataset(a.dataset_dir, a.name, ranking_entry(a.file_name), overwrite=a.overwrite)
    print(f"registered {a.name!r} ({a.file_name}) in {path}")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from spr_plugin.llamafactory.recipe_check import adopt_frame, recipe_source
    from spr_plugin.pipeline import build_dataset, prepare_build

    sources = _adopt_candidates_format(a, a.candidates_file) + recipe_source(a.recipe)
    frame = adopt_frame(a, sources)  # no frame flag: the candidates' or the recipe's frame (one frame for all)
    scoring, pairing = _scoring(a)
    gcfg = None
    if a.candidates_file is None:
        if not (a.model or a.base_url):
            raise SPRError("give --candidates FILE, --model CHECKPOINT or --backend openai --base-url URL to generate candidates")
        gcfg = _generation_config(a, a.seed)
    cfg = from_args(
        BuildConfig,
        a,
        frame=frame,
        regions=_region_config(a),
        scoring=scoring,
        pairing=pairing,
        generation=gcfg,
    )
    prepared = prepare_build(cfg)  # names, folders, files, images, manifest: before the model loads
    generator = None
    if gcfg is not None:
        from spr_plugin.generation.backends import make_generator
        from spr_plugin.generation.cli import server_config

        generator = make_generator(gcfg, server_config(a, gcfg))
    try:
        summary = build_dataset(cfg, generator, prepared)
    finally:
        if generator is not None:
            generator.close()
    print(json.dumps(summary.to_dict()["pairs"], indent=2))
    assert summary.export is not None
    print(f"dataset {a.name!r}: {summary.export.records} pairs in {summary.export.dataset_file}")
    if summary.export.skip_line():
        print(f"spr build: {summary.export.skip_line()}", file=sys.stderr)
    return 0


def cmd_check_recipe(a: argparse.Namespace) -> int:
    from spr_plugin.llamafactory.recipe_check import check_recipe

    for line in check_recipe(a.recipe, a.dataset_dir, a.overrides):
        print(line)
    return 0


def cmd_recipes(a: argparse.Namespace) -> int:
    from spr_plugin.llamafactory.shipped_recipes import RECIPES_DIR, shipped_files, write_recipes

    if a.out is None:
        print(f"shipped recipes ({RECIPES_DIR}); write them out with: spr recipes --out DIR")
        for rel in shipped_files():
            print(f"  {rel}")
        return 0
    res = write_recipes(a.out)
    print(
        f"wrote {len(res.written)} recipe files to {a.out}" + (f" ({len(res.unchanged)} already there)" if res.unchanged else "")
    )
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from spr_plugin.demo.run import run_demo
    from spr_plugin.llamafactory.shipped_recipes import resolve_recipe

    run_demo(from_args(DemoConfig, a, recipe=None if a.recipe is None else resolve_recipe(a.recipe)))
    return 0


def cmd_webui(a: argparse.Namespace) -> int:
    from spr_plugin.llamafactory.webui import run_webui

    run_webui(from_args(WebUIConfig, a))
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from spr_plugin.core.preflight import check_count
    from spr_plugin.inspect.viewer import show_pairs

    check_count(a.n, "-n")
    res = show_pairs(from_args(ShowConfig, a, box_format=a.box_format, images=tuple(a.images or ())))
    print(f"rendered {res.pairs} pairs: open {res.html}")
    return 0


def cmd_export_hf(a: argparse.Namespace) -> int:
    from spr_plugin.core.preflight import check_dataset_name, require_writable_dir
    from spr_plugin.inspect.hf_export import FrameFacts, export_hf

    check_dataset_name(a.name)
    require_writable_dir(a.out, "--out")
    facts = FrameFacts.of_dataset(a.dataset_dir, a.name, a.box_format, a.image_max_pixels, a.image_min_pixels)
    from spr_plugin.core.paths import ImageRoots

    roots = ImageRoots(a.images, "--images") if a.images else None
    res = export_hf(a.dataset_dir, a.name, a.out, facts, image_root=roots)
    print(f"wrote {res.rows} rows to {res.parquet}; load with datasets.load_dataset('parquet', data_files=...)")
    return 0


def cmd_export_grpo(a: argparse.Namespace) -> int:
    from spr_plugin.core.frame import frame_from_args
    from spr_plugin.core.preflight import require_writable_file
    from spr_plugin.inspect.hf_export import FrameFacts
    from spr_plugin.regions.sampling import read_regions
    from spr_plugin.trl.grpo_export import export_grpo

    facts = FrameFacts(a.box_format, frame_from_args(a))
    if a.max_regions is not None and a.max_regions < 1:
        raise SPRError(f"--max-regions must be at least 1, got {a.max_regions}")
    require_writable_file(a.out, "--out")
    from spr_plugin.core.paths import ImageRoots

    regions = read_regions(a.regions)[: a.max_regions]  # names sanitised, duplicate ids refused
    res = export_grpo(regions, a.out, facts, image_root=ImageRoots.of(a.images))
    print(f"wrote {res.rows} prompts ({res.images} images) to {res.parquet}; reward: spr_plugin.trl.grpo_reward.SPRReward")
    return 0


def _add_frame_args(p: argparse.ArgumentParser, recorded: bool) -> None:
    """The box format and image frame the data was built with: every exported row records them (docs/trl.md).

    ``recorded``: the dataset recorded them at build time (``<name>.spr.json``); the flags then default to
    those values and must agree with them.
    """
    from spr_plugin.core.frame import NOT_GIVEN, add_pre_resize_args

    g = p.add_argument_group(
        "box format and image frame (default: as the build recorded them)" if recorded else "box format and image frame"
    )
    add_box_format_flag(g, "the build" if recorded else None)
    add_pre_resize_args(g)
    if recorded:
        p.set_defaults(image_max_pixels=NOT_GIVEN, image_min_pixels=NOT_GIVEN)


def _add_viewer_commands(sub) -> None:
    """``webui``, ``show``, ``export-hf`` and ``export-grpo``: look at a built dataset or take it to TRL
    (docs/viewing.md, docs/trl.md)."""
    p = sub.add_parser("webui", help="start LlamaBoard (llamafactory-cli webui) with its Data dir on a dataset folder")
    add_flags(p, WebUIConfig, only=("dataset_dir", "port", "host", "workspace"))
    p.set_defaults(func=cmd_webui)

    p = sub.add_parser("show", help="render chosen vs rejected pairs (boxes on the image, scores) as HTML + PNGs")
    src = p.add_mutually_exclusive_group(required=True)
    add_flags(src, ShowConfig, only=("pairs", "dataset_dir"), required=False)
    add_flags(p, ShowConfig, only=("name",), name=BuildConfig.name)  # the build's default dataset name
    add_flags(p, ShowConfig, only=("out", "n"))
    add_box_format_flag(p, "the pairs file")
    add_images_flag(p, "the pairs' original images", default="none: only the copies an export placed in the dataset folder")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export-hf", help="export a built dataset as parquet for TRL (prompt/chosen/rejected/images)")
    p.add_argument("--dataset-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, required=True)
    add_images_flag(
        p, "absolute image paths of an --image-mode absolute dataset", default="none: only images inside --dataset-dir"
    )
    _add_frame_args(p, recorded=True)
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser("export-grpo", help="write query regions as a GRPO prompt parquet for TRL with the SPR reward")
    p.add_argument("--regions", type=Path, required=True, help="regions JSONL (spr regions, or a build's work-dir)")
    p.add_argument("--out", type=Path, required=True, help="the .parquet file to write")
    p.add_argument("--max-regions", type=int, default=None, help="export only the first N regions")
    add_images_flag(p, "the regions' images")
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
    add_flags(p, RegionConfig, only=("seed",))  # the run seed of region sampling and generation, one setting
    add_box_format_flag(p)
    add_images_flag(p, "the regions' images")
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
    p.add_argument("--out", type=Path, required=True, help="pairs JSONL to write (its record: OUT.manifest.json)")
    p.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="the regions' annotation file: its category vocabulary judges named objects (default: the names the regions record)",
    )
    add_images_flag(p, "the regions' images (read by --semantic clip and --grounder)")
    _add_scoring_args(p, box_format=False)
    add_pre_resize_args(
        p.add_argument_group("image frame the candidates were sampled in (Qwen2.5-VL pixel boxes)"), "the candidates' record"
    )
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("export", help="write pairs as a LLaMA-Factory dataset and register it")
    p.add_argument("--pairs", type=Path, required=True)
    add_images_flag(p, "the pairs' images")
    add_box_format_flag(p, "the pairs file")
    _add_export_args(p)
    add_pre_resize_args(p.add_argument_group("image frame the candidates were sampled in"), "the pairs' record or --recipe")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check-recipe", help="check a training YAML's image frame and template against the datasets it names")
    p.add_argument("recipe", help="LLaMA-Factory training YAML, or a shipped recipe's name (spr recipes lists them)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="LLaMA-Factory's own overrides, as given to `llamafactory-cli train RECIPE key=value ...` "
        "(e.g. dataset_dir=/data dataset=spr_qwen2vl image_max_pixels=12544): judged exactly as the training reads them",
    )
    p.add_argument("--dataset-dir", type=Path, default=None, help="override the YAML's dataset_dir")
    p.set_defaults(func=cmd_check_recipe)

    p = sub.add_parser("recipes", help="list the shipped training recipes, or write them out (--out DIR) to edit and run")
    p.add_argument("--out", type=Path, default=None, help="folder to write them to (existing different files are refused)")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("register", help="merge a dataset entry into a dataset_info.json")
    p.add_argument("--dataset-dir", type=Path, default=Path("data"))
    p.add_argument("--name", required=True)
    p.add_argument("--file-name", required=True, help="dataset file, relative to --dataset-dir")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("build", help="all stages: annotations + generator (or candidates file) -> dataset")
    _add_region_args(p)
    add_flags(p, BuildConfig, only=("candidates_file", "work_dir", "fresh"), work_dir=Path("spr_work"))
    _add_generation_args(p, required=False, frame_from="--recipe or the --candidates' record")
    _add_scoring_args(p, box_format=False)
    _add_export_args(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("demo", help="the whole chain on rendered scenes and a tiny local Qwen2-VL, on CPU")
    add_flags(p, DemoConfig)
    p.set_defaults(func=cmd_demo)
    _add_viewer_commands(sub)
    from spr_plugin.evaluation.cli import add_eval_parser

    add_eval_parser(sub)  # spr eval rec / spr eval region
    from spr_plugin.config_file import add_config_epilogs

    add_config_epilogs(parser)
    return parser


#: OS errors that are the user's or the machine's (a full disk, a read-only or missing folder, a file where
#: a folder belongs, a name too long), reported in one line like any other user error.
_USER_OS_ERRORS = {
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
    errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ELOOP, errno.EMFILE, errno.EIO,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from spr_plugin.config_file import expand_config_argv

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # spr build CONFIG.yaml key=value ...: the file's settings become the flags they stand for
        argv = expand_config_argv(parser, argv)
    except SPRError as exc:
        command = next((t for t in argv if not t.startswith("-")), "")
        print(f"spr {command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `spr recipes | head`: the reader left; not an error of ours, and no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python would flush stdout again at exit and fail the same way
        return 0
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


#: Longest error line printed: messages quote user data, and a multi-MB value must not become a multi-MB "line".
_MAX_ERROR_CHARS = 1000


def _one_line(text: str) -> str:
    """Messages quote user data (names, paths); a newline in it must not break the one-line promise, and a
    huge value must not make the line huge."""
    line = " ".join(text.split()) if "\n" in text or "\r" in text else text
    return line if len(line) <= _MAX_ERROR_CHARS else f"{line[: _MAX_ERROR_CHARS - 40]}... ({len(line):,} characters cut)"


if __name__ == "__main__":
    sys.exit(main())
