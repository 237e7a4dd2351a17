"""Resume safety: a manifest of what each stage's output was made from.

Resuming reuses work (candidates that took hours to sample, evaluation answers), and reusing work made
with other settings is silently wrong: a rerun with another ``--seed`` samples other regions, so the old
candidates describe regions that no longer exist under their ids. So every resumable output gets a
manifest recording, per stage, the settings and the content hashes of the inputs it depends on. A rerun
compares: equal inputs resume; different inputs refuse with one line naming what changed, unless the user
asks to start clean (``--fresh``), which removes exactly the outputs the manifest covers.

Settings are recorded as whole dataclass dicts (``dataclasses.asdict``), so a setting added later is
covered without touching this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import atomic_write_text, dumps
from spr_plugin.core.paths import refuse_symlink

VERSION = 1


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's content (streamed, so a 1 GB LVIS json costs seconds, not memory)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise SPRError(f"cannot read {path} ({exc.strerror or exc})") from None
    return "sha256:" + h.hexdigest()


def settings(obj: Any) -> Any:
    """A JSON-ready form of a settings object: dataclasses as dicts, paths as strings, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: obj}


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    if text.startswith("sha256:"):
        return text[:19]
    return text if len(text) <= 40 else text[:37] + "..."


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting or input that differs (keys flattened with dots)."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key} {_short(a.get(key, '<unset>'))} -> {_short(b.get(key, '<unset>'))}")
    return out


