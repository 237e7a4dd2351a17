"""Candidate descriptions: read them from a JSONL file, or generate them with resume.

Generation appends one line per finished candidate to a JSONL file keyed by
``(region_id, variant, sample_idx)``; a run that is killed and started again skips the keys that are
already there, so nothing is lost and nothing is generated twice.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from .box_formats import BoxFormat
from .errors import SPRError
from .jsonl import JsonlAppender, read_jsonl
from .prompts import Prompt, build_prompt
from .records import Candidate, Region

logger = logging.getLogger(__name__)


def read_candidates(path: str | os.PathLike, *, allow_empty: bool = False) -> list[Candidate]:
    """All candidates of a JSONL file (``region_id``, ``text`` and optionally ``variant``, ``sample_idx``)."""
    cands = list(read_jsonl(path, Candidate.from_dict, what="candidate"))
    if not cands and not allow_empty:
        raise SPRError(f"candidate file {path} holds no candidates")
    return cands


class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], seed: int) -> list[list[str]]: ...


@dataclass
class GenerationStats:
    generated: int = 0
    already_done: int = 0
    skipped: Counter = field(default_factory=Counter)


def _batch_seed(seed: int, region_id: str, variant: str) -> int:
    return zlib.crc32(f"{seed}:{region_id}:{variant}".encode()) & 0x7FFFFFFF


def generate_candidates(
    regions: Iterable[Region],
    generator: Generator,
    box_format: BoxFormat,
    out_path: str | os.PathLike,
    *,
    variants: Sequence[str],
    num_samples: int,
    batch_size: int,
    temperature: float | None,
    seed: int = 0,
    progress: bool = True,
) -> GenerationStats:
    """Generate the missing candidates of ``regions`` into ``out_path`` (append-only, resumable)."""
    out = Path(out_path)
    done = {c.key for c in read_candidates(out, allow_empty=True)} if out.exists() else set()
    stats = GenerationStats()
    todo: list[tuple[Region, str]] = []
    for region in regions:
        for variant in variants:
            keys = {(region.region_id, variant, s) for s in range(num_samples)}
            if keys <= done:
                stats.already_done += num_samples
            else:
                todo.append((region, variant))
    bar = tqdm(total=len(todo) * num_samples, desc="generate", unit="cand", disable=not progress)
    with JsonlAppender(out) as sink:
        for start in range(0, len(todo), batch_size):
            batch, prompts = [], []
            for region, variant in todo[start : start + batch_size]:
                try:
                    prompts.append(build_prompt(variant, region, box_format))
                    batch.append((region, variant))
                except OSError as exc:
                    stats.skipped["unreadable_image"] += num_samples
                    logger.warning("skipping region %s (%s): %s", region.region_id, variant, exc)
                    bar.update(num_samples)
            if not batch:
                continue
            batch_seed = _batch_seed(seed, batch[0][0].region_id, batch[0][1])
            outputs = generator.generate(prompts, seed=batch_seed)
            for (region, variant), texts in zip(batch, outputs):
                for idx, text in enumerate(texts):
                    if (region.region_id, variant, idx) in done:
                        continue
                    cand = Candidate(region.region_id, variant, idx, text, generator.name, temperature, batch_seed)
                    sink.write(cand.to_dict())
                    stats.generated += 1
                bar.update(len(texts))
    bar.close()
    return stats
