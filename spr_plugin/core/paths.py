"""Refuse file paths from data files that would leave the folder they are meant to be relative to.

Annotation files and dataset records come from other people. A COCO ``file_name`` such as
``../../etc/passwd`` or ``/home/me/.ssh/id_rsa`` would otherwise make the builder read (and copy into a
dataset it may publish) a file outside the image root; a dataset record or registry entry with such a
path would make LLaMA-Factory read it. The check is lexical (``..`` and absolute paths), not
``resolve()``-based, so image folders that are symlinks to a bigger disk keep working.
"""

from __future__ import annotations

import os
import stat
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


#: The longest file name (bytes) most file systems allow (``NAME_MAX``).
NAME_MAX = 255


def check_write_path(root: str | os.PathLike, relative: str, what: str = "path", *, folder: bool = False) -> Path:
    """``root / relative`` if spr may create or replace it: inside ``root``, every name at most :data:`NAME_MAX`
    bytes, and no symlink anywhere below ``root`` (a symlinked ``<name>/images`` or ``<name>.jsonl`` would make a
    write, replace or delete land in a folder or file of the user's). ``folder``: the path is a folder, so an
    existing non-folder there is refused; otherwise an existing folder is. ``root`` itself may be a symlink: it is
    the folder the user named. Checked with ``lstat`` only; nothing is created.
    """
    path = contained_path(root, relative, what)
    base = Path(os.path.abspath(root))
    current = base
    parts = path.relative_to(base).parts
    for i, part in enumerate(parts):
        if len(os.fsencode(part)) > NAME_MAX:
            raise SPRError(f"{what} {str(path)[:80]}...: the file name is longer than {NAME_MAX} bytes")
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise SPRError(f"{what} {path}: a part of it is a file, not a folder") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise SPRError(
                f"{what} {current} is a symlink; spr never writes, replaces or removes through a symlink "
                "(remove the link or choose another --name)"
            )
        if (not last or folder) and not stat.S_ISDIR(st.st_mode):
            raise SPRError(f"{what} {current} is a file, not a folder; move it away or choose another --name")
        if last and not folder and stat.S_ISDIR(st.st_mode):
            raise SPRError(f"{what} {current} is a folder where a file goes; move it away or choose another --name")
    return path


def make_real_dirs(root: str | os.PathLike, relative: str, what: str = "folder") -> Path:
    """Create ``root / relative`` folder by folder, refusing a symlink at any level (:func:`check_write_path`)."""
    path = check_write_path(root, relative, what, folder=True)
    path.mkdir(parents=True, exist_ok=True)
    return check_write_path(root, relative, what, folder=True)  # a link swapped in meanwhile is refused
