"""Register datasets in a LLaMA-Factory ``dataset_info.json``.

LLaMA-Factory (and its web UI, LlamaBoard) reads exactly one ``<dataset_dir>/dataset_info.json`` and has
no plugin mechanism for datasets, so registering means merging an entry into that file. Users keep
their own entries there, so the merge must never lose one: it holds an exclusive lock while it reads,
merges and atomically replaces the file, refuses to overwrite a different entry of the same name unless
asked, and leaves a malformed file untouched. The merge is an edit of the file's text (:func:`merge_entries_text`):
the user's entries keep their bytes (formatting, key order, comments-free JSON quirks such as a repeated key or a
``NaN``), only spr's entries are inserted or replaced. A ``dataset_info.json`` that is a symlink (or not a regular
file) is refused, never written through: its target is a file spr did not write.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import atomic_write_text, dumps, read_json
from spr_plugin.core.paths import check_write_path, contained_path, refuse_symlink
from spr_plugin.core.sharegpt import RANKING_COLUMNS, SFT_COLUMNS, check_record_media

DATASET_INFO = "dataset_info.json"


def ranking_entry(file_name: str) -> dict[str, Any]:
    """A ShareGPT ranking (DPO) entry with images, in LLaMA-Factory's default tags (from/value/human/gpt)."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "ranking": True,
        "columns": dict(RANKING_COLUMNS),
    }


#: Suffix of the chosen-only SFT entry registered next to every built DPO dataset.
CHOSEN_SUFFIX = "_chosen"


def chosen_sft_entry(file_name: str) -> dict[str, Any]:
    """A ShareGPT SFT entry (not ranking) with images: the prompt and the chosen answer as one conversation.

    Why: the paper's ablation trains on the chosen answers alone (supervised) instead of preferences. As a
    non-ranking entry it is listed under LlamaBoard's default Stage (Supervised Fine-Tuning), which otherwise
    shows none of our datasets, and ``llamafactory-cli train`` accepts it with ``stage: sft``.
    """
    return {"file_name": file_name, "formatting": "sharegpt", "columns": dict(SFT_COLUMNS)}


def chosen_sft_name(name: str) -> str:
    return name + CHOSEN_SUFFIX


def build_entries(name: str) -> dict[str, dict[str, Any]]:
    """The entries a build registers: the DPO dataset and its chosen-only SFT companion."""
    return {name: ranking_entry(f"{name}.jsonl"), chosen_sft_name(name): chosen_sft_entry(f"{chosen_sft_name(name)}.jsonl")}


@contextmanager
def _locked(dataset_dir: Path) -> Iterator[None]:
    """The one lock every writer of ``dataset_info.json`` holds (waits for the others). A symlinked lock file is
    refused: opening it would truncate whatever it points at."""
    with FileLock(check_write_path(dataset_dir, f".{DATASET_INFO}.lock", "lock file")):
        yield


