"""JSONL files for intermediate results: append-only writes and reads that name the bad line.

Every stage appends one line per finished record and flushes it, so a crash loses at most the line
being written; a reader skips a torn last line instead of failing the whole resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import SPRError

T = TypeVar("T")


def read_jsonl(path: str | os.PathLike, parse: Callable[[dict[str, Any]], T], *, what: str = "record") -> Iterator[T]:
    """Yield ``parse(obj)`` for every line; a bad line raises :class:`SPRError` naming file and line.

    A torn final line (no trailing newline, invalid JSON), as left by a killed writer, is skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise SPRError(f"{what} file not found: {path}")
    with path.open("r", encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                return  # torn last line of an interrupted run
            raise SPRError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise SPRError(f"{path}:{lineno}: expected a JSON object per line, found {type(obj).__name__}")
        try:
            yield parse(obj)
        except (KeyError, TypeError, ValueError) as exc:
            raise SPRError(f"{path}:{lineno}: not a valid {what} ({type(exc).__name__}: {exc})") from None


def read_dataset_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """Records of a LLaMA-Factory data file, numbered for error messages: a ``.json`` list (numbered from 1)
    or a ``.jsonl`` file (numbered by line). Invalid JSON raises :class:`SPRError` naming file and line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SPRError(f"{path}: not valid JSON ({exc.msg})") from None
        if not isinstance(records, list):
            raise SPRError(f"{path}: expected a JSON list of records")
        return list(enumerate(records, start=1))
    numbered = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise SPRError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return numbered


class JsonlAppender:
    """Appends records to a JSONL file, one flushed line each; repairs a torn last line on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb+") as f:
                data = f.read()
                if not data.endswith(b"\n"):
                    f.seek(data.rfind(b"\n") + 1)
                    f.truncate()
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so readers see the old or the new content, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    atomic_write_text(path, "".join(lines))
    return len(lines)
