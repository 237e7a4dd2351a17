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