def read_dataset_info(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The current entries (empty if there is no file yet); a malformed file raises :class:`SPRError`."""
    path = Path(dataset_dir) / DATASET_INFO
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SPRError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):  # a FIFO would block the read forever, a folder is no file of entries
        raise SPRError(f"{path} is not a regular file; move it away, nothing was changed")
    info = read_json(path, DATASET_INFO, strict=False, hint="; fix or move it, nothing was changed")
    if not isinstance(info, dict):
        raise SPRError(f"{path} must hold a JSON object of dataset entries; nothing was changed")
    return info


def _check_file_name(dataset_dir: str | os.PathLike, name: str, entry: dict[str, Any], scan_media: bool = True) -> None:
    """An entry's data file, and the media its records name, must lie inside ``dataset_dir``: LLaMA-Factory
    would read whatever they point at."""
    if "file_name" in entry:
        data_file = contained_path(dataset_dir, str(entry["file_name"]), f"file_name of dataset {name!r}")
        if scan_media:  # not before a build: the file about to be (re)written is not the one registered
            check_record_media(dataset_dir, data_file, entry.get("columns", {}))


def _clash(
    info: dict[str, Any], entries: dict[str, dict[str, Any]], overwrite: bool, path: Path, same_file_only: bool = False
) -> None:
    """Refuse a name registered with another entry, unless ``overwrite``. ``same_file_only`` (an export): only an entry
    naming the very data file the export writes (and owns) can be replaced; an entry of the user's under that name
    for another file is theirs, and is never replaced, not even with ``overwrite``."""
    for name, entry in entries.items():
        if name not in info or info[name] == entry:
            continue
        old = info[name]
        if same_file_only and not (isinstance(old, dict) and old.get("file_name") == entry.get("file_name")):
            shown = old.get("file_name") if isinstance(old, dict) else old
            raise SPRError(
                f"dataset {name!r} is already registered in {path} for {shown!r:.80}, not for spr's {entry.get('file_name')}; "
                "spr never replaces an entry it did not write (not even with --overwrite): choose another --name"
            )
        if not overwrite:
            raise SPRError(
                f"dataset {name!r} is already registered in {path} with a different entry; "
                "choose another --name or pass --overwrite"
            )


def check_can_register_entries(
    dataset_dir: str | os.PathLike, entries: dict[str, dict[str, Any]], overwrite: bool = False, same_file_only: bool = False
) -> None:
    """Raise before any data is written if registering ``entries`` would fail, so a refused run changes nothing."""
    for name, entry in entries.items():
        _check_file_name(dataset_dir, name, entry, scan_media=False)
    check_info_path(dataset_dir)
    _clash(read_dataset_info(dataset_dir), entries, overwrite, Path(dataset_dir) / DATASET_INFO, same_file_only)


def check_info_path(dataset_dir: str | os.PathLike) -> Path:
    """``<dataset_dir>/dataset_info.json`` if spr may replace it: not a symlink (its target is a file of the user's,
    perhaps shared by other data folders, that spr did not write), not a folder, nothing else than a regular file."""
    path = refuse_symlink(
        Path(dataset_dir) / DATASET_INFO,
        hint="spr never writes through a symlink: pass the folder holding the real file as --dataset-dir, or replace "
        "the link by a copy; nothing was changed",
    )
    check_write_path(dataset_dir, DATASET_INFO, DATASET_INFO)
    if path.exists() and not path.is_file():
        raise SPRError(f"{path} is not a regular file; move it away, nothing was changed")
    return path


_WS = re.compile(r"[ \t\n\r]*")


def _members(text: str) -> tuple[list[tuple[str, int, int, int]], int, int]:
    """The top-level members of the JSON object ``text``: ``(key, key start, value start, value end)`` each, the
    index of the opening and of the closing brace. ``ValueError`` if ``text`` is not one JSON object."""
    decoder = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if text[i : i + 1] != "{":
        raise ValueError("not an object")
    opening = i
    i = _WS.match(text, i + 1).end()
    members: list[tuple[str, int, int, int]] = []
    if text[i : i + 1] == "}":
        return members, opening, i
    while True:
        if text[i : i + 1] != '"':
            raise ValueError("expected a key")
        key, j = json.decoder.scanstring(text, i + 1)
        j = _WS.match(text, j).end()
        if text[j : j + 1] != ":":
            raise ValueError("expected ':'")
        start = _WS.match(text, j + 1).end()
        _, end = decoder.raw_decode(text, start)
        members.append((key, i, start, end))
        k = _WS.match(text, end).end()
        if text[k : k + 1] == "}":
            if text[k + 1 :].strip():
                raise ValueError("text after the object")
            return members, opening, k
        if text[k : k + 1] != ",":
            raise ValueError("expected ',' or '}'")
        i = _WS.match(text, k + 1).end()


def merge_entries_text(text: str, entries: dict[str, dict[str, Any]]) -> str:
    """``text`` (a ``dataset_info.json``) with ``entries`` set, every other byte kept.

    An entry already there is replaced in place (its last occurrence: the one ``json.load`` keeps); a new one is
    appended after the last member, in the file's own style (one line for a one-line file, else indented like its
    members). Why not ``json.dump`` of the merged dict: that rewrites the user's whole file, drops a repeated key,
    refuses a ``NaN`` the user's LLaMA-Factory reads, and loses the user's formatting.
    """
    members, opening, closing = _members(text)
    first_gap = text[opening + 1 : members[0][1]] if members else text[opening + 1 : closing]
    indent = first_gap.rsplit("\n", 1)[1] if "\n" in first_gap else None
    if indent == "":
        indent = "  "

    def value(entry: dict[str, Any]) -> str:
        if indent is None:
            return dumps(entry, ensure_ascii=False)
        return dumps(entry, indent=indent, ensure_ascii=False).replace("\n", "\n" + indent)

    last = {key: (start, end) for key, _, start, end in members}
    edits = sorted(((last[k][0], last[k][1], value(e)) for k, e in entries.items() if k in last), reverse=True)
    for start, end, new in edits:
        text = text[:start] + new + text[end:]
    added = [f"{dumps(k, ensure_ascii=False)}: {value(e)}" for k, e in entries.items() if k not in last]
    if added:
        members, opening, closing = _members(text)
        sep = ", " if indent is None else ",\n" + indent
        joined = sep.join(added)
        if members:
            end = members[-1][3]
            text = text[:end] + sep + joined + text[end:]
        elif indent is None:
            text = text[: opening + 1] + joined + text[closing:]
        else:
            text = text[: opening + 1] + "\n" + indent + joined + "\n" + text[closing:]
    return text


def register_datasets(
    dataset_dir: str | os.PathLike, entries: dict[str, dict[str, Any]], overwrite: bool = False, same_file_only: bool = False
) -> Path:
    """Merge all ``entries`` into ``<dataset_dir>/dataset_info.json`` in one locked, atomic step, keeping every
    other entry byte for byte (:func:`merge_entries_text`); if any name clashes, none is written."""
    for name, entry in entries.items():
        _check_file_name(dataset_dir, name, entry)
    directory = Path(dataset_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = check_info_path(directory)
    with _locked(directory):
        check_info_path(directory)
        info = read_dataset_info(directory)
        if all(info.get(name) == entry for name, entry in entries.items()):
            return path
        _clash(info, entries, overwrite, path, same_file_only)
        if path.exists():
            old = path.read_bytes().decode("utf-8")
            try:
                text = merge_entries_text(old, entries)
            except ValueError:
                raise SPRError(f"{path}: not one JSON object of dataset entries; fix or move it, nothing was changed") from None
            merged = json.loads(text)
            if set(merged) != set(info) | set(entries) or any(merged[k] != e for k, e in entries.items()):
                raise SPRError(f"{path}: could not merge the entries into it; nothing was changed")  # never expected
        else:
            text = dumps(entries, indent=2, ensure_ascii=False) + "\n"
        check_info_path(directory)  # a symlink swapped in meanwhile is refused, not written through
        atomic_write_text(path, text)
    return path


def require_data_file(dataset_dir: str | os.PathLike, file_name: str) -> Path:
    """The data file an entry names, which must exist inside ``dataset_dir`` (``spr register`` of a missing
    file would register a dataset LLaMA-Factory fails on at training time)."""
    path = contained_path(dataset_dir, file_name, "--file-name")
    if not path.is_file():
        raise SPRError(f"dataset file not found: {path} (--file-name is relative to --dataset-dir {dataset_dir})")
    return path


def register_dataset(dataset_dir: str | os.PathLike, name: str, entry: dict[str, Any], overwrite: bool = False) -> Path:
    """Merge ``{name: entry}`` into ``<dataset_dir>/dataset_info.json``, keeping every other entry."""
    return register_datasets(dataset_dir, {name: entry}, overwrite)
