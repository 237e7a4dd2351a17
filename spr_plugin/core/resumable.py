"""One resumable results file: what an earlier (maybe killed) run finished, and an append-only sink for the rest.

Candidate generation (keyed by region, variant, sample) and evaluation (keyed by item id) both resume this way,
so a crash loses at most the unfinished batch and a rerun never writes a key twice. A torn last line is left
out when reading (:func:`~spr_plugin.core.jsonl.read_jsonl`) and cut off when the sink opens
(:class:`~spr_plugin.core.jsonl.JsonlAppender`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

from spr_plugin.core.jsonl import JsonlAppender, read_jsonl

T = TypeVar("T")


class ResumableJsonl(Generic[T]):
    """``done``: the finished records of ``path`` by ``key`` (parsed with ``parse``); ``write`` appends one flushed
    line and records it as done. Use as a context manager (the sink opens on enter)."""

    def __init__(self, path: str | os.PathLike, key: Callable[[T], Hashable], parse: Callable[[dict[str, Any]], T], *, what: str):
        self.path = Path(path)
        self._key = key
        self.done: dict[Hashable, T] = {key(r): r for r in read_jsonl(self.path, parse, what=what)} if self.path.is_file() else {}
        self._sink: JsonlAppender | None = None

    def __enter__(self) -> ResumableJsonl[T]:
        self._sink = JsonlAppender(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sink is not None:
            self._sink.close()

    def write(self, record: T, row: dict[str, Any]) -> None:
        """Append ``row`` (the JSON form of ``record``) and count ``record`` as done."""
        assert self._sink is not None, "ResumableJsonl.write outside its with block"
        self._sink.write(row)
        self.done[self._key(record)] = record
