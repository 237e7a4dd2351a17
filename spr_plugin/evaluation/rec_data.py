"""Referring-expression files for ``spr eval rec``, in the layouts their authors publish.

Read as they come, no conversion script needed:

* **refer toolkit** (lichengunc/refer): ``refcoco/refs(unc).p`` (RefCOCO+: ``refs(unc).p``, RefCOCOg:
  ``refs(umd).p`` / ``refs(google).p``) with ``instances.json`` beside it. The pickle is a list of refs
  ``{ref_id, ann_id, image_id, split, sentences: [{sent, sent_id, ...}], ...}``; the target box is the
  ``instances.json`` annotation ``ann_id``. Unpickling runs code named in the file, so the pickle is read by an
  unpickler that admits plain containers only (lists, dicts, strings, numbers) and refuses anything else.
* **COCO-style refs JSON**: the same refs merged with ``instances.json`` into one object
  ``{"images", "annotations", "refs"}``.
* **MDETR** ``finetune_refcoco_{train,val,testA,testB}.json`` (ashkamath/mdetr,
  ``scripts/fine-tuning/refexp_coco_format.py``): one ``images`` entry per expression (``caption``,
  ``file_name``, ``original_id``) and its one annotation (``bbox`` x, y, w, h).
* **Qwen-VL** grounding evaluation JSONL (``eval_mm/evaluate_grounding.py``): one line per expression
  ``{"image", "sent", "bbox": [x1, y1, x2, y2], "width", "height"}``, box in absolute pixels.
* **lmms-eval** RefCOCO parquet (``lmms-lab/RefCOCO``, ``data/val-*.parquet``): one row per object
  ``{question_id, image, answer: [expressions], bbox: [x, y, w, h], file_name}`` with the image embedded;
  every expression of ``answer`` is one item, as lmms-eval counts them. Embedded images are written once to
  a media folder next to the report unless ``--images`` holds the COCO files they name.
* the plugin's own **JSONL**: ``{"id", "image", "expression", "box": [x1, y1, x2, y2]}`` per line.

Every sentence is one item (RefCOCO counts accuracy per expression). Files that hold several splits (refer
pickles, merged refs JSON) need ``--split``: evaluating train and test together by accident is worse than
an error. Expressions pass through the sanitiser (a special token in one would break the prompt). Item ids
must be unique: they key the resumable results file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.images import ImageLocator
from spr_plugin.core.jsonl import atomic_output, read_json, read_jsonl
from spr_plugin.core.paths import ImageRoots
from spr_plugin.core.records import Box
from spr_plugin.core.sanitize import SanitizeStats, sanitize_phrase
from spr_plugin.core.serialize import field_dict

MAX_EXPRESSION_LEN = 1000
PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


@dataclass(frozen=True)
class RecItem:
    """One referring expression with its target box (original-image pixels)."""

    item_id: str
    image: str
    expression: str
    box: Box


@dataclass
class RecData:
    """Items of one or more REC files, and what loading them counted."""

    items: list[RecItem] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    sanitized: SanitizeStats = field(default_factory=SanitizeStats)

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, skip=("items",))


# -- shared checks ---------------------------------------------------------------------------------


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_box(values: Any, where: str, xywh: bool = False) -> Box:
    form = "[x, y, w, h]" if xywh else "[x1, y1, x2, y2] in pixels"
    if not (isinstance(values, (list, tuple)) and len(values) == 4 and all(_number(v) for v in values)):
        raise SPRError(f"{where}: the box must be {form}, got {values!r:.80}")
    box = Box.from_xywh(*values) if xywh else Box.from_list(list(values))
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        hint = "" if xywh else " (expected x1 < x2 and y1 < y2, corners not x,y,w,h)"
        raise SPRError(f"{where}: box {list(values)} has no area{hint}")
    return box


class _Builder:
    """Collects items: sanitises expressions, resolves image names, refuses duplicate ids."""

    def __init__(self, data: RecData, root: Path, names: Sequence[str]) -> None:
        self.data = data
        self.locator = ImageLocator(root)
        self.locator.learn([n for n in names if isinstance(n, str) and not os.path.isabs(n)][:20])
        #: A REC file is data from elsewhere: its images are read only under the image folder (docs/inputs.md).
        self.roots = ImageRoots([root], "--images, default the annotation file's folder")
        self.ids: set[str] = set()

    def image(self, name: str, where: str) -> str:
        if not isinstance(name, str) or not name:
            raise SPRError(f"{where}: no image file name")
        found = self.locator.locate(name) if not os.path.isabs(name) and self.locator.contains(name) else None
        return str(self.roots.resolve(str(found) if found is not None else name, f"{where}: image", "pass --images FOLDER"))

    def add(self, item_id: str, image: str, expression: Any, box: Box, where: str) -> None:
        if not isinstance(expression, str):
            raise SPRError(f"{where}: the expression must be a string, got {type(expression).__name__}")
        text, removed = sanitize_phrase(expression, MAX_EXPRESSION_LEN)
        self.data.sanitized.add("expressions", removed)
        if not text:
            self.data.skipped["empty_expression"] += 1
            return
        if item_id in self.ids:
            raise SPRError(f"{where}: duplicate item id {item_id!r} (ids key the resumable results file)")
        self.ids.add(item_id)
        self.data.items.append(RecItem(item_id, image, text, box))


def _choose_split(path: Path, splits: Iterable[Any], split: str | None) -> str | None:
    present = sorted({str(s) for s in splits})
    if split is None:
        if len(present) > 1:
            raise SPRError(f"{path} holds the splits {', '.join(present)}; choose one with --split (e.g. --split val)")
        return None
    if split not in present:
        raise SPRError(f"{path} has no split {split!r}; it holds {', '.join(present) or 'none'}")
    return split


def _single_split(path: Path, split: str | None, fmt: str) -> None:
    if split is not None:
        raise SPRError(f"{path} is a {fmt} file of one split; --split applies to refer pickles and merged refs JSON only")


# -- refer toolkit: refs(*).p + instances.json -----------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Admits plain containers only: any global (a class, a function) is refused, so no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}; only plain lists, dicts, strings and numbers are read")


def _text(obj: Any) -> Any:
    """Python 2 pickles hold byte strings: decode them (UTF-8, else Latin-1), keys included."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, list):
        return [_text(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_text(v) for v in obj)
    if isinstance(obj, dict):
        return {_text(k): _text(v) for k, v in obj.items()}
    return obj


def read_plain_pickle(path: Path) -> Any:
    """A pickle of plain containers (refer's ``refs(*).p``), read without running any code."""
    try:
        data = path.read_bytes()
        return _text(_PlainUnpickler(io.BytesIO(data), encoding="bytes").load())
    except OSError as exc:
        raise SPRError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except pickle.UnpicklingError as exc:
        raise SPRError(f"{path}: refused to unpickle ({exc})") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, MemoryError) as exc:
        raise SPRError(f"{path}: not a readable refs pickle ({type(exc).__name__})") from None


