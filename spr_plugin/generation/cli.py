"""Command-line side of candidate generation: back-end options, ``spr generate`` and ``spr merge``.

Kept out of :mod:`spr_plugin.cli` so the generation options (in-process transformers or an
OpenAI-compatible server, sharding, memory bounds) live next to each other; ``cli`` only wires them in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import add_pre_resize_args, frame_from_args
from spr_plugin.core.options import BACKENDS
from spr_plugin.settings import GenerationConfig, SamplingConfig, ServerConfig, add_flags, from_args

logger = logging.getLogger("spr")


def add_generation_args(p: argparse.ArgumentParser, required: bool, frame_from: str | None = None) -> None:
    """Sampling options shared by both back ends, then each back end's own (flags from the settings' fields).

    ``frame_from``: where the command takes the image frame from when no flag gives it (``spr build``: ``--recipe``).
    """
    g = p.add_argument_group("generation (docs/generation.md)")
    g.add_argument(
        "--backend",
        default="transformers",
        choices=BACKENDS,
        help="transformers: in process (--model); openai: an OpenAI-compatible server (vLLM, SGLang, llamafactory-cli api)",
    )
    add_flags(g, SamplingConfig, only=("num_samples", "temperature", "top_p", "max_new_tokens"))
    add_flags(g, GenerationConfig, only=("batch_size", "variants"))
    add_pre_resize_args(g, frame_from)  # both back ends: Qwen2.5-VL boxes live in the pre-resized frame

    t = p.add_argument_group("in-process back end (--backend transformers)")
    add_flags(t, GenerationConfig, only=("model", "device", "max_batch_sequences"))

    s = p.add_argument_group("server back end (--backend openai)")
    add_flags(s, ServerConfig, only=("base_url", "served_model"), base_url=None, served_model=None)
    add_flags(s, ServerConfig, only=("api_key", "concurrency", "timeout", "max_retries"), api_key=None)


def add_shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        default=None,
        help="i/n: generate only shard i of n (split by a stable hash of region_id); writes OUT.shard-i-of-n.jsonl. "
        "Default under accelerate launch: the process index of the process count",
    )


def generation_config(a: argparse.Namespace, seed: int) -> GenerationConfig:
    """The run's :class:`GenerationConfig`: the checkpoint (in process) or the served model's name (server)."""
    if a.backend == "transformers" and not a.model:
        raise SPRError("--model CHECKPOINT is required with --backend transformers")
    if a.backend == "openai" and not (a.base_url and a.served_model):
        raise SPRError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1) and --served-model NAME")
    if a.backend == "transformers":
        from spr_plugin.core.preflight import check_device

        check_device(a.device)  # cuda:7 on a one-GPU machine: one line now, not a traceback after loading
    # One model per run: the checkpoint (in process) or the served name (server); the other flag is ignored.
    which = {"served_model": None} if a.backend == "transformers" else {"model": None}
    return from_args(GenerationConfig, a, seed=seed, frame=frame_from_args(a), **which)


def server_config(a: argparse.Namespace, cfg: GenerationConfig) -> ServerConfig | None:
    """The server back end's settings from its flags (``--backend openai``), else None (in process)."""
    if a.backend == "transformers":
        return None
    api_key = a.api_key or os.environ.get("SPR_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    return from_args(ServerConfig, a, api_key=api_key, box_format=a.box_format, **cfg.sampling())


def cmd_generate(a: argparse.Namespace) -> int:
    from spr_plugin.core.images import confine_regions
    from spr_plugin.core.manifest import Manifest, file_digest
    from spr_plugin.core.paths import ImageRoots
    from spr_plugin.core.preflight import require_writable_file
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.generation.backends import generation_fingerprint, make_generator
    from spr_plugin.generation.candidates import generate_with_config
    from spr_plugin.generation.sharding import resolve_shard, select_shard, shard_path
    from spr_plugin.regions.sampling import read_regions

    spec = resolve_shard(a.shard)
    cfg = generation_config(a, a.seed)
    box_format = get_box_format(a.box_format, frame_from_args(a))
    out = shard_path(a.out, spec)
    require_writable_file(out, "--out")
    regions = list(select_shard(read_regions(a.regions), spec))
    # A regions file from elsewhere names its own images: read only those under the folders named here.
    regions = confine_regions(regions, ImageRoots.of(a.images), progress=not a.no_progress)
    # A rerun appends to the same file: refuse if it was started with other regions or settings.
    manifest = Manifest(out.with_name(out.name + ".manifest.json"), {"candidates": [out, out.with_name(f".{out.name}.lock")]})
    stage = {"candidates": {"regions": file_digest(a.regions), "shard": str(spec), **generation_fingerprint(cfg, a.box_format)}}
    if a.fresh:
        manifest.reset()
    manifest.check(
        stage, what=f"candidates file {out}", hint="rerun with the same settings, write to another --out, or pass --fresh"
    )
    if spec.is_split:
        logger.info("shard %s: %d regions -> %s", spec, len(regions), out)
    generator = make_generator(cfg, server_config(a, cfg))
    manifest.record(stage)
    try:
        stats = generate_with_config(regions, generator, box_format, out, cfg, progress=not a.no_progress)
    finally:
        generator.close()
    stats.shard = str(spec)
    print(json.dumps(stats.to_dict()))
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from spr_plugin.core.jsonl import atomic_write_jsonl
    from spr_plugin.core.manifest import check_recordable, forget_format, record_format
    from spr_plugin.generation.candidates import candidates_format, merge_candidates

    if a.out.resolve() in {Path(p).resolve() for p in a.candidates}:
        raise SPRError(f"--out {a.out} is one of the inputs; write the merge to a new file")
    recorded = candidates_format(a.candidates)  # shards of one run: one format and frame, carried to the merge
    check_recordable(a.out)
    merged, stats = merge_candidates(a.candidates)
    forget_format(a.out)
    atomic_write_jsonl(a.out, [c.to_dict() for c in merged])
    if recorded is not None:
        record_format(a.out, "candidates", recorded[0]["box_format"], recorded[0]["frame"], merged_from=recorded[1])
    print(json.dumps({**stats.to_dict(), "out": str(a.out)}))
    return 0


def add_merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="join candidate files (e.g. one per shard) into one, dropping duplicate keys")
    p.add_argument("--candidates", type=Path, nargs="+", required=True, help="candidate JSONL files (shell globs work)")
    p.add_argument("--out", type=Path, required=True, help="merged candidates JSONL to write")
    p.set_defaults(func=cmd_merge)
