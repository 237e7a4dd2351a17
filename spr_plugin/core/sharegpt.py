"""LLaMA-Factory's ShareGPT record: the placeholder, the columns and tags, and where its media may point.

The one module that knows how a record of a LLaMA-Factory dataset is spelled. The writers (the DPO and
chosen-only SFT export, the warm-up SFT data), the registry (the ``columns`` of an entry) and the readers
(``spr export-hf``) all take the names from here.

    IMAGE_TOKEN                  one per image, in the user turn
    RANKING_COLUMNS, SFT_COLUMNS the ``columns`` of a DPO (``ranking: true``) and of an SFT entry
    DEFAULT_TAGS                 LLaMA-Factory's default ShareGPT tags (from/value/human/gpt)
    ranking_record, sft_record   a record of each kind
    content_parts                a message with ``<image>`` placeholders as typed chat content parts
    check_record_media           refuse media paths that leave ``dataset_dir``
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spr_plugin.core.jsonl import read_dataset_records
from spr_plugin.core.paths import contained_path

IMAGE_TOKEN = "<image>"  # LLaMA-Factory's placeholder; one per image
RANKING_COLUMNS: dict[str, str] = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images"}
SFT_COLUMNS: dict[str, str] = {"messages": "conversations", "images": "images"}
DEFAULT_TAGS: dict[str, str] = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
MEDIA_COLUMNS = ("images", "videos", "audios")


def content_parts(text: str, image_part: Callable[[int], dict[str, Any]], n_images: int | None = None) -> list[dict[str, Any]]:
    """``text`` as chat content parts in order: ``image_part(i)`` for the i-th ``<image>`` placeholder, a
    ``{"type": "text"}`` part for each non-empty piece between them. The one splitter of placeholders: the
    in-process chat template, the OpenAI-compatible server and TRL's rows (``spr export-hf``) all use it.
    ``n_images``: the number of images the prompt carries, which must equal the placeholders'."""
    pieces = text.split(IMAGE_TOKEN)
    if n_images is not None and len(pieces) - 1 != n_images:
        raise ValueError(f"prompt has {len(pieces) - 1} image placeholders for {n_images} images")
    parts: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append(image_part(i - 1))
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def user_turn(text: str) -> dict[str, str]:
    return {DEFAULT_TAGS["role_tag"]: DEFAULT_TAGS["user_tag"], DEFAULT_TAGS["content_tag"]: text}


def assistant_turn(text: str) -> dict[str, str]:
    return {DEFAULT_TAGS["role_tag"]: DEFAULT_TAGS["assistant_tag"], DEFAULT_TAGS["content_tag"]: text}


def ranking_record(prompt: str, chosen: str, rejected: str, images: list[str]) -> dict[str, Any]:
    """A DPO record: one user turn, the chosen and the rejected answer as single assistant turns."""
    return {
        "conversations": [user_turn(prompt)],
        "chosen": assistant_turn(chosen),
        "rejected": assistant_turn(rejected),
        "images": images,
    }


def sft_record(prompt: str, answer: str, images: list[str]) -> dict[str, Any]:
    """An SFT record: the user turn and the answer as one conversation."""
    return {"conversations": [user_turn(prompt), assistant_turn(answer)], "images": images}


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
