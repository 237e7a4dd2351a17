"""Read a COCO-format detection json as its authors publish it: COCO, LVIS v1 and Objects365 v1/v2.

All three are COCO-like and indexed with pycocotools, but each adds something the rest of the pipeline
must not get wrong:

* **LVIS v1** images carry ``coco_url`` and no ``file_name``; the image lives at the url's last two parts
  (``val2017/000000397133.jpg``), as detectron2's LVIS loader derives it. Category names are written
  ``bat_(animal)``/``aerosol_can`` and come with ``synonyms``; per image, ``not_exhaustive_category_ids``
  lists categories whose instances were not all labelled and ``neg_category_ids`` categories verified absent.
* **Objects365** boxes may overshoot the image border by a few pixels (clamped at sampling, see
  :mod:`spr_plugin.regions.sampling`), v2 objects carry ``isfake`` (in a picture or on a screen) and ``isreflected``
  (a reflection), and names hold alternatives (``Cabinet/shelf``).
* **COCO** ``iscrowd`` annotations mark a crowd, not one object.

Names become readable (``bat (animal)``) and pass through :mod:`spr_plugin.core.sanitize` (a special token in a
category name would end up in prompts and reference texts). Duplicate image, annotation or category ids are
refused: they would silently attach one image's boxes to another. Every problem with the file itself is one
:class:`SPRError` naming the file and the record.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import read_json
from spr_plugin.core.sanitize import readable_name, sanitize_phrase

#: Name used for a category whose name is empty once sanitised (an empty name would vanish from prompts).
FALLBACK_NAME = "object"
MAX_NAME_LEN = 100


class DetectionIndex(COCO):
    """A pycocotools index plus what the loader derived: readable names, synonyms and per-image LVIS lists.

    ``names[cat_id]`` and ``synonyms[cat_id]`` are sanitised; ``not_exhaustive[img_id]`` and
    ``absent[img_id]`` hold category ids; ``flavour`` is ``coco``, ``lvis`` or ``objects365`` (for messages);
    ``load_stats`` counts what the loader changed (sanitised names, derived file names, ...).
    """

    def __init__(self) -> None:
        super().__init__()
        self.path = Path()
        self.flavour = "coco"
        self.names: dict[int, str] = {}
        self.synonyms: dict[int, tuple[str, ...]] = {}
        self.not_exhaustive: dict[int, frozenset[int]] = {}
        self.absent: dict[int, frozenset[int]] = {}
        self.load_stats: Counter = Counter()


def _is_id(value: object) -> bool:
    """COCO, Objects365 and LVIS ids are non-negative integers (bools are not ids)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _file_name_from_url(url: object) -> str | None:
    """LVIS: ``http://images.cocodataset.org/val2017/000000397133.jpg`` -> ``val2017/000000397133.jpg``."""
    if not isinstance(url, str):
        return None
    parts = [p for p in url.split("?")[0].split("/") if p]
    if len(parts) < 2 or parts[-1] in (".", "..") or parts[-2] in (".", ".."):
        return None
    return f"{parts[-2]}/{parts[-1]}"


def _clean_name(raw: str) -> tuple[str, int]:
    """Sanitised first (``<|image_pad|>`` must not turn into ``<|image pad|>``), then made readable."""
    text, removed = sanitize_phrase(raw, 10 * MAX_NAME_LEN)
    return sanitize_phrase(readable_name(text), MAX_NAME_LEN)[0], removed


def _category_names(path: Path, cats: list[Any], stats: Counter) -> tuple[dict[int, str], dict[int, tuple[str, ...]]]:
    names: dict[int, str] = {}
    synonyms: dict[int, tuple[str, ...]] = {}
    first: dict[int, int] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not {"id", "name"} <= cat.keys():
            raise SPRError(f"{path}: categories[{i}] needs 'id' and 'name'")
        if not _is_id(cat["id"]) or not isinstance(cat["name"], str):
            raise SPRError(f"{path}: categories[{i}] needs an integer 'id' and a string 'name', found {cat!r:.80}")
        cid = cat["id"]
        if cid in first:
            raise SPRError(f"{path}: categories[{i}] repeats category id {cid} (first at categories[{first[cid]}])")
        first[cid] = i
        name, removed = _clean_name(cat["name"])
        stats["category_name_tokens_removed"] += removed
        raw_syn = cat.get("synonyms") if isinstance(cat.get("synonyms"), list) else []
        alts = []
        for s in raw_syn:
            if isinstance(s, str):
                alt, removed = _clean_name(s)
                stats["category_name_tokens_removed"] += removed
                alts.append(alt)
        if "/" in name:  # Objects365 "Cabinet/shelf", "Handbag/Satchel": each part names the category
            alts += [" ".join(p.split()) for p in name.split("/")]
        alts = [a for a in alts if a]
        if not name:
            stats["category_names_empty"] += 1
            name = alts[0] if alts else FALLBACK_NAME
        names[cid] = name
        synonyms[cid] = tuple(dict.fromkeys(a for a in alts if a != name))
    return names, synonyms