def _refs_items(path: Path, refs: Any, instances: Any, root: Path, split: str | None, data: RecData) -> None:
    """Items of refer-style refs against COCO instances (shared by the pickle and the merged JSON)."""
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise SPRError(f"{path}: expected a list of refs (dicts with ref_id, ann_id, image_id, split, sentences)")
    if not isinstance(instances, dict) or not all(isinstance(instances.get(k), list) for k in ("images", "annotations")):
        raise SPRError(f"{path}: the instances need 'images' and 'annotations' lists")
    images = {img.get("id"): img for img in instances["images"] if isinstance(img, dict)}
    anns = {a.get("id"): a for a in instances["annotations"] if isinstance(a, dict)}
    chosen = _choose_split(path, (r.get("split") for r in refs), split)
    refs = [r for r in refs if chosen is None or str(r.get("split")) == chosen]
    names = [str(images.get(r.get("image_id"), {}).get("file_name", "")) for r in refs[:40]]
    builder = _Builder(data, root, names)
    for ref in refs:
        where = f"{path} ref {ref.get('ref_id')!r}"
        ann, img = anns.get(ref.get("ann_id")), images.get(ref.get("image_id"))
        if ann is None or img is None:
            raise SPRError(f"{where} points at a missing annotation ({ref.get('ann_id')!r}) or image ({ref.get('image_id')!r})")
        box = _check_box(ann.get("bbox"), where, xywh=True)
        image = builder.image(img.get("file_name"), where)
        sentences = ref.get("sentences")
        if not isinstance(sentences, list):
            raise SPRError(f"{where}: 'sentences' must be a list")
        for i, sent in enumerate(sentences):
            text = sent.get("sent", sent.get("raw")) if isinstance(sent, dict) else sent
            sid = sent.get("sent_id", i) if isinstance(sent, dict) else i
            builder.add(f"{ref.get('ref_id')}_{sid}", image, text, box, where)


def _refer_pickle(path: Path, root: Path, split: str | None, data: RecData) -> None:
    instances_path = path.parent / "instances.json"
    if not instances_path.is_file():
        raise SPRError(f"{path}: refer's refs pickle needs the instances.json of its folder, expected at {instances_path}")
    refs = read_plain_pickle(path)
    _refs_items(path, refs, read_json(instances_path, "instances file"), root, split, data)


