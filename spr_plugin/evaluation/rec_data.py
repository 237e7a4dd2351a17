"""Referring-expression files for ``spr eval rec``.

Two inputs are accepted:

* **JSONL** (the plugin's own, simplest form), one item per line::

      {"id": "optional, defaults to the line number", "image": "path", "expression": "red circle",
       "box": [x1, y1, x2, y2]}

  ``box`` is in original-image pixels (corners, not COCO's x,y,w,h). ``image`` is relative to
  ``--images`` unless absolute.
* **COCO-style refs JSON**: the RefCOCO ``refs(*).p`` content merged with its ``instances.json`` into
  one object ``{"images": [...], "annotations": [...], "refs": [{"ref_id", "ann_id", "image_id",
  "split", "sentences": [{"sent"}]}]}``. Every sentence becomes one item (RefCOCO counts accuracy per
  expression, not per object), with the annotation's ``bbox`` (x, y, w, h) as the target.

Item ids must be unique: they key the resumable results file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SPRError
from ..jsonl import read_jsonl
from ..records import Box


@dataclass(frozen=True)
class RecItem:
    """One referring expression with its target box (original-image pixels)."""

    item_id: str
    image: str
    expression: str
    box: Box


def _resolve(image: str, root: Path | None) -> str:
    p = Path(image)
    if not p.is_absolute() and root is not None:
        p = root / p
    return str(p)


def _check_box(values: Any, where: str) -> Box:
    if not (isinstance(values, list) and len(values) == 4 and all(isinstance(v, (int, float)) for v in values)):
        raise SPRError(f"{where}: 'box' must be [x1, y1, x2, y2] in pixels, got {values!r}")
    box = Box.from_list(values)
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        raise SPRError(f"{where}: box {values} has no area (expected x1 < x2 and y1 < y2, corners not x,y,w,h)")
    return box


def _items_from_jsonl(path: Path, root: Path | None) -> list[RecItem]:
    items: list[RecItem] = []
    for lineno, obj in enumerate(read_jsonl(path, lambda d: d, what="REC item"), start=1):
        where = f"{path} item {lineno}"
        for key in ("image", "expression", "box"):
            if key not in obj:
                raise SPRError(f"{where}: missing '{key}' (expected keys image, expression, box[, id])")
        items.append(
            RecItem(
                str(obj.get("id", lineno)),
                _resolve(str(obj["image"]), root),
                str(obj["expression"]),
                _check_box(obj["box"], where),
            )
        )
    return items


def _items_from_refs(path: Path, data: dict[str, Any], root: Path | None, split: str | None) -> list[RecItem]:
    for key in ("images", "annotations", "refs"):
        if not isinstance(data.get(key), list):
            raise SPRError(f"{path}: a COCO-style refs file needs an 'images', 'annotations' and 'refs' list; '{key}' is missing")
    images = {img["id"]: img for img in data["images"]}
    anns = {ann["id"]: ann for ann in data["annotations"]}
    items: list[RecItem] = []
    for ref in data["refs"]:
        if split is not None and ref.get("split") != split:
            continue
        ann = anns.get(ref.get("ann_id"))
        img = images.get(ref.get("image_id"))
        if ann is None or img is None:
            raise SPRError(f"{path}: ref {ref.get('ref_id')} points at a missing annotation or image")
        x, y, w, h = ann["bbox"]
        box = _check_box([x, y, x + w, y + h], f"{path} ref {ref.get('ref_id')}")
        for i, sent in enumerate(ref.get("sentences", [])):
            text = sent.get("sent") if isinstance(sent, dict) else str(sent)
            sid = sent.get("sent_id", i) if isinstance(sent, dict) else i
            items.append(RecItem(f"{ref.get('ref_id')}_{sid}", _resolve(str(img["file_name"]), root), str(text), box))
    return items


def load_rec_items(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, split: str | None = None
) -> list[RecItem]:
    """Read a REC file (JSONL or COCO-style refs JSON); raises :class:`SPRError` on malformed input."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if not path.is_file():
        raise SPRError(f"REC annotation file not found: {path}")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SPRError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise SPRError(f"{path}: expected a COCO-style refs object; use .jsonl for one item per line")
        items = _items_from_refs(path, data, root, split)
    else:
        items = _items_from_jsonl(path, root)
    _check_unique(items, path)
    if not items:
        raise SPRError(f"{path}: no REC items" + (f" in split {split!r}" if split else ""))
    return items


def _check_unique(items: Iterable[RecItem], path: Path) -> None:
    seen: set[str] = set()
    for it in items:
        if it.item_id in seen:
            raise SPRError(f"{path}: duplicate item id {it.item_id!r} (ids key the resumable results file)")
        seen.add(it.item_id)


def write_rec_jsonl(path: str | os.PathLike, items: Iterable[RecItem]) -> Path:
    """Write items in the JSONL form :func:`load_rec_items` reads (absolute image paths)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"id": it.item_id, "image": it.image, "expression": it.expression, "box": it.box.as_list()}) for it in items
    ]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def rec_items_from_detections(annotation_file: str | os.PathLike, image_root: str | os.PathLike) -> list[RecItem]:
    """REC items from a COCO-format *detection* file: every object whose category is unique in its image,
    with the category name as the expression (unambiguous by construction; no RefCOCO needed)."""
    from ..regions import load_coco

    coco = load_coco(annotation_file)
    root = Path(image_root)
    items = []
    for img_id in sorted(coco.imgs):
        anns = [a for a in coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0) and a.get("category_id") in coco.cats]
        names = [str(coco.cats[a["category_id"]]["name"]) for a in anns]
        for ann, name in zip(anns, names):
            if names.count(name) == 1:
                path = str((root / str(coco.imgs[img_id]["file_name"])).resolve())
                items.append(RecItem(f"{img_id}_{ann['id']}", path, name, Box.from_xywh(*ann["bbox"])))
    return items
