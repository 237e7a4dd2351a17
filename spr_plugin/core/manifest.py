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
        """``--fresh``: remove every output the manifest covers, and the manifest; returns what was removed."""
        removed = []
        for paths in self.outputs.values():
            for p in paths:
                if p.is_file() or p.is_symlink():
                    p.unlink()
                    removed.append(p)
        if self.path.is_file():
            self.path.unlink()
            removed.append(self.path)
        return removed
