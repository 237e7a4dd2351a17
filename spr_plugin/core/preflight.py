"""Checks that run before any long work, so a user error costs a second, not hours of generation.

An output folder that is a file, lies under a file, or cannot be written is found by actually creating
(and removing) a temp file in the folder or its nearest existing ancestor: permission bits, ACLs, read-only
mounts and full quotas all show up that way, and nothing the user owns is created or changed.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.paths import refuse_symlink

#: LLaMA-Factory dataset names become file names (``<name>.jsonl``, ``<name>/images``) and ``dataset_info``
#: keys: letters, digits, ``-``, ``_`` and ``.``, starting with a letter or digit, at most 100 characters.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith(".jsonl") or ".." in name:
        shown = name if len(str(name)) <= 40 else str(name)[:37] + "..."
        raise SPRError(
            f"invalid dataset name {shown!r}: use letters, digits, '-', '_' and '.', start with a letter or digit, "
            "at most 100 characters"
        )
    return name


def _nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def require_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` is, or can become, a folder this process can write; else :class:`SPRError` (one line)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SPRError(f"{what} {p} is a file, not a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise SPRError(f"{what} {p} cannot be created: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".spr-write-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = "" if base == p else f" (its nearest existing folder {base} is not writable)"
        raise SPRError(f"{what} {p} is not writable{where}: {exc.strerror or exc}") from None
    return p


def require_writable_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` can be written as a file (its folder is writable, it is not a folder itself, nor a symlink: spr writes
    its files atomically by renaming over the path, and never writes through nor replaces a link; see
    :func:`spr_plugin.core.jsonl.replace_target`, which refuses it again at the write)."""
    p = refuse_symlink(path, what)
    if p.is_dir():
        raise SPRError(f"{what} {p} is a folder; give a file name")
    require_writable_dir(p.parent if str(p.parent) else Path("."), f"{what} folder")
    return p


def check_device(device: str, flag: str = "--device") -> str:
    """A torch device this machine has, refused in one line before a model loads (``cuda:7`` on a one-GPU
    machine, ``cuda`` without CUDA): torch would only fail at the first ``.to(device)``, with a traceback.

    ``cpu`` and ``auto`` (resolved later, see ``resolve_device``) pass without importing torch.
    """
    if device in ("cpu", "auto"):
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise SPRError(f"{flag} {device!r} is not a torch device (cpu, cuda, cuda:N, mps or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SPRError(f"{flag} {device}: this machine has no usable CUDA device; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SPRError(f"{flag} {device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SPRError(f"{flag} {device}: MPS is not available on this machine; use --device cpu")
    return device


def check_adapter(adapter: str | os.PathLike | None, flag: str = "--adapter") -> None:
    """A LoRA adapter folder (with ``adapter_config.json``), checked before the base model loads."""
    if adapter is None:
        return
    p = Path(adapter)
    if not p.exists():
        raise SPRError(f"{flag} {p} not found")
    if not (p / "adapter_config.json").is_file():
        raise SPRError(f"{flag} {p} is not a LoRA adapter folder (no adapter_config.json); pass it as --model instead")


def check_count(value: int | None, flag: str, *, minimum: int = 1) -> int | None:
    """An optional count flag (``--limit``, ``-n``): ``None`` or at least ``minimum``; ``--limit -1`` would
    silently drop the last item through Python's slicing."""
    if value is not None and value < minimum:
        raise SPRError(f"{flag} must be at least {minimum}, got {value}")
    return value


def require_not_input(out: str | os.PathLike, inputs: list[str | os.PathLike], what: str) -> None:
    """Refuse an output that is one of the command's inputs (also through a symlink or another spelling):
    writing it would replace the file being read."""
    target = os.path.realpath(out)
    for source in inputs:
        same = os.path.realpath(source) == target
        if not same and os.path.exists(out) and os.path.exists(source):
            same = os.path.samefile(out, source)  # a hard link
        if same:
            raise SPRError(f"{what} {out} is the input file {source}; write to another file")
