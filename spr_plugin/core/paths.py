"""Refuse file paths from data files that would leave the folder they are meant to be relative to.

Annotation files and dataset records come from other people. A COCO ``file_name`` such as
``../../etc/passwd`` or ``/home/me/.ssh/id_rsa`` would otherwise make the builder read (and copy into a
dataset it may publish) a file outside the image root; a dataset record or registry entry with such a
path would make LLaMA-Factory read it. The check is lexical (``..`` and absolute paths), not
``resolve()``-based, so image folders that are symlinks to a bigger disk keep working.
"""

from __future__ import annotations

import os
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import read_dataset_records


def contained_path(root: str | os.PathLike, relative: str, what: str = "path") -> Path:
    """``root / relative`` if it stays inside ``root``, else :class:`SPRError` naming the offending value."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise SPRError(f"{what} {relative!r} is not a usable file path")
    base = Path(os.path.abspath(root))
    joined = Path(os.path.normpath(base / relative))
    if joined != base and base not in joined.parents:
        raise SPRError(f"{what} {relative!r} points outside {base}; refusing to read it")
    return joined


def is_contained(root: str | os.PathLike, relative: str) -> bool:
    try:
        contained_path(root, relative)
    except SPRError:
        return False
    return True


MEDIA_COLUMNS = ("images", "videos", "audios")


def check_record_media(dataset_dir: str | os.PathLike, data_file: str | os.PathLike, columns: dict[str, str]) -> int:
    """Refuse a dataset whose records name media by a relative path that leaves ``dataset_dir``.

    LLaMA-Factory joins relative media paths to ``dataset_dir`` (its ``media_dir``), so ``../../x.jpg``
    in a record would make training read an arbitrary file. Absolute paths are the explicit choice of
    ``--image-mode absolute`` and are left alone. Returns the number of media paths checked; files that
    are not JSON/JSONL (or do not exist yet) are not scanned.
    """
    path = Path(data_file)
    if path.suffix not in (".json", ".jsonl") or not path.is_file():
        return 0
    keys = [columns.get(c, c) for c in MEDIA_COLUMNS]
    numbered = read_dataset_records(path)
    checked = 0
    for where, record in numbered:
        if not isinstance(record, dict):
            continue
        for key in keys:
            values = record.get(key) or []
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str) and not os.path.isabs(value):
                    contained_path(dataset_dir, value, f"{path}:{where}: {key} entry")
                    checked += 1
    return checked
