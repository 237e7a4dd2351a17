"""``spr webui``: start LlamaBoard (``llamafactory-cli webui``) so it shows the datasets of one folder.

LlamaBoard's "Data dir" textbox defaults to ``data`` *relative to the directory it was started in*, and
neither an environment variable nor a config file changes that default (LLaMA-Factory 0.9.5). A saved
``llamaboard_config/*.yaml`` preset must be loaded by hand and names UI element ids that change between
releases; patching ``DEFAULT_DATA_DIR`` in-process breaks because the constant is copied into several
modules. The robust way is therefore to start LlamaBoard in a small *workspace* folder whose ``data``
entry is a symlink to the dataset folder:

    <workspace>/data -> <dataset_dir>      the default "data" now lists our datasets
    <workspace>/saves/...                   where LlamaBoard puts trained adapters
    <workspace>/llamaboard_cache/...        its user config

Training launched from the UI runs ``llamafactory-cli train`` in the same working directory, so the
relative ``dataset_dir: data`` it sends and the dataset's relative image paths resolve through the link.

The Train tab's image pre-resize fields open at the frame the folder's spr datasets were built in
(:mod:`spr_plugin.llamafactory.llamaboard`), not at LlamaBoard's 768*768: following the UI route trains in the
dataset's frame.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.jsonl import dumps
from spr_plugin.core.owned import write_bytes
from spr_plugin.core.paths import contained_path, require_real_inside
from spr_plugin.llamafactory.recipe_check import read_meta
from spr_plugin.llamafactory.registry import DATASET_INFO, read_dataset_info
from spr_plugin.llamafactory.train import llamafactory_cli
from spr_plugin.settings import WebUIConfig


def prepare_workspace(config: WebUIConfig) -> Path:
    """Create the workspace with ``data`` linked to the dataset folder; returns the workspace path.

    Refuses (rather than replaces) a ``data`` entry that is not already our link, so a user's own
    folder is never touched.
    """
    dataset_dir = Path(config.dataset_dir).resolve()
    if not (dataset_dir / DATASET_INFO).is_file():
        raise SPRError(f"{dataset_dir} has no {DATASET_INFO}; build or register a dataset there first")
    info = read_dataset_info(dataset_dir)  # fails early on a malformed file, as LlamaBoard would silently list nothing
    if not info:
        raise SPRError(f"{dataset_dir / DATASET_INFO} holds no dataset entry")
    check_entries_inside(dataset_dir, info)
    workspace = config.resolved_workspace()
    if workspace == dataset_dir:
        raise SPRError(f"the workspace must differ from the dataset folder ({dataset_dir}); pass another --workspace")
    link = workspace / "data"
    if link.is_symlink():
        if link.resolve() != dataset_dir:
            if os.readlink(link) != _made_link(workspace):  # a link of the user's (a LLaMA-Factory checkout's data)
                raise SPRError(
                    f"{link} is a link to {os.readlink(link)} that spr did not make; pass another --workspace "
                    "(spr never removes a link it did not make)"
                )
            link.unlink()  # our own link from an earlier run, pointing elsewhere
            link.symlink_to(dataset_dir, target_is_directory=True)
            _record_link(workspace, dataset_dir)
    elif os.path.lexists(link):
        raise SPRError(f"{link} exists and is not a link to {dataset_dir}; pass another --workspace")
    else:
        workspace.mkdir(parents=True, exist_ok=True)
        link.symlink_to(dataset_dir, target_is_directory=True)
        _record_link(workspace, dataset_dir)
    return workspace


#: What ``spr webui`` made in a workspace: the target of the ``data`` link it created (a link to anything else is
#: the user's, and is never removed).
LINK_RECORD = ".spr-webui.json"


def _made_link(workspace: Path) -> str | None:
    """The target of the ``data`` link spr made in ``workspace`` (its record), or None."""
    record = workspace / LINK_RECORD
    if record.is_symlink() or not record.is_file():
        return None
    try:
        made = json.loads(record.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return made if isinstance(made, str) else None


def _record_link(workspace: Path, target: Path) -> None:
    write_bytes(workspace, LINK_RECORD, (dumps({"data": str(target)}) + "\n").encode(), "workspace record")


def check_entries_inside(dataset_dir: Path, info: dict) -> None:
    """Every ``file_name`` the folder's ``dataset_info.json`` names lies inside the folder (symlinks resolved).

    Why: the folder may come from elsewhere, and LlamaBoard reads an entry's file to preview it and train on it;
    ``"file_name": "/home/me/notes.json"`` or a link out of the folder would show (or train on) a file the user never
    named. Refused in one line before LlamaBoard starts.
    """
    for name, entry in info.items():
        if not isinstance(entry, dict) or "file_name" not in entry:
            continue
        path = contained_path(dataset_dir, str(entry["file_name"]), f"file_name of dataset {name!r:.80}")
        require_real_inside(
            dataset_dir, path, label=f"file_name of dataset {name!r:.80}: ", refusal="refusing to start LlamaBoard on it"
        )


def webui_env(config: WebUIConfig) -> dict[str, str]:
    """Environment for LlamaBoard: loopback host and port, no analytics calls on a closed network, and
    the interpreter's bin folder on PATH because LlamaBoard starts training as ``llamafactory-cli``."""
    env = dict(os.environ)
    env["GRADIO_SERVER_NAME"] = config.host
    env["GRADIO_SERVER_PORT"] = str(config.port)
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    env.setdefault("DISABLE_VERSION_CHECK", "1")
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def dataset_frames(dataset_dir: str | os.PathLike) -> dict[str, ImageFrame]:
    """The frame of every entry of the folder that spr built (``<name>.spr.json``), by entry name."""
    frames = {}
    for name in read_dataset_info(dataset_dir):
        meta = read_meta(dataset_dir, name)
        if meta is not None:
            frames[name] = ImageFrame.from_dict(meta["frame"])
    return frames


