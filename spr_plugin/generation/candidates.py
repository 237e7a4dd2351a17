"""Candidate descriptions: read them from a JSONL file, or generate them with resume.

Generation appends one line per finished candidate to a JSONL file keyed by
``(region_id, variant, sample_idx)``; a run that is killed and started again skips the keys that are
already there, so nothing is lost and nothing is generated twice. A lock file keeps a second process
from writing the same file; sharded runs write one file each and :func:`merge_candidates` joins them.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from spr_plugin.core.errors import ConfigError, PartialBatchError, SPRError
from spr_plugin.core.images import check_image_cached
from spr_plugin.core.jsonl import read_jsonl
from spr_plugin.core.manifest import recorded_format
from spr_plugin.core.records import Candidate, Region
from spr_plugin.core.resumable import ResumableJsonl
from spr_plugin.core.sanitize import SanitizeStats, sanitize_answer
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import profile_of
from spr_plugin.families.prompts import Prompt, build_prompt
from spr_plugin.settings import GenerationConfig

logger = logging.getLogger(__name__)


def read_candidates(path: str | os.PathLike, *, allow_empty: bool = False, skipped: list[str] | None = None) -> list[Candidate]:
    """All candidates of a JSONL file (``region_id``, ``text`` and optionally ``variant``, ``sample_idx``);
    a torn last line is skipped and noted in ``skipped`` (see :func:`~spr_plugin.core.jsonl.read_jsonl`)."""
    cands = list(read_jsonl(path, Candidate.from_dict, what="candidate", skipped=skipped))
    if not cands and not allow_empty:
        raise SPRError(f"candidate file {path} holds no candidates")
    return cands


#: Examples named in a summary per kind of dropped line (the count is complete; the list is a sample).
_NAMED = 5


@dataclass
class MergeStats:
    """What reading the candidate files kept and dropped, each drop counted and (up to five) named."""

    files: int = 0
    candidates: int = 0
    #: Keys seen again (a shard listed twice, overlapping shards); the first occurrence is kept.
    duplicates: int = 0
    #: Those of them with another text: two runs wrote one key differently (which text is right is unknown).
    conflicting_duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)
    torn_last_lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "candidates": self.candidates,
            "duplicates": self.duplicates,
            "conflicting_duplicates": self.conflicting_duplicates,
            "conflicts": self.conflicts[:_NAMED],
            "torn_last_lines": len(self.torn_last_lines),
            "torn": self.torn_last_lines[:_NAMED],
        }


def merge_candidates(paths: Sequence[str | os.PathLike]) -> tuple[list[Candidate], MergeStats]:
    """Candidates of several files (e.g. one per shard), first occurrence of each key kept.

    Duplicates appear when shards overlap (the same regions generated twice, or a file passed twice);
    keeping the first makes the merge independent of how often a file is listed. A key written with two
    different texts is counted apart and named (with a warning): which text is right cannot be known here.
    """
    if not paths:
        raise SPRError("no candidate files given")
    stats = MergeStats(files=len(paths))
    seen: dict[tuple[str, str, int], tuple[str, str]] = {}
    merged: list[Candidate] = []
    for path in paths:
        for cand in read_candidates(path, allow_empty=True, skipped=stats.torn_last_lines):
            first = seen.get(cand.key)
            if first is not None:
                stats.duplicates += 1
                if first[0] != cand.text:
                    stats.conflicting_duplicates += 1
                    note = f"{cand.key} in {path} differs from {first[1]}"
                    stats.conflicts.append(note)
                    logger.warning("candidate key %s: two different texts, the first kept", note)
                continue
            seen[cand.key] = (cand.text, str(path))
            merged.append(cand)
    if not merged:
        names = ", ".join(map(str, paths))
        raise SPRError(f"candidate file {names} holds no candidates" if len(paths) == 1 else f"candidate files {names} hold none")
    stats.candidates = len(merged)
    return merged, stats


def candidates_format(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, Any], str] | None:
    """The box format and frame candidate files record (``spr generate`` / ``spr merge`` / a build's work dir), and
    where, or None when none records them.

    Files that record them must agree: candidates of two formats or frames cannot be scored in one. A file without
    a record (written by hand or by another tool, a documented input) is taken to be in the format and frame the
    command states, which must then agree with the recorded ones.
    """
    found = [(rec, str(where)) for rec, where in filter(None, (recorded_format(p, "candidates") for p in paths))]
    if not found:
        return None
    (first, first_where), rest = found[0], found[1:]
    for rec, where in rest:
        if rec != first:
            raise SPRError(
                f"candidate files disagree: {first_where} records box format {first['box_format']} in frame "
                f"{first['frame']} but {where} records {rec['box_format']} in {rec['frame']}; score them separately"
            )
    return first, first_where


class Generator(Protocol):
    """A candidate source: ``num_samples`` texts per prompt.

    ``seed_scope`` says what the seed recorded on a candidate means: ``"prompt"`` (the back end seeds each
    prompt on its own, e.g. a server request's ``seed``) or ``"batch"`` (one RNG stream for a whole
    batch, as in-process batched sampling must; the batch's first prompt seed is recorded). A back end
    may name a ``min_batch_size`` (the server's: enough prompts to fill its request slots); batches are
    then at least that large, whatever the run's ``batch_size``.
    """

    name: str
    seed_scope: str

    def generate(self, prompts: Sequence[Prompt], seeds: Sequence[int]) -> list[list[str]]: ...

    def close(self) -> None: ...


@dataclass
class GenerationStats:
    """Counts of one generation run; joins the build summary next to the pairing statistics."""

    regions: int = 0
    prompts: int = 0
    generated: int = 0
    already_done: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    shard: str = "0/1"
    out_file: str = ""
    sanitized: SanitizeStats = field(default_factory=SanitizeStats)
    #: Prompts the back end could not answer, by reason (server back end: rejected, bad_reply, ...).
    generator_failures: dict[str, int] = field(default_factory=dict)

    @property
    def candidates_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "regions": self.regions,
            "prompts": self.prompts,
            "generated": self.generated,
            "already_done": self.already_done,
            "skipped": dict(self.skipped),
            "seconds": round(self.seconds, 3),
            "candidates_per_second": round(self.candidates_per_second, 3),
            "shard": self.shard,
            "out_file": self.out_file,
            "sanitized": self.sanitized.to_dict(),
            "generator_failures": dict(self.generator_failures),
        }


def prompt_seed(seed: int, region_id: str, variant: str) -> int:
    """The seed of one (region, variant) prompt: fixed by the run seed, independent of batching."""
    return zlib.crc32(f"{seed}:{region_id}:{variant}".encode()) & 0x7FFFFFFF


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Refuse a second writer of the same candidates file (two runs would both generate missing keys)."""
    lock_path = path.with_name(f".{path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SPRError(
            f"another process is writing {path} (lock {lock_path}); wait for it, or give each process its own file (--shard i/n)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _work_items(
    regions: Iterable[Region], variants: Sequence[str], num_samples: int, done: set, stats: GenerationStats
) -> list[tuple[Region, str]]:
    """(region, variant) prompts with at least one missing sample, grouped by variant.

    Grouping keeps prompts of similar length (the crop variant carries a second image) in the same batch,
    which wastes less padding. A region listed twice is generated once.
    """
    seen: set[str] = set()
    todo: list[tuple[Region, str]] = []
    for region in regions:
        if region.region_id in seen:
            continue
        seen.add(region.region_id)
        for variant in variants:
            missing = sum((region.region_id, variant, s) not in done for s in range(num_samples))
            stats.already_done += num_samples - missing
            if missing:
                todo.append((region, variant))
    stats.regions = len(seen)
    order = {v: i for i, v in enumerate(variants)}
    todo.sort(key=lambda item: order[item[1]])  # stable: region order kept within a variant
    return todo


def _check_family(generator: Generator, box_format: BoxFormat) -> None:
    """A server generator pre-resizes images with its family's LLaMA-Factory plugin: that family must be the one the
    candidates are parsed as (the in-process back end learns its family from the checkpoint and has none set)."""
    served = getattr(getattr(generator, "config", None), "box_format", None)
    if served is not None and served != box_format.name:
        raise ConfigError(
            f"the server generator was set up for box format {served!r} but candidates are parsed as "
            f"{box_format.name!r}; give both the same --box-format"
        )


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
    """Generate the missing candidates of ``regions`` into ``out_path`` (append-only, resumable).

    Each finished candidate is one flushed line, so a run killed at any point keeps everything it
    finished (a torn last line is repaired on the next open) and the rerun only generates missing
    ``(region, variant, sample)`` keys: nothing is lost, nothing is written twice.
    """
    _check_family(generator, box_format)
    out = Path(out_path)
    started = time.monotonic()
    stats = GenerationStats(out_file=str(out))
    keep = profile_of(box_format).kept_tokens
    with _exclusive(out):
        results = ResumableJsonl(out, lambda c: c.key, Candidate.from_dict, what="candidate")
        done = results.done
        todo = _work_items(regions, variants, num_samples, done, stats)
        stats.prompts = len(todo)
        bar = tqdm(total=len(todo) * num_samples, desc="generate", unit="cand", disable=not progress, smoothing=0.1)
        with results as sink:
            for start in range(0, len(todo), batch_size):
                batch, prompts = [], []
                for region, variant in todo[start : start + batch_size]:
                    problem = check_image_cached(region.image_path)  # truncated, bomb, gone: skip, never abort
                    if isinstance(problem, str):
                        stats.skipped[problem] += num_samples
                        logger.warning(
                            "skipping region %s (%s): image %s: %s", region.region_id, variant, region.image_path, problem
                        )
                        bar.update(num_samples)
                        continue
                    try:
                        prompts.append(build_prompt(variant, region, box_format))
                        batch.append((region, variant))
                    except OSError as exc:
                        stats.skipped["unreadable_image"] += num_samples
                        logger.warning("skipping region %s (%s): %s", region.region_id, variant, exc)
                        bar.update(num_samples)
                if not batch:
                    continue
                seeds = [prompt_seed(seed, r.region_id, v) for r, v in batch]
                failure: PartialBatchError | None = None
                try:
                    outputs: list[list[str]] = generator.generate(prompts, seeds)
                except PartialBatchError as exc:  # keep what finished, then report the failure
                    failure = exc
                    outputs = [texts or [] for texts in exc.results]
                for i, ((region, variant), texts) in enumerate(zip(batch, outputs)):
                    used_seed = seeds[i] if generator.seed_scope == "prompt" else seeds[0]
                    if not texts and failure is None:
                        stats.skipped["generation_failed"] += num_samples
                    for idx, text in enumerate(texts):
                        if (region.region_id, variant, idx) in done:
                            continue
                        text, removed = sanitize_answer(text, keep)
                        stats.sanitized.add("generated", removed)
                        cand = Candidate(region.region_id, variant, idx, text, generator.name, temperature, used_seed)
                        sink.write(cand, cand.to_dict())
                        stats.generated += 1
                    bar.update(num_samples)
                if failure is not None:
                    bar.close()
                    raise failure
        bar.close()
    stats.seconds = time.monotonic() - started
    stats.generator_failures = dict(getattr(generator, "failures", None) or {})
    return stats


def generate_with_config(
    regions: Iterable[Region],
    generator: Generator,
    box_format: BoxFormat,
    out_path: str | os.PathLike,
    config: GenerationConfig,
    *,
    progress: bool = True,
) -> GenerationStats:
    """:func:`generate_candidates` with the sampling settings of a :class:`GenerationConfig`."""
    batch_size = max(config.batch_size, getattr(generator, "min_batch_size", 1))
    return generate_candidates(
        regions, generator, box_format, out_path,
        variants=config.variants, num_samples=config.num_samples, batch_size=batch_size,
        temperature=config.temperature, seed=config.seed, progress=progress,
    )  # fmt: skip