# -- MDETR refexp json --------------------------------------------------------------------------------


def _mdetr(path: Path, obj: dict[str, Any], root: Path, split: str | None, data: RecData) -> None:
    _single_split(path, split, "MDETR refexp")
    if not isinstance(obj.get("annotations"), list):
        raise SPRError(f"{path}: an MDETR refexp file needs an 'annotations' list")
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in obj["annotations"]:
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    builder = _Builder(data, root, [str(img.get("file_name", "")) for img in obj["images"][:40] if isinstance(img, dict)])
    for i, img in enumerate(obj["images"]):
        where = f"{path} images[{i}]"
        if not isinstance(img, dict) or "id" not in img:
            raise SPRError(f"{where}: needs 'id', 'file_name' and 'caption'")
        anns = by_image.get(img["id"], [])
        if len(anns) != 1:
            raise SPRError(f"{where} (id {img['id']!r}) has {len(anns)} annotations; an MDETR refexp expression has exactly one")
        box = _check_box(anns[0].get("bbox"), where, xywh=True)
        builder.add(str(img["id"]), builder.image(img.get("file_name"), where), img.get("caption"), box, where)


# -- JSONL: the plugin's own and Qwen-VL's --------------------------------------------------------------


def _jsonl(path: Path, root: Path, split: str | None, data: RecData) -> None:
    _single_split(path, split, "JSONL")
    rows = list(read_jsonl(path, lambda d: d, what="REC item"))
    kinds = set()
    builder = _Builder(data, root, [str(r.get("image", "")) for r in rows[:40]])
    for lineno, obj in enumerate(rows, start=1):
        where = f"{path} item {lineno}"
        if "expression" in obj:
            kinds.add("jsonl")
            for key in ("image", "box"):
                if key not in obj:
                    raise SPRError(f"{where}: missing '{key}' (expected keys image, expression, box[, id])")
            box, text = _check_box(obj["box"], where), obj["expression"]
        elif "sent" in obj and "bbox" in obj:  # Qwen-VL: image, sent, bbox (x1, y1, x2, y2), width, height
            kinds.add("qwen_vl_jsonl")
            if "image" not in obj:
                raise SPRError(f"{where}: missing 'image' (Qwen-VL lines hold image, sent, bbox, width, height)")
            box, text = _check_box(obj["bbox"], where), obj["sent"]
        else:
            raise SPRError(f"{where}: missing 'expression' (expected image, expression, box[, id]; Qwen-VL: image, sent, bbox)")
        item_id = obj.get("id", lineno)
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
            raise SPRError(f"{where}: 'id' must be a string or an integer")
        builder.add(str(item_id), builder.image(obj["image"], where), text, box, where)
    data.formats += sorted(kinds)


# -- lmms-eval parquet ------------------------------------------------------------------------------------


def _lmms_parquet(path: Path, root: Path | None, split: str | None, data: RecData, media_dir: Path | None) -> None:
    """lmms-lab/RefCOCO rows: question_id, image {bytes, path}, answer [expressions], bbox [x, y, w, h], file_name."""
    _single_split(path, split, "lmms-eval parquet")
    import pyarrow.parquet as pq
    from PIL import Image

    from spr_plugin.core.images import check_image

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError types
        raise SPRError(f"{path}: not a readable parquet file ({type(exc).__name__}: {str(exc)[:80]})") from None
    cols = set(pf.schema_arrow.names)
    missing = {"answer", "bbox"} - cols
    if missing or not ({"image", "file_name"} & cols):
        lacking = sorted(missing) or ["image"]
        raise SPRError(
            f"{path}: an lmms-eval RefCOCO parquet has columns question_id, image, answer, bbox, file_name; missing {lacking}"
        )
    locator = ImageLocator(root) if root is not None else None
    builder = _Builder(data, root or path.parent, [])
    row_no = 0
    for batch in pf.iter_batches(
        batch_size=64, columns=[c for c in ("question_id", "image", "answer", "bbox", "file_name") if c in cols]
    ):
        for row in batch.to_pylist():
            row_no += 1
            where = f"{path} row {row_no}"
            box = _check_box(row.get("bbox"), where, xywh=True)
            image = None
            name = row.get("file_name")
            if locator is not None and isinstance(name, str) and name and locator.contains(name):
                found = locator.locate(name)
                image = str(found) if found is not None else None
            if image is None:
                blob = (row.get("image") or {}).get("bytes") if isinstance(row.get("image"), dict) else None
                if not blob:
                    raise SPRError(f"{where}: no embedded image and {name!r} not found under --images")
                if media_dir is None:
                    raise SPRError(f"{where}: embedded images need a media folder to be written to")
                image = _write_embedded(blob, media_dir, where, Image, check_image)
            answers = row.get("answer")
            if isinstance(answers, str):
                answers = [answers]
            if not isinstance(answers, list):
                raise SPRError(f"{where}: 'answer' must be a list of expressions")
            qid = row.get("question_id", row_no)
            for k, text in enumerate(answers):
                builder.add(f"{qid}_{k}", image, text, box, where)
    data.formats.append("lmms_parquet")


