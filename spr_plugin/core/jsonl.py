"""JSONL files for intermediate results: append-only writes and reads that name the bad line.

Every stage appends one line per finished record and flushes it, so a crash loses at most the line
being written; a reader skips a torn last line instead of failing the whole resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from spr_plugin.core.errors import SPRError
from spr_plugin.core.paths import new_file_mode, refuse_symlink

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` (Python's json accepts them; no JSON file should hold them)."""
    return json.loads(text, parse_constant=_no_constant)


def read_json(path: str | os.PathLike, what: str, *, strict: bool = True, hint: str = "") -> Any:
    """The JSON value of the file ``path`` (a ``what``: "annotation file", "dataset_info.json" ...), or one
    :class:`SPRError` line naming the file and what is wrong: missing, unreadable, not UTF-8, not JSON, nested
    too deeply for the parser. ``hint`` is appended to each message (``"; rebuild the dataset"``).

    ``strict`` refuses ``NaN``/``Infinity`` (see :func:`loads_strict`); files spr only passes on, as
    LLaMA-Factory's own ``json.load`` reads them, are read with ``strict=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise SPRError(_not_a_file(path, what))
    try:
        text = path.read_bytes().decode("utf-8")
        return loads_strict(text) if strict else json.loads(text)
    except UnicodeDecodeError as exc:
        raise SPRError(f"{path}: not valid UTF-8 (byte {exc.start}){hint}") from None
    except RecursionError:
        raise SPRError(f"{path}: nested too deeply to be a {what}{hint}") from None
    except json.JSONDecodeError as exc:
        raise SPRError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}){hint}") from None
    except ValueError as exc:  # NaN / Infinity under strict
        raise SPRError(f"{path}: not valid JSON ({exc}){hint}") from None
    except OSError as exc:
        raise SPRError(f"{path}: cannot be read ({exc.strerror or exc}){hint}") from None


def _not_a_file(path: Path, what: str) -> str:
    """Why ``path`` cannot be read as a file: missing, or there but not a regular file (a folder, a FIFO that would
    block the read, a device); said as it is, not as "not found"."""
    if os.path.lexists(path) and not os.path.isfile(path):
        kind = "a folder" if path.is_dir() else "a link to nothing" if not path.exists() else "a FIFO or device"
        return f"{what} {path} is {kind}, not a regular file"
    return f"{what} not found: {path}"


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes ``NaN``/``Infinity`` (not JSON: most readers refuse the file).

    Every JSON file spr writes goes through here; a non-finite number is refused with one line instead of
    being written (records are validated on reading, so one here means a value came from elsewhere).
    """
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError as exc:
        if "JSON compliant" not in str(exc):
            raise
        raise SPRError(f"refusing to write a non-finite number (NaN or Infinity) as JSON: {_first_non_finite(obj)}") from None


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN/infinite float replaced by ``None``: for summaries and reports, where a number
    that is undefined (a mean of nothing) is ``null`` rather than a reason to lose the run's report."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def _first_non_finite(obj: Any, where: str = "") -> str:
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'value'} = {obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _first_non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return ""


def read_jsonl(
    path: str | os.PathLike,
    parse: Callable[[dict[str, Any]], T],
    *,
    what: str = "record",
    skipped: list[str] | None = None,
) -> Iterator[T]:
    """Yield ``parse(obj)`` for every line; a bad line raises :class:`SPRError` naming file and line.

    A torn final line (no trailing newline, invalid JSON), as left by a killed writer, is skipped, never
    silently: a warning names file and line, and ``skipped`` (when given) gets ``"FILE:LINE: torn last line"``
    so the caller's summary counts it. Lines are decoded one by one, so invalid UTF-8 is reported with its
    line number too.
    """
    path = Path(path)
    if not path.is_file():
        raise SPRError(_not_a_file(path, f"{what} file"))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SPRError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    torn_last = not data.endswith(b"\n")
    if not torn_last:
        lines.pop()  # the empty piece after the final newline
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = lineno == len(lines) and torn_last
        try:
            obj = loads_strict(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            if last:  # a writer killed inside a multi-byte character
                _note_torn(path, lineno, what, skipped)
                return
            raise SPRError(f"{path}:{lineno}: not valid UTF-8 (byte {exc.start})") from None
        except ValueError as exc:  # JSONDecodeError, NaN/Infinity
            if last:  # torn last line of an interrupted run
                _note_torn(path, lineno, what, skipped)
                return
            raise SPRError(f"{path}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(obj, dict):
            raise SPRError(f"{path}:{lineno}: expected a JSON object per line, found {type(obj).__name__}")
        try:
            yield parse(obj)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise SPRError(f"{path}:{lineno}: not a valid {what} ({type(exc).__name__}: {exc})") from None


def _note_torn(path: Path, lineno: int, what: str, skipped: list[str] | None) -> None:
    note = f"{path}:{lineno}: torn last line (no newline, not valid JSON)"
    logger.warning("skipping a %s: %s", what, note)
    if skipped is not None:
        skipped.append(note)


def read_dataset_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """Records of a LLaMA-Factory data file, numbered for error messages: a ``.json`` list (numbered from 1)
    or a ``.jsonl`` file (numbered by line). Invalid JSON or UTF-8 raises :class:`SPRError` naming file and line."""
    path = Path(path)
    if path.suffix == ".json":
        records = read_json(path, "data file")
        if not isinstance(records, list):
            raise SPRError(f"{path}: expected a JSON list of records")
        return list(enumerate(records, start=1))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SPRError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    numbered = []
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            try:
                numbered.append((lineno, loads_strict(line.decode("utf-8"))))
            except UnicodeDecodeError as exc:
                raise SPRError(f"{path}:{lineno}: not valid UTF-8 (byte {exc.start})") from None
            except ValueError as exc:
                raise SPRError(f"{path}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    return numbered


class JsonlAppender:
    """Appends records to a JSONL file, one flushed line each; repairs a torn last line on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = replace_target(path)  # appending through a symlink would write (and repair) the user's file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb+") as f:
                data = f.read()
                if not data.endswith(b"\n"):
                    f.seek(data.rfind(b"\n") + 1)
                    f.truncate()
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._f.write(dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _new_file_mode(target: Path) -> int:
    """The mode the replacement of ``target`` gets: the existing file's, or what ``open()`` would give a new file.

    ``mkstemp`` creates 0600 files; replacing a shared ``dataset_info.json`` (0664) with one would lock the
    other users of the dataset folder out.
    """
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return new_file_mode()


def replace_target(path: str | os.PathLike) -> Path:
    """The file an atomic replace of ``path`` writes: ``path`` itself, which must not be a symlink. Writing the link's
    target would write a file spr did not write (anywhere the link points: a dangling link would even create it), and
    replacing the link by a file would remove the user's link: either is refused in one line, nothing changed."""
    return refuse_symlink(path)


@contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """A temp file next to ``path`` that replaces it on success: readers see the old or the new file,
    never a half-written one, and a crash or a full disk leaves only the old one (the temp file is removed).
    The replacement keeps the old file's mode; a symlink at ``path`` is refused (:func:`replace_target`)."""
    target = replace_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    file_mode = _new_file_mode(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:40]}.", suffix=".tmp", dir=target.parent)  # short: NAME_MAX
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so readers see the old or the new content, never a half-written one."""
    with atomic_output(path) as f:
        f.write(text)


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    lines = [dumps(r, ensure_ascii=False) + "\n" for r in records]
    atomic_write_text(path, "".join(lines))
    return len(lines)