class Manifest:
    """``stages``: name -> the inputs that stage's output depends on; ``outputs``: name -> its files."""

    def __init__(self, path: str | os.PathLike, outputs: Mapping[str, Iterable[str | os.PathLike]]) -> None:
        self.path = Path(path)
        self.outputs = {name: [Path(p) for p in paths] for name, paths in outputs.items()}

    def read(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise SPRError(f"{self.path} is not a valid spr manifest; pass --fresh to start over")
        return data

    def existing_outputs(self, stage: str) -> list[Path]:
        return [p for p in self.outputs.get(stage, []) if p.exists()]

    def check(self, stages: Mapping[str, Mapping[str, Any]], *, what: str, hint: str = "") -> None:
        """Refuse (one line) if an existing output was made from other inputs than ``stages`` say now.

        ``stages`` are in pipeline order. A stage is compared when its own output, or the output of a later
        stage built on it, is on disk; a stage whose outputs are all gone would not be reused. Existing outputs
        without a manifest (made by an older spr, or by hand) are refused too: they cannot be checked.
        """
        data = self.read()
        recorded = {} if data is None else data["stages"]
        names = list(stages)
        present = {name: self.existing_outputs(name) for name in names}
        changed: list[str] = []
        unrecorded: list[Path] = []
        for i, stage in enumerate(names):
            if not any(present[later] for later in names[i:]):
                continue
            if stage not in recorded:
                unrecorded += present[stage]
                continue
            changed += [f"{stage}.{d}" for d in differences(recorded[stage], settings(stages[stage]))]
        tail = f"; {hint}" if hint else ""
        if changed:
            own = [c for c in changed if ".upstream " not in c]  # the upstream hash only repeats an earlier change
            shown_list = own or changed
            shown = ", ".join(shown_list[:4]) + (f" and {len(shown_list) - 4} more" if len(shown_list) > 4 else "")
            raise SPRError(f"{what} was made with other settings or inputs (changed: {shown}){tail}")
        if unrecorded:
            raise SPRError(f"{what} holds {unrecorded[0]} but no record of how it was made ({self.path}){tail}")

    def record(self, stages: Mapping[str, Mapping[str, Any]]) -> None:
        """Write the manifest (atomically), keeping recorded stages that are not given now."""
        data = self.read() if self.path.is_file() else None
        recorded = dict(data["stages"]) if data else {}
        recorded.update({stage: settings(inputs) for stage, inputs in stages.items()})
        atomic_write_text(self.path, dumps({"version": VERSION, "stages": recorded}, indent=2, sort_keys=True) + "\n")

    def reset(self) -> list[Path]:
        """``--fresh``: remove every output the manifest covers, and the manifest; returns what was removed.

        A symlink (at an output or the manifest) is refused before anything is removed: spr writes no links there, so
        it is the user's, and removing it (or what it points at) would delete what spr did not write."""
        for p in (p for paths in (*self.outputs.values(), [self.path]) for p in paths):
            refuse_symlink(
                p,
                hint="--fresh removes only files spr wrote, never a link: remove it yourself or use another output "
                "folder; nothing was removed",
            )
        removed = []
        for paths in self.outputs.values():
            for p in paths:
                if p.is_file():
                    p.unlink()
                    removed.append(p)
        if self.path.is_file():
            self.path.unlink()
            removed.append(self.path)
        return removed


# -- what an intermediate file's boxes mean ---------------------------------------------------------------


def sidecar_path(path: str | os.PathLike) -> Path:
    """``<file>.manifest.json``: where a stage file's record lives (``spr generate`` writes the candidates' one)."""
    p = Path(path)
    return p.with_name(p.name + ".manifest.json")


def _work_dir_record(path: Path, stage: str) -> dict[str, Any] | None:
    """The record a build's work dir keeps for its own ``candidates.jsonl`` / ``pairs.jsonl`` (``manifest.json``)."""
    if path.name != f"{stage}.jsonl" or not (path.parent / "manifest.json").is_file():
        return None
    try:
        data = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = data.get("stages", {}).get(stage) if isinstance(data, dict) and isinstance(data.get("stages"), dict) else None
    if not isinstance(entry, dict):
        return None
    scoring = entry.get("scoring")
    box_format = entry.get("box_format") or (scoring.get("box_format") if isinstance(scoring, dict) else None)
    frame = entry.get("frame")
    if not isinstance(box_format, str) or not isinstance(frame, dict):
        return None  # e.g. a build's candidates read from files: their format is the user's statement, not ours
    return {"box_format": box_format, "frame": frame}


def recorded_format(path: str | os.PathLike, stage: str) -> tuple[dict[str, Any], Path] | None:
    """``({"box_format": name, "frame": {...}}, where)`` that ``path`` records for ``stage``, or None.

    Why: the next stage must refuse a file of another format or frame instead of reading its numbers in the
    wrong one (a Qwen2-VL 0-1000 answer under a pixel prompt trains nonsense silently). The record is the
    file's sidecar (``spr generate``, ``spr merge``, ``spr pair``), else the manifest of the build work dir the
    file lies in. None means no record (an older spr, or a file written by hand); each reader documents its rule
    for that case. ``spr generate`` records the frame inside its generation settings, so both places are read.
    """
    p = Path(path)
    side = sidecar_path(p)
    if not side.is_file():
        work = _work_dir_record(p, stage)
        return None if work is None else (work, p.parent / "manifest.json")
    data = Manifest(side, {}).read()
    entry = (data or {}).get("stages", {}).get(stage)
    if not isinstance(entry, dict):
        raise SPRError(f"{side} is no record of a {stage} file; remove it if you wrote it, or rerun the stage writing {p.name}")
    box_format = entry.get("box_format")
    frame = entry.get("frame")
    gen = entry.get("generation")
    if frame is None and isinstance(gen, dict) and "image_max_pixels" in gen:
        frame = {"image_max_pixels": gen.get("image_max_pixels"), "image_min_pixels": gen.get("image_min_pixels")}
    if not isinstance(box_format, str) or not isinstance(frame, dict):
        raise SPRError(f"{side} records no box format and image frame for {p.name}; rerun the stage that writes it")
    return {"box_format": box_format, "frame": frame}, side


def check_recordable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a sidecar spr could not replace: a link, or a file that is no spr manifest (not ours)."""
    side = sidecar_path(path)
    if side.is_symlink():
        raise SPRError(f"{side} is a symbolic link; spr writes its records only as plain files")
    if side.exists():
        Manifest(side, {}).read()
    return side


def forget_format(path: str | os.PathLike) -> None:
    """Remove the sidecar of a file about to be rewritten, so a crash between the two writes leaves no record
    rather than the old one (which would vouch for the new file). Only a sidecar spr wrote is removed."""
    side = check_recordable(path)
    if side.is_file():
        side.unlink()


def record_format(path: str | os.PathLike, stage: str, box_format: str, frame: Mapping[str, Any], **inputs: Any) -> Path:
    """Write the sidecar of a stage file: its box format, its frame and what else it was made from."""
    side = check_recordable(path)  # a link or a file that is not ours is refused, never replaced
    manifest = Manifest(side, {stage: [Path(path), side]})
    manifest.record({stage: {"box_format": box_format, "frame": dict(frame), **inputs}})
    return side
