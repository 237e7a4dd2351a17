"""Refuse file paths from data files that would leave the folder they are meant to be relative to.

Annotation files and dataset records come from other people. A COCO ``file_name`` such as
``../../etc/passwd`` or ``/home/me/.ssh/id_rsa`` would otherwise make the builder read (and copy into a
dataset it may publish) a file outside the image root; a dataset record or registry entry with such a
path would make LLaMA-Factory read it. :func:`contained_path` is lexical (``..`` and absolute paths), for
names joined to a root. :class:`ImageRoots` is the one rule for image paths a regions, pairs or dataset
file names (docs/inputs.md): read only under the folders named on the command line, symlinks resolved.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from spr_plugin.core.errors import SPRError


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0666 less the umask): temp files (``mkstemp``, 0600) are set to it
    before they replace their target, so a file spr writes is as readable as one the user's tools write."""
    mask = os.umask(0)  # the only way to read the umask: set it and put it back
    os.umask(mask)
    return 0o666 & ~mask


def contained_path(root: str | os.PathLike, relative: str, what: str = "path") -> Path:
    """``root / relative`` if it stays inside ``root``, else :class:`SPRError` naming the offending value."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise SPRError(f"{what} {relative!r} is not a usable file path")
    base = Path(os.path.abspath(root))
    joined = Path(os.path.normpath(base / relative))
    if joined != base and base not in joined.parents:
        raise SPRError(f"{what} {relative!r} points outside {base}; refusing to read it")
    return joined


#: The longest file name (bytes) most file systems allow (``NAME_MAX``), and the longest path Linux takes (``PATH_MAX``).
NAME_MAX = 255
PATH_MAX = 4096


def refuse_symlink(
    path: str | os.PathLike,
    what: str = "",
    hint: str = "spr never writes through a symlink nor replaces one: write to another path or remove the link",
) -> Path:
    """``path`` if it is no symlink, else one line naming the link, its target and ``hint``.

    Why one place: a write through a link lands in a file spr did not write (a dangling link even creates one
    wherever it points), and replacing or removing the link removes the user's link; every writer refuses it alike.
    """
    p = Path(path)
    if p.is_symlink():
        raise SPRError(f"{what + ' ' if what else ''}{p} is a symlink (to {os.path.realpath(p)}); {hint}")
    return p


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


class ImageRoots:
    """The folders a command may read images from, as the user named them on its command line.

    A regions, pairs or dataset file is data from elsewhere: it names its own image paths (and an
    ``image_root``), so trusting them would let a received file make spr read, copy, embed, render or send
    any decodable image on the machine. The rule (docs/inputs.md, "Image roots"): an image is read only if
    its *real* path (symlinks resolved) lies under the real path of one of these roots. A root that is
    itself a symlink (an image folder on a bigger disk) keeps working; a symlink *inside* a root that leads
    out of it (``root/link -> /etc``) is refused, and ``root/link/../x`` is read as ``root/x`` (what a lexical
    check approves), never as the OS would follow it. Relative image paths are looked up under each root in
    order. No root at all (no ``--images``) refuses every image, naming the flag to give.
    """

    def __init__(self, roots: Sequence[str | os.PathLike], named_by: str) -> None:
        self.roots = tuple(Path(os.path.abspath(r)) for r in roots)
        self.real = tuple(Path(os.path.realpath(r)) for r in self.roots)
        self.named_by = named_by

    @classmethod
    def of(cls, images: Sequence[str | os.PathLike] | str | os.PathLike | None) -> ImageRoots:
        """The ``--images`` folders of a command (one or several); none given means no image may be read."""
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        return cls([p for p in images or () if p is not None], "--images")

    def __repr__(self) -> str:
        return f"ImageRoots({[str(r) for r in self.roots]!r})"

    def contains_real(self, path: str | os.PathLike) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == r or r in real.parents for r in self.real)

    def resolve(self, image_path: object, what: str = "image", hint: str = "") -> Path:
        """The file to read for ``image_path`` (absolute, or relative to a root), else :class:`SPRError`.

        The returned path need not exist (callers count missing images); it never leads outside the roots.
        """
        if not isinstance(image_path, str) or not image_path or "\x00" in image_path:
            raise SPRError(f"{what} {image_path!r:.80} is not a usable file path")
        if len(os.fsencode(image_path)) > PATH_MAX or any(len(os.fsencode(part)) > NAME_MAX for part in Path(image_path).parts):
            # the OS would fail on it (ENAMETOOLONG) wherever it is first touched; said here, naming the file's value
            raise SPRError(f"{what} {image_path!r:.80}... is not a usable file path (a name longer than {NAME_MAX} bytes)")
        if os.path.isabs(image_path):
            candidates = [Path(os.path.normpath(image_path))]
        else:
            candidates = [Path(os.path.normpath(root / image_path)) for root in self.roots]
        inside = [c for c in candidates if self.contains_real(c)]
        for path in inside:
            if path.is_file():
                return path
        if inside:
            return inside[0]
        linked = [c for c in candidates if any(c == r or r in c.parents for r in self.roots)]
        if linked:  # lexically inside, but a symlink on the way leads out
            real = os.path.realpath(linked[0])
            raise SPRError(
                f"{what} {str(linked[0])!r:.200} is a link to {real}, outside the image folders named on the command "
                f"line; refusing to read it (if that folder is yours, name it too: --images {Path(real).parent})"
            )
        where = f"{', '.join(str(r) for r in self.roots)}: {self.named_by}" if self.roots else f"none: no {self.named_by} given"
        raise SPRError(
            f"{what} {image_path!r:.200} points outside the image folders named on the command line ({where}); "
            f"refusing to read it{'; ' + hint if hint else ''}"
        )


def require_real_inside(
    folder: str | os.PathLike,
    path: str | os.PathLike,
    *,
    label: str = "",
    where: str | None = None,
    refusal: str = "refusing to read it",
) -> Path:
    """``path`` if, symlinks resolved, it lies inside ``folder``; else one line naming the link and its target.

    Why: a folder from elsewhere (a received dataset folder) may hold a link out of it; following it would make spr
    read, show, export or train on a file the user never named.
    """
    if not ImageRoots([folder], "--dataset-dir").contains_real(path):
        raise SPRError(f"{label}{path} is a link to {os.path.realpath(path)}, outside {where or folder}; {refusal}")
    return Path(path)


def image_roots(given: ImageRoots | str | os.PathLike | None, region: object) -> ImageRoots:
    """The roots a library call names (``ImageRoots`` or one folder); None falls back to the ``image_root``
    the region recorded, which only library callers holding regions they sampled themselves may rely on
    (the command line always names its roots)."""
    if isinstance(given, ImageRoots):
        return given
    if given is not None:
        return ImageRoots([given], "image_root")
    recorded = getattr(region, "image_root", "")
    if not recorded:
        raise SPRError(
            f"region {getattr(region, 'region_id', '?')}: no image root recorded for {getattr(region, 'image_path', '?')}; "
            "pass --images FOLDER (the folder the images were sampled from)"
        )
    return ImageRoots([recorded], "the image root the region recorded")