def _id_list(value: Any, known: dict[int, str]) -> frozenset[int]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if _is_id(v) and v in known)


def load_coco(annotation_file: str | os.PathLike) -> DetectionIndex:
    """Read and validate a COCO / LVIS / Objects365 json; every failure is a clear :class:`SPRError`."""
    path = Path(annotation_file)
    data = read_json(path, "annotation file", strict=False)
    if not isinstance(data, dict):
        raise SPRError(f"{path}: a COCO annotation file holds a JSON object, found {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SPRError(f"{path}: missing or malformed '{key}' list (is this a COCO-format detection file?)")
    stats: Counter = Counter()
    names, synonyms = _category_names(path, data["categories"], stats)

    index = DetectionIndex()
    images = _images(path, data["images"], names, index, stats)
    annotations = _indexable_annotations(path, data["annotations"], stats)
    index.dataset = {**data, "images": images, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        index.createIndex()
    index.path = path
    index.names, index.synonyms = names, synonyms
    index.load_stats = stats
    index.flavour = _flavour(data, images, annotations)
    return index


def _images(path: Path, raw: list[Any], names: dict[int, str], index: DetectionIndex, stats: Counter) -> list[dict[str, Any]]:
    """The image entries, each with an id (unique) and a ``file_name`` (LVIS: from ``coco_url``); LVIS's
    per-image category lists go into ``index``."""
    seen: dict[int, int] = {}
    images = []
    for i, img in enumerate(raw):
        if not isinstance(img, dict) or "id" not in img:
            raise SPRError(f"{path}: images[{i}] needs 'id' and 'file_name' (COCO, Objects365) or 'coco_url' (LVIS)")
        if not _is_id(img["id"]):
            raise SPRError(f"{path}: images[{i}] has id {img['id']!r}; image ids must be non-negative integers")
        if img["id"] in seen:
            raise SPRError(
                f"{path}: images[{i}] repeats image id {img['id']} (first at images[{seen[img['id']]}]); "
                "ids must be unique, or one image's boxes would be attached to another"
            )
        seen[img["id"]] = i
        img = dict(img)
        if "file_name" not in img:
            derived = _file_name_from_url(img.get("coco_url"))
            if derived is None:
                raise SPRError(f"{path}: images[{i}] needs 'id' and 'file_name' (COCO, Objects365) or 'coco_url' (LVIS)")
            img["file_name"] = derived
            stats["file_names_from_coco_url"] += 1
        index.not_exhaustive[img["id"]] = _id_list(img.get("not_exhaustive_category_ids"), names)
        index.absent[img["id"]] = _id_list(img.get("neg_category_ids"), names)
        images.append(img)
    return images


def _indexable_annotations(path: Path, raw: list[Any], stats: Counter) -> list[dict[str, Any]]:
    """The annotations pycocotools can index; those it cannot (non-integer ids, no category_id) are dropped and
    counted, a repeated annotation id is refused."""
    annotations = []
    seen: set[int] = set()
    for i, a in enumerate(raw):
        if not (isinstance(a, dict) and _is_id(a.get("image_id")) and _is_id(a.get("id")) and _is_id(a.get("category_id"))):
            stats["malformed_annotations"] += 1
            continue
        if a["id"] in seen:
            raise SPRError(f"{path}: annotations[{i}] repeats annotation id {a['id']}; annotation ids must be unique")
        seen.add(a["id"])
        annotations.append(a)
    return annotations


def _flavour(data: dict[str, Any], images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> str:
    head = images[:50]
    if any("not_exhaustive_category_ids" in img or ("coco_url" in img and "file_name" not in img) for img in data["images"][:50]):
        return "lvis"
    if any("isfake" in a or "isreflected" in a for a in annotations[:200]) or any(
        str(img.get("file_name", "")).startswith(("images/v1/", "images/v2/", "objects365")) for img in head
    ):
        return "objects365"
    return "coco"


def category_name(coco: COCO, cat_id: int) -> str:
    """The readable, sanitised name of a category (also for a plain pycocotools index)."""
    if isinstance(coco, DetectionIndex) and cat_id in coco.names:
        return coco.names[cat_id]
    name = _clean_name(str(coco.cats[cat_id].get("name", "")))[0]
    return name or FALLBACK_NAME


def category_synonyms(coco: COCO, cat_id: int) -> tuple[str, ...]:
    return coco.synonyms.get(cat_id, ()) if isinstance(coco, DetectionIndex) else ()


def category_vocabulary(coco: COCO) -> list[str]:
    """Every category name of the dataset with its synonyms: the vocabulary mentions are judged against
    (:mod:`spr_plugin.scoring.mentions`); a name outside an image's annotations is absent from it."""
    out: list[str] = []
    for cat_id in sorted(coco.cats):
        out += [category_name(coco, cat_id), *category_synonyms(coco, cat_id)]
    return list(dict.fromkeys(out))