def board_frame(frames: dict[str, ImageFrame]) -> tuple[ImageFrame | None, str]:
    """The frame LlamaBoard's fields open at (None: its own defaults) and the line that says so.

    One frame for every spr dataset of the folder: that one. Several, or a bound LlamaBoard cannot express (``none``,
    no pre-resize): the defaults stay, and the line says which frame each dataset needs.
    """
    distinct = sorted({(f.image_max_pixels or 0, f.image_min_pixels or 0) for f in frames.values()})
    if not frames:
        return None, "no dataset here was built by spr: LlamaBoard's image pixel fields keep its defaults"
    each = "; ".join(f"{n}: {f.image_max_pixels}/{f.image_min_pixels}" for n, f in sorted(frames.items()))
    frame = next(iter(frames.values()))
    if len(distinct) > 1 or frame.image_max_pixels is None or frame.image_min_pixels is None:
        return None, (
            "the datasets here need different image frames (or none): set Image max/min pixels in the Train tab's "
            f"multimodal settings to the chosen dataset's ({each})"
        )
    return frame, (
        f"Image max pixels {frame.image_max_pixels} and Image min pixels {frame.image_min_pixels} preset: the frame "
        f"these datasets were built in ({', '.join(sorted(frames))}), not LlamaBoard's 768*768"
    )


def llamaboard_command(frame: ImageFrame | None = None) -> list[str]:
    """The LlamaBoard launcher next to the running interpreter (a venv need not be activated); with a frame,
    LlamaBoard with its pixel fields preset to it (:mod:`spr_plugin.llamafactory.llamaboard`)."""
    if frame is None:
        return [llamafactory_cli(), "webui"]
    bounds = ["--image-max-pixels", str(frame.image_max_pixels), "--image-min-pixels", str(frame.image_min_pixels)]
    return [sys.executable, "-m", "spr_plugin.llamafactory.llamaboard", *bounds]


def stage_hint(info: dict) -> str:
    """Which datasets LlamaBoard lists under which Stage.

    Why: LlamaBoard opens on Stage "Supervised Fine-Tuning" and lists only the entries whose ``ranking`` flag
    fits the stage (ranking ones for DPO and reward modelling only); with nothing listed and no message, users
    conclude the folder was not read.
    """
    ranking = sorted(n for n, e in info.items() if isinstance(e, dict) and e.get("ranking"))
    other = sorted(n for n, e in info.items() if not (isinstance(e, dict) and e.get("ranking")))
    lines = []
    if other:
        lines.append(f"Stage Supervised Fine-Tuning (the default) lists: {', '.join(other)}")
    else:
        lines.append("Stage Supervised Fine-Tuning (the default) lists nothing here: no entry is an SFT dataset")
    if ranking:
        lines.append(f"Stage DPO (or Reward Modeling) lists: {', '.join(ranking)}")
    return "\n".join(lines)


def run_webui(config: WebUIConfig) -> None:
    """Replace this process by LlamaBoard started in the workspace (Ctrl-C stops it)."""
    frames = dataset_frames(config.dataset_dir)  # a malformed or escaping <name>.spr.json: refused before any write
    workspace = prepare_workspace(config)
    frame, frame_line = board_frame(frames)
    print(
        f"LlamaBoard on http://{config.host}:{config.port} (workspace {workspace}; "
        f"Data dir 'data' -> {Path(config.dataset_dir).resolve()})\n"
        f"{stage_hint(read_dataset_info(config.dataset_dir))}\n{frame_line}\n"
        "Changing Stage clears the Dataset box; on CPU choose Compute type fp32.",
        flush=True,
    )
    os.chdir(workspace)
    command = llamaboard_command(frame)
    os.execve(command[0], command, webui_env(config))
