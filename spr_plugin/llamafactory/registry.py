"""Register datasets in a LLaMA-Factory ``dataset_info.json``.

LLaMA-Factory (and its web UI, LlamaBoard) reads exactly one ``<dataset_dir>/dataset_info.json`` and has
no plugin mechanism for datasets, so registering means merging an entry into that file. Users keep
their own entries there, so the merge must never lose one: it holds an exclusive lock while it reads,
merges and atomically replaces the file, refuses to overwrite a different entry of the same name unless
asked, and leaves a malformed file untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import atomic_write_text, dumps, read_json
from spr_plugin.core.paths import check_write_path, contained_path
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
    if not path.exists():
        return {}
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


def _clash(info: dict[str, Any], entries: dict[str, dict[str, Any]], overwrite: bool, path: Path) -> None:
    for name, entry in entries.items():
        if name in info and info[name] != entry and not overwrite:
            raise SPRError(
                f"dataset {name!r} is already registered in {path} with a different entry; "
                "choose another --name or pass --overwrite"
            )


def check_can_register_entries(
    dataset_dir: str | os.PathLike, entries: dict[str, dict[str, Any]], overwrite: bool = False
) -> None:
    """Raise before any data is written if registering ``entries`` would fail, so a refused run changes nothing."""
    for name, entry in entries.items():
        _check_file_name(dataset_dir, name, entry, scan_media=False)
    _clash(read_dataset_info(dataset_dir), entries, overwrite, Path(dataset_dir) / DATASET_INFO)


def register_datasets(dataset_dir: str | os.PathLike, entries: dict[str, dict[str, Any]], overwrite: bool = False) -> Path:
    """Merge all ``entries`` into ``<dataset_dir>/dataset_info.json`` in one locked, atomic step, keeping every
    other entry; if any name clashes, none is written."""
    for name, entry in entries.items():
        _check_file_name(dataset_dir, name, entry)
    directory = Path(dataset_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DATASET_INFO
    with _locked(directory):
        info = read_dataset_info(directory)
        if all(info.get(name) == entry for name, entry in entries.items()):
            return path
        _clash(info, entries, overwrite, path)
        info.update(entries)
        atomic_write_text(path, dumps(info, indent=2, ensure_ascii=False) + "\n")
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
