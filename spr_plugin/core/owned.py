"""Which files of a shared folder spr wrote: a record with their sizes and content hashes.

Why: a dataset folder is shared with the user's own files (other datasets, a hand-made picture in
``<name>/images``, a companion file that is a symlink to something kept elsewhere). "Delete everything under
``<name>/images``" or "write ``<name>.pairs.jsonl`` wherever it points" destroys what is not ours. So a writer
first records the files it is about to write with their size and SHA-256 (``pending``), and once done the set
it wrote (``files``). A later run treats a file as spr's only while its content still matches a recorded
stamp: a file the user put there, or changed since, is never replaced or removed on the strength of a name.

A content stamp alone proves nothing: a record received with a dataset folder, or forged, could list a file of the
user's with its size and SHA-256. So each file spr wrote also gets its identity (inode number and ctime in ns,
read right after spr renamed it into place): only a file with that identity *and* that content is spr's to replace
or remove. A record copied or forged elsewhere cannot carry the identity of a file on this disk (a copied dataset
folder is, conservatively, no longer spr's: ``--overwrite`` then refuses its files in one line). A recorded file
without an identity (a record of an older spr, or a file of an interrupted write spr had not yet recorded) is
only ever "replaced" by the very same bytes.

The record is itself an ordinary JSON file next to what it describes (``<name>.spr-files.json`` for a dataset).
Writes go to short temp names (``.spr-XXXXXXXX.tmp``: a 244-byte target name must not make its temp name too
long for the file system) and are renamed over the exact path, which was checked not to be a symlink, so a
write never lands in a file the path merely points at.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.paths import check_write_path, contained_path, new_file_mode

#: Prefix and suffix of every temp file spr writes next to a target (``.spr-<8 random>.tmp``).
TEMP_PREFIX, TEMP_SUFFIX = ".spr-", ".tmp"
_TEMP_RE = re.compile(r"\.spr-[a-z0-9_]{8}\.tmp")
RECORD_VERSION = 1


@dataclass(frozen=True)
class Stamp:
    """What a file spr wrote looked like: enough to tell, later, that it is still spr's file."""

    size: int
    sha256: str
    #: ``(inode, ctime_ns)`` of the file spr wrote, read after it was renamed into place (None: not known, so the
    #: stamp describes a content only and proves no ownership; see the module docstring).
    ident: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, int | str]:
        d: dict[str, int | str] = {"size": self.size, "sha256": self.sha256}
        if self.ident is not None:
            d["inode"], d["ctime_ns"] = self.ident
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Stamp:
        size, digest = d["size"], d["sha256"]
        if not _count(size) or not isinstance(digest, str):
            raise ValueError("bad stamp")
        inode, ctime = d.get("inode"), d.get("ctime_ns")
        if inode is None and ctime is None:
            return cls(size, digest)
        if not _count(inode) or not _count(ctime):
            raise ValueError("bad stamp")
        return cls(size, digest, (inode, ctime))

    def same_content(self, other: Stamp) -> bool:
        return self.size == other.size and self.sha256 == other.sha256

    @classmethod
    def of_bytes(cls, data: bytes) -> Stamp:
        return cls(len(data), hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> Stamp:
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        return cls(size, h.hexdigest())


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


def identity(path: str | os.PathLike) -> tuple[int, int]:
    """``(inode, ctime_ns)`` of ``path`` itself (not a symlink's target)."""
    st = os.lstat(path)
    return st.st_ino, st.st_ctime_ns


@lru_cache(maxsize=1 << 17)
def _stamp(path: str, mtime_ns: int, size: int, inode: int) -> Stamp:
    return Stamp.of_file(path)


def stamp_of(path: str | os.PathLike) -> Stamp:
    """:meth:`Stamp.of_file`, read once per file version (path, mtime, size, inode): an export checks its files
    before and again under its lock, and a rerun of a large export must not read every image three times."""
    st = os.stat(path)
    return _stamp(str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def file_matches(path: Path, stamp: Stamp | None) -> bool:
    """True if ``path`` is a regular file (not a symlink) with exactly the content ``stamp`` describes."""
    if stamp is None:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not os.path.isfile(path) or os.path.islink(path) or st.st_size != stamp.size:
        return False
    try:
        return stamp_of(path).same_content(stamp)
    except OSError:
        return False


def file_is_ours(path: Path, stamp: Stamp | None) -> bool:
    """True if ``path`` is the very file spr wrote (its recorded identity) and still holds what spr wrote there."""
    if stamp is None or stamp.ident is None:
        return False
    try:
        if identity(path) != stamp.ident:
            return False
    except OSError:
        return False
    return file_matches(path, stamp)


@dataclass
class OwnedFiles:
    """The record of the files spr wrote under ``root`` for one output (paths relative to ``root``).

    ``files``: what the last finished write left (and spr still owns while identity and content match);
    ``pending``: what an unfinished write is producing (None for a file whose content is not known in advance; a
    file already written carries its identity, :meth:`wrote`); ``complete``: the last write finished. An interrupted
    write is finished by running it again: what it wrote is recognised as spr's, what it was about to write is
    simply written (a file holding exactly the planned bytes is kept as it is).
    """

    root: Path
    record: str
    files: dict[str, Stamp] = field(default_factory=dict)
    pending: dict[str, Stamp | None] = field(default_factory=dict)
    complete: bool = False
    exists: bool = False

    @property
    def path(self) -> Path:
        return self.root / self.record

    @classmethod
    def load(cls, root: str | os.PathLike, record: str) -> OwnedFiles:
        """The record (empty if there is none); a malformed or symlinked record is one line, never guessed at."""
        root = Path(root)
        path = check_write_path(root, record, "file record")
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return cls(root, record)
        except OSError as exc:
            raise SPRError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if not stat.S_ISREG(mode):  # a FIFO would block the read forever
            raise SPRError(f"{path} is not a file record spr wrote (not a regular file); move it away or choose another --name")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or raw.get("spr_files") != RECORD_VERSION:
                raise ValueError("not a record")
            files = {str(k): Stamp.from_dict(v) for k, v in raw["files"].items()}
            pending = {str(k): None if v is None else Stamp.from_dict(v) for k, v in raw["pending"].items()}
            complete = raw["complete"] is True
            for rel in (*files, *pending):
                contained_path(root, rel, "recorded file")  # a hand-edited record cannot point spr outside the folder
        except SPRError:
            raise SPRError(f"{path} names a file outside {root}; move it away or choose another --name") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise SPRError(f"{path} is not a file record spr wrote; move it away or choose another --name") from None
        return cls(root, record, files, pending, complete, exists=True)

    @classmethod
    def load_replaceable(cls, root: str | os.PathLike, record: str, names: list[str], what: str) -> OwnedFiles:
        """The record, once every file in ``names`` is known to be replaceable: absent, or the very file an earlier run
        wrote there. A file of the user's (or a symlink: its target is the user's file) is refused in one line before
        anything is written, never replaced or written through."""
        owned = cls.load(root, record)
        for name in names:
            path = check_write_path(root, name, what)
            if os.path.lexists(path) and not owned.owns(name):
                raise SPRError(f"{path} already exists and spr did not write it (or it changed since); choose another --out")
        return owned

    def owns(self, relative: str) -> bool:
        """The file at ``relative`` is spr's: the very file spr recorded writing there, with the same content."""
        path = self.root / relative
        return file_is_ours(path, self.files.get(relative)) or file_is_ours(path, self.pending.get(relative))

    def _ours(self, relative: str, stamp: Stamp) -> Stamp:
        """``stamp`` with the identity under which spr owns the file at ``relative`` (the same content), else as is."""
        for known in (self.pending.get(relative), self.files.get(relative)):
            if known is not None and known.same_content(stamp) and file_is_ours(self.root / relative, known):
                return known
        return stamp

    def begin(self, plan: dict[str, Stamp | None]) -> None:
        """Record what is about to be written, before the first write. Files of an earlier unfinished write that are
        spr's stay spr's (they move to ``files``), so a second interruption forgets nothing."""
        for rel, stamp in self.pending.items():
            if rel not in self.files and file_is_ours(self.root / rel, stamp):
                self.files[rel] = stamp  # type: ignore[assignment]
        self.pending = dict(plan)
        self.complete = False
        self.save()

    def wrote(self, relative: str, stamp: Stamp, save: bool = True) -> None:
        """spr has just written ``relative`` (renamed into place): record its identity, so an interruption after
        this point leaves it recognisably spr's. ``save=False`` batches many files into one later :meth:`save`."""
        self.pending[relative] = replace(stamp, ident=identity(self.root / relative))
        if save:
            self.save()

    def finish(self, written: dict[str, Stamp], still_pending: dict[str, Stamp | None]) -> None:
        """The write is done: ``written`` is what the folder now holds for this output (spr owns those it wrote, or
        owned already); ``still_pending`` files come later (:meth:`add`) and stay spr's in their earlier recorded
        version until then (an interruption before them forgets nothing)."""
        owned = {rel: self._ours(rel, stamp) for rel, stamp in written.items()}
        self.files = {**{k: v for k, v in self.files.items() if k in still_pending}, **owned}
        self.pending = dict(still_pending)
        self.complete = not self.pending
        self.save()

    def add(self, relative: str, stamp: Stamp) -> None:
        """One more file written by spr (a companion written after the main write)."""
        self.files[relative] = replace(stamp, ident=identity(self.root / relative))
        self.pending.pop(relative, None)
        self.complete = not self.pending
        self.save()

    def save(self) -> None:
        data = {
            "spr_files": RECORD_VERSION,
            "about": "files spr wrote here (size, sha256); spr replaces or removes only these while they match",
            "complete": self.complete,
            "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
            "pending": {k: None if v is None else v.to_dict() for k, v in sorted(self.pending.items())},
        }
        write_bytes(self.root, self.record, (json.dumps(data, indent=1) + "\n").encode(), "file record")
        self.exists = True


def new_temp(folder: Path) -> Path:
    """A new empty temp file in ``folder`` with a short name (:data:`TEMP_PREFIX`), whatever the target's name length."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    os.close(fd)
    return Path(tmp)


def is_temp_name(name: str) -> bool:
    """A name :func:`new_temp` makes: a leftover of a killed write, safe to remove in a folder spr writes alone."""
    return _TEMP_RE.fullmatch(name) is not None


def write_bytes(root: str | os.PathLike, relative: str, data: bytes, what: str = "file") -> Stamp:
    """Write ``root/relative`` atomically (temp file + rename over the path itself, never through a symlink)."""
    path = check_write_path(root, relative, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp(path.parent)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        check_write_path(root, relative, what)  # a symlink swapped in meanwhile is refused, not replaced
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Stamp.of_bytes(data)
