"""Split generation work over processes and machines, deterministically.

A region belongs to shard ``stable_hash(region_id) % n``: the split depends only on the region ids, not
on their order or on which other regions exist, so every process (or machine, or rerun) agrees on it
without talking to the others, and a resumed shard finds exactly its own work again.

Under ``accelerate launch`` (or ``torchrun``) the shard is this process's rank out of the world size
when ``--shard`` is not given; each shard writes its own candidates file (see :func:`shard_path`), and
:func:`spr_plugin.generation.candidates.merge_candidates` joins them, dropping duplicate keys.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.records import Region

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0-based); ``ShardSpec(0, 1)`` is all the work."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"invalid shard {self.index}/{self.count}: need 0 <= i < n (e.g. --shard 0/4)")

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """``"i/n"`` as given to ``--shard``."""
        m = _SPEC.match(text)
        if not m:
            raise ConfigError(f"invalid --shard {text!r}: expected i/n, e.g. 0/4 for the first of four shards")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def is_split(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and Python version (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def shard_of(region_id: str, count: int) -> int:
    return stable_hash(region_id) % count


def select_shard(regions: Iterable[Region], spec: ShardSpec) -> Iterator[Region]:
    """The regions of shard ``spec``, in their input order."""
    for region in regions:
        if not spec.is_split or shard_of(region.region_id, spec.count) == spec.index:
            yield region


def launched_world() -> tuple[int, int] | None:
    """``(rank, world_size)`` when started by ``accelerate launch``/``torchrun`` with several processes.

    Read from the environment those launchers set (``RANK``/``WORLD_SIZE``), so a plain run never
    imports accelerate or touches torch.distributed.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0") or 0), world


def resolve_shard(explicit: str | None) -> ShardSpec:
    """``--shard i/n`` if given, else the launcher's process index / process count, else everything.

    Under a launcher the values are confirmed through accelerate's ``PartialState``, the same object
    LLaMA-Factory and transformers use, so the shard matches the process's device assignment.
    """
    if explicit:
        return ShardSpec.parse(explicit)
    if launched_world() is None:
        return ShardSpec()
    from accelerate import PartialState

    state = PartialState()
    return ShardSpec(state.process_index, state.num_processes)


def shard_path(path: str | os.PathLike, spec: ShardSpec) -> Path:
    """``candidates.jsonl`` -> ``candidates.shard-00001-of-00004.jsonl`` for a split run, else unchanged."""
    path = Path(path)
    if not spec.is_split:
        return path
    suffix = path.suffix or ".jsonl"
    return path.with_name(f"{path.stem}.shard-{spec.index:05d}-of-{spec.count:05d}{suffix}")