def _write_embedded(blob: bytes, media_dir: Path, where: str, Image: Any, check_image: Any) -> str:
    """Write an embedded image once (named by its content hash) and return its path."""
    digest = hashlib.sha256(blob).hexdigest()[:24]
    try:
        with Image.open(io.BytesIO(blob)) as im:
            ext = {"JPEG": ".jpg", "PNG": ".png"}.get(im.format or "", ".img")
    except Exception:
        ext = ".img"  # check_image below reports it as corrupt
    target = media_dir / f"{digest}{ext}"
    if not target.is_file() or target.stat().st_size != len(blob):
        with atomic_output(target, "wb") as f:
            f.write(blob)
    return str(target)


# -- entry points ------------------------------------------------------------------------------------------


def _load_one(path: Path, root: Path, split: str | None, data: RecData, media_dir: Path | None, images_given: bool) -> None:
    if not path.is_file():
        raise SPRError(f"REC annotation file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        data.formats.append("refer_pickle")
        _refer_pickle(path, root, split, data)
    elif suffix == ".parquet":
        _lmms_parquet(path, root if images_given else None, split, data, media_dir)
    elif suffix == ".json":
        obj = read_json(path, "REC annotation file")
        if not isinstance(obj, dict):
            raise SPRError(f"{path}: expected a COCO-style refs object or an MDETR refexp file; use .jsonl for one item per line")
        if isinstance(obj.get("refs"), list):
            data.formats.append("refs_json")
            _refs_items(path, obj["refs"], obj, root, split, data)
        elif isinstance(obj.get("images"), list) and any(isinstance(i, dict) and "caption" in i for i in obj["images"][:5]):
            data.formats.append("mdetr_refexp")
            _mdetr(path, obj, root, split, data)
        else:
            raise SPRError(
                f"{path}: not a REC file: expected refs ({{images, annotations, refs}}) or MDETR refexp "
                "(images with 'caption'); a refer refs(*).p pickle is read directly"
            )
    else:
        _jsonl(path, root, split, data)


def load_rec(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    media_dir: str | os.PathLike | None = None,
) -> RecData:
    """Read one or more REC files (any format above); raises :class:`SPRError` on malformed input.

    ``image_root`` is the folder relative image names start from (default: each file's folder);
    ``media_dir`` receives images embedded in a parquet file.
    """
    files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    data = RecData()
    ids: set[str] = set()
    for path in files:
        part = RecData(sanitized=data.sanitized)
        root = Path(image_root) if image_root is not None else path.parent
        _load_one(path, root, split, part, Path(media_dir) if media_dir is not None else None, image_root is not None)
        for it in part.items:
            if it.item_id in ids:
                raise SPRError(f"{path}: duplicate item id {it.item_id!r} across files (ids key the resumable results file)")
            ids.add(it.item_id)
        data.items += part.items
        data.formats += [f for f in part.formats if f not in data.formats]
        data.skipped.update(part.skipped)
    if not data.items:
        names = ", ".join(map(str, files))
        raise SPRError(f"{names}: no REC items" + (f" in split {split!r}" if split else ""))
    return data


def load_rec_items(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    media_dir: str | os.PathLike | None = None,
) -> list[RecItem]:
    """The items of :func:`load_rec` (kept for callers that only need the items)."""
    return load_rec(path, image_root, split, media_dir).items


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
    from spr_plugin.regions.annotations import category_name
    from spr_plugin.regions.sampling import load_coco

    coco = load_coco(annotation_file)
    root = Path(image_root)
    items = []
    for img_id in sorted(coco.imgs):
        anns = [a for a in coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0) and a.get("category_id") in coco.cats]
        names = [category_name(coco, a["category_id"]) for a in anns]
        for ann, name in zip(anns, names):
            if names.count(name) == 1:
                path = str(ImageRoots([root], "--images").resolve(str(coco.imgs[img_id]["file_name"]), f"image {img_id}"))
                items.append(RecItem(f"{img_id}_{ann['id']}", path, name, Box.from_xywh(*ann["bbox"])))
    return items
