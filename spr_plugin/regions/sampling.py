"""Query regions from COCO-format detection annotations (COCO, Objects365 and LVIS, see :mod:`.annotations`).

SPR asks the model to describe *regions*, not single objects: a random seed object is grown by merging
its nearest neighbouring objects until the region holds more than ``k`` objects (k = 4 in the paper).
Objects lying inside the grown box join the region too, otherwise a faithful description of the crop
would be punished for naming them.

What the annotations leave open is recorded with the region so scoring never punishes a description for
it: crowd boxes and (by default) Objects365's ``isfake``/``isreflected`` objects become ``ignored`` objects
(neither required nor wrong to ground), LVIS's ``not_exhaustive_category_ids`` become ``not_exhaustive``
names. Boxes that overshoot the image border by a little (Objects365 floats) are clamped; an image much
smaller than its boxes is the wrong image and is skipped, and so is one whose stored size is not the size the
annotation file declares for it, or whose pixels would not survive LLaMA-Factory's RGB conversion (16-bit):
see :func:`frame_mismatch` and docs/inputs.md.

Sampling is seeded per image (``seed``, ``image_id``), so the regions of an image do not depend on
which other images are processed, their order, or the shard a process works on.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from spr_plugin.core.errors import SPRError
from spr_plugin.core.images import MISSING, ImageFacts, ImageLocator, inspect_image
from spr_plugin.core.jsonl import read_jsonl
from spr_plugin.core.records import AnnotatedObject, Box, Region
from spr_plugin.core.sanitize import SanitizeStats, sanitize_phrase
from spr_plugin.core.serialize import field_dict
from spr_plugin.regions.annotations import (
    FALLBACK_NAME,
    MAX_NAME_LEN,
    DetectionIndex,
    category_name,
    category_synonyms,
    load_coco,
)
from spr_plugin.settings import RegionConfig

__all__ = [
    "RegionConfig", "RegionStats", "load_coco", "sample_regions", "sample_regions_stage", "grow_region", "require_regions",
    "check_images_found", "read_regions", "clean_region",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: What to do with Objects365 v2 objects flagged ``isfake`` (in a picture or on a screen) or ``isreflected``
#: (a reflection): ``ignore`` (default: not required, not wrong to ground), ``keep`` (ordinary objects),
#: ``drop`` (not there: a box on one counts as a false positive).


@dataclass
class RegionStats:
    """What region sampling skipped, clamped and ignored, and why; reported in the run summary."""

    images_seen: int = 0
    regions: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    boxes_clamped: int = 0
    ignored_objects: Counter = field(default_factory=Counter)  # crowd / isfake / isreflected
    loader: dict[str, int] = field(default_factory=dict)  # what the annotation loader changed (annotations.py)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example)

    def reasons(self) -> str:
        """The skip counts with one example each, for a one-line error."""
        return ", ".join(f"{k}: {v} (e.g. {self.examples[k]})" for k, v in self.skipped.most_common()) or "no images"

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, keys={"examples": "skipped_examples", "boxes_clamped": "boxes_clamped_to_image"})


def _flag(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0 or value is True


@dataclass
class _Candidates:
    """An image's annotations sorted into required objects and ignored ones (raw boxes, not yet clamped)."""

    objects: list[tuple[int, int, Box]] = field(default_factory=list)  # (ann_id, cat_id, box)
    ignored: list[tuple[int, int, Box, str]] = field(default_factory=list)  # (..., why)


def _annotations(coco: COCO, img_id: int, config: RegionConfig, stats: RegionStats) -> _Candidates:
    out = _Candidates()
    for ann in coco.imgToAnns.get(img_id, []):
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            stats.skip("malformed_annotation", f"annotation {ann.get('id')}")
            continue
        cat_id = ann.get("category_id")
        if cat_id not in coco.cats:
            stats.skip("unknown_category", f"annotation {ann.get('id')} has category_id {cat_id!r}")
            continue
        box = Box.from_xywh(*bbox)
        if box.area < config.min_box_area:
            continue
        why = (
            "crowd"
            if _flag(ann.get("iscrowd", 0))
            else "isfake"
            if _flag(ann.get("isfake", 0))
            else "isreflected"
            if _flag(ann.get("isreflected", 0))
            else ""
        )
        if why and (why == "crowd" or config.virtual_objects == "ignore"):
            out.ignored.append((int(ann["id"]), int(cat_id), box, why))
        elif why and config.virtual_objects == "drop":
            stats.ignored_objects[f"{why}_dropped"] += 1
        else:
            out.objects.append((int(ann["id"]), int(cat_id), box))
    return out


def _fit(box: Box, width: int, height: int, config: RegionConfig) -> Box | None:
    """``box`` clamped to the image if it overshoots by at most the tolerance, else None."""
    tx, ty = max(2.0, config.border_tolerance * width), max(2.0, config.border_tolerance * height)
    if box.x1 < -tx or box.y1 < -ty or box.x2 > width + tx or box.y2 > height + ty:
        return None
    return Box(
        min(max(box.x1, 0.0), width), min(max(box.y1, 0.0), height), min(max(box.x2, 0.0), width), min(max(box.y2, 0.0), height)
    )


def _objects(coco: COCO, raw: list[tuple[int, int, Box]], width: int, height: int, config: RegionConfig, stats: RegionStats):
    """Clamped objects of one image, or None if a box lies far outside it (the annotations are for another image)."""
    objs = []
    for ann_id, cat_id, box in raw:
        fitted = _fit(box, width, height, config)
        if fitted is None:
            return None
        if fitted != box:
            stats.boxes_clamped += 1
        if fitted.area < config.min_box_area:
            continue
        objs.append(AnnotatedObject(ann_id, category_name(coco, cat_id), fitted, category_synonyms(coco, cat_id)))
    return objs


def _inside(obj: Box, region: Box) -> float:
    iw = max(0.0, min(obj.x2, region.x2) - max(obj.x1, region.x1))
    ih = max(0.0, min(obj.y2, region.y2) - max(obj.y1, region.y1))
    return iw * ih / obj.area if obj.area > 0 else 0.0


def grow_region(objects: list[AnnotatedObject], seed_index: int, config: RegionConfig) -> tuple[Box, list[int]]:
    """Grow a region from one seed: merge the nearest object (centre distance to any member) until the
    region holds more than ``k`` objects, absorbing every object that lies inside the grown box."""
    centers = np.array([o.box.center for o in objects])
    members = [seed_index]
    box = objects[seed_index].box
    while len(members) <= config.k and len(members) < len(objects):
        rest = [i for i in range(len(objects)) if i not in members]
        dist = np.linalg.norm(centers[rest][:, None, :] - centers[members][None, :, :], axis=2).min(axis=1)
        nearest = rest[int(np.argmin(dist))]
        members.append(nearest)
        box = box.union(objects[nearest].box)
        members += [i for i in rest if i != nearest and _inside(objects[i].box, box) >= config.containment]
    return box, sorted(members)


def _sample_names(coco: COCO, n: int = 20) -> list[str]:
    """``file_name`` of the first ``n`` images (id order) that have annotations: what layouts are judged on."""
    names = []
    for img_id in sorted(coco.imgs):
        if coco.imgToAnns.get(img_id):
            name = coco.imgs[img_id].get("file_name")
            if isinstance(name, str) and name:
                names.append(name)
                if len(names) >= n:
                    break
    return names


def image_locator(coco: COCO, image_root: str | os.PathLike) -> ImageLocator:
    """A locator for ``coco``'s images under ``image_root``, its layout learned from the first images."""
    locator = ImageLocator(image_root)
    locator.learn(_sample_names(coco))
    return locator


def check_images_found(coco: COCO, image_root: str | os.PathLike) -> ImageLocator:
    """Raise :class:`SPRError` before any long work if the images of ``coco`` are not under ``image_root``.

    The first images with annotations are looked up in every known layout
    (:class:`~spr_plugin.core.images.ImageLocator`); if none is found, the message names where the first one was
    expected. Returns the locator (its layout learned) for sampling.
    """
    locator = ImageLocator(image_root)
    if not locator.root.is_dir():
        raise SPRError(f"image folder not found: {locator.root} (--images)")
    names = _sample_names(coco)
    if names and locator.learn(names) == 0:
        inside = [n for n in names if locator.contains(n)]
        example = inside[0] if inside else names[0]
        where = locator.expected(example) if inside else f"outside {locator.root}"
        raise SPRError(
            f"none of the first {len(names)} images of {getattr(coco, 'path', 'the annotations')} is under "
            f"{locator.root}: {example!r} was expected at {where}; pass the folder the json's file_name entries are "
            "relative to as --images (Objects365: the folder holding train/ or val/; LVIS: the COCO folder holding "
            "train2017/ and val2017/)"
        )
    return locator


def require_regions(regions: list[Region], stats: RegionStats, source: object) -> None:
    """One line saying why no region came out, instead of an empty file and a silent exit status."""
    if not regions:
        raise SPRError(f"no query region could be sampled from {source} ({stats.reasons()})")


def sample_regions_stage(
    config: RegionConfig,
    annotations: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    coco: COCO | None = None,
    locator: ImageLocator | None = None,
    progress: bool = False,
) -> tuple[list[Region], RegionStats]:
    """The regions stage, the one way every command samples: load the annotations (unless ``coco`` is given),
    check their images are under ``image_root`` (unless ``locator`` already did), sample, and refuse an empty
    result in one line saying why. ``spr regions``, ``spr build``, ``spr eval region`` and the demo call it."""
    coco = coco if coco is not None else load_coco(annotations)
    locator = locator if locator is not None else check_images_found(coco, image_root)  # one line before any long work
    stats = RegionStats()
    regions = list(sample_regions(coco, image_root, config, stats, progress=progress, locator=locator))
    require_regions(regions, stats, annotations)
    return regions, stats


def sample_regions(
    coco: COCO,
    image_root: str | os.PathLike,
    config: RegionConfig,
    stats: RegionStats | None = None,
    *,
    progress: bool = False,
    locator: ImageLocator | None = None,
) -> Iterator[Region]:
    """Yield query regions, image by image in id order; skipped images are counted in ``stats``.

    Every image is decoded once (its size, mode and frame are checked against the annotation file):
    ``progress`` shows a bar over the images, since that takes a while for a large dataset.
    """
    from tqdm import tqdm

    stats = stats if stats is not None else RegionStats()
    if isinstance(coco, DetectionIndex):
        stats.loader = dict(coco.load_stats)
    locator = locator if locator is not None else image_locator(coco, image_root)
    root = str(locator.root)
    for img_id in tqdm(sorted(coco.imgs), desc="checking images", unit="image", disable=not progress):
        if config.max_regions is not None and stats.regions >= config.max_regions:
            return
        info = coco.imgs[img_id]
        stats.images_seen += 1
        cands = _annotations(coco, img_id, config, stats)
        if len(cands.objects) <= config.k:
            stats.skip("too_few_objects", f"image {img_id} has {len(cands.objects)} usable objects")
            continue
        found = _usable_image(img_id, info, locator, stats)
        if found is None:
            continue
        path, (width, height) = found
        objects = _objects(coco, cands.objects, width, height, config, stats)
        if objects is None:
            stats.skip("image_smaller_than_box", f"{path} is {width}x{height}")
            continue
        if len(objects) <= config.k:
            stats.skip("too_few_objects", f"image {img_id} has {len(objects)} usable objects")
            continue
        ignored = _ignored_objects(coco, cands, width, height, config)
        not_exhaustive, absent = _lvis_names(coco, img_id)
        in_image = _image_names(coco, img_id)
        rng = np.random.default_rng([config.seed, int(img_id)])
        seen: set[tuple[int, ...]] = set()
        for r, seed_index in enumerate(rng.permutation(len(objects))[: config.regions_per_image]):
            box, members = grow_region(objects, int(seed_index), config)
            member_ids = tuple(objects[i].ann_id for i in members)
            if member_ids in seen:
                continue
            seen.add(member_ids)
            stats.regions += 1
            region_ignored = _ignored_in(ignored, box, stats)
            yield Region(
                region_id=f"{img_id}_{r}",
                image_id=int(img_id),
                image_path=str(path),
                width=int(width),
                height=int(height),
                box=box,
                objects=tuple(objects[i] for i in members),
                seed_ann_id=objects[int(seed_index)].ann_id,
                image_root=root,
                ignored=region_ignored,
                not_exhaustive=not_exhaustive,
                absent=absent,
                in_image=in_image,
            )
            if config.max_regions is not None and stats.regions >= config.max_regions:
                return


def _usable_image(
    img_id: int, info: dict[str, Any], locator: ImageLocator, stats: RegionStats
) -> tuple[Path, tuple[int, int]] | None:
    """The image's file and its (decoded) size, or None with the reason counted in ``stats``: outside the image
    root, missing, undecodable (truncated files, bombs and 16-bit images), or not in the declared frame."""
    file_name = info.get("file_name")
    try:
        path = locator.locate(file_name) if isinstance(file_name, str) else None
    except SPRError:  # "../../etc/passwd", "/abs/elsewhere.jpg"
        stats.skip("path_outside_image_root", f"image {img_id}: {file_name!r}")
        return None
    if path is None:
        stats.skip(MISSING, str(locator.root / str(file_name)) if isinstance(file_name, str) and file_name else f"image {img_id}")
        return None
    facts = inspect_image(path)  # decodes the image
    if isinstance(facts, str):
        stats.skip(facts, str(path))
        return None
    width, height = facts.size
    mismatch = frame_mismatch(info, facts)
    if mismatch is not None:
        declared = f"{info.get('width')!r}x{info.get('height')!r}"
        stats.skip(mismatch, f"image {img_id} ({path}): declared {declared}, stored {width}x{height}")
        return None
    return path, (width, height)


def _ignored_objects(
    coco: COCO, cands: _Candidates, width: int, height: int, config: RegionConfig
) -> list[tuple[AnnotatedObject, str]]:
    """The image's ignored objects fitted to it (those left with no area dropped), each with why it is ignored."""
    ignored = []
    for ann_id, cat_id, box, why in cands.ignored:
        fitted = _fit(box, width, height, config)
        if fitted is not None and fitted.area > 0:
            name, synonyms = category_name(coco, cat_id), category_synonyms(coco, cat_id)
            ignored.append((AnnotatedObject(ann_id, name, fitted, synonyms, crowd=why == "crowd"), why))
    return ignored


def _ignored_in(ignored: list[tuple[AnnotatedObject, str]], box: Box, stats: RegionStats) -> tuple[AnnotatedObject, ...]:
    """The ignored objects overlapping a region's ``box``, counted by why they are ignored."""
    inside = [(o, why) for o, why in ignored if _overlaps(o.box, box)]
    stats.ignored_objects.update(why for _, why in inside)
    return tuple(o for o, _ in inside)


#: Skip reasons of :func:`frame_mismatch`, keys of the run summary's ``skipped`` counts.
DECLARED_SIZE_MISMATCH, EXIF_ROTATED_DECLARATION = "declared_size_mismatch", "exif_rotated_declaration"


def frame_mismatch(info: dict[str, Any], facts: ImageFacts) -> str | None:
    """Why an image's boxes cannot be trusted in the frame the model sees, or None.

    The rule (COCO's convention, and the frame LLaMA-Factory 0.9.5 trains in, since neither PIL's ``open``
    nor its ``mm_plugin`` applies EXIF orientation): an annotation file's ``width``/``height`` and boxes
    describe the *stored* pixels. An image whose stored size differs from the declared one is another
    version of the picture (a half-size copy): :data:`DECLARED_SIZE_MISMATCH`. One whose declared size is
    its stored size with the sides swapped while it carries an EXIF rotation was annotated as a viewer shows
    it, in a frame the model never sees: :data:`EXIF_ROTATED_DECLARATION`. Both are skipped and counted. A
    file that declares no size is taken at its stored size.
    """
    w, h = info.get("width"), info.get("height")
    if w is None and h is None:
        return None
    declared = (_side(w), _side(h))
    if declared == facts.size:
        return None
    if facts.rotated and declared == (facts.height, facts.width):
        return EXIF_ROTATED_DECLARATION
    return DECLARED_SIZE_MISMATCH


def _side(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        return None
    return int(value)


def _overlaps(a: Box, b: Box) -> bool:
    return min(a.x2, b.x2) > max(a.x1, b.x1) and min(a.y2, b.y2) > max(a.y1, b.y1)


def _names_of(coco: COCO, ids) -> tuple[str, ...]:
    out: list[str] = []
    for cid in sorted(ids):
        out += [category_name(coco, cid), *category_synonyms(coco, cid)]
    return tuple(dict.fromkeys(out))


def _image_names(coco: COCO, img_id: int) -> tuple[str, ...]:
    """Every category annotated anywhere in the image (tiny, crowd and virtual objects too), with synonyms:
    what a description may name without hallucinating (see :mod:`spr_plugin.scoring.mentions`)."""
    return _names_of(coco, {a.get("category_id") for a in coco.imgToAnns.get(img_id, []) if a.get("category_id") in coco.cats})


def _lvis_names(coco: COCO, img_id: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """LVIS's not-exhaustive and negative categories of an image, as names (with synonyms)."""
    if not isinstance(coco, DetectionIndex):
        return (), ()
    return _names_of(coco, coco.not_exhaustive.get(img_id, frozenset())), _names_of(coco, coco.absent.get(img_id, frozenset()))


def _clean_object(obj: AnnotatedObject, stats: SanitizeStats | None) -> AnnotatedObject:
    name, removed = sanitize_phrase(obj.category, MAX_NAME_LEN)
    synonyms = []
    for s in obj.synonyms:
        alt, n = sanitize_phrase(s, MAX_NAME_LEN)
        removed += n
        if alt and alt != name:
            synonyms.append(alt)
    if stats is not None:
        stats.add("category_names", removed)
    name = name or (synonyms[0] if synonyms else FALLBACK_NAME)
    if name == obj.category and tuple(synonyms) == obj.synonyms:
        return obj
    return replace(obj, category=name, synonyms=tuple(dict.fromkeys(synonyms)))


def clean_region(region: Region, stats: SanitizeStats | None = None) -> Region:
    """``region`` with every name passed through the sanitiser (regions files come from elsewhere too)."""

    def names(values: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for v in values:
            text, removed = sanitize_phrase(v, MAX_NAME_LEN)
            if stats is not None:
                stats.add("category_names", removed)
            if text:
                out.append(text)
        return tuple(dict.fromkeys(out))

    return replace(
        region,
        objects=tuple(_clean_object(o, stats) for o in region.objects),
        ignored=tuple(_clean_object(o, stats) for o in region.ignored),
        not_exhaustive=names(region.not_exhaustive),
        absent=names(region.absent),
        in_image=names(region.in_image),
    )


def read_regions(path: str | os.PathLike, stats: SanitizeStats | None = None) -> list[Region]:
    """Regions of a JSONL file, names sanitised; a repeated ``region_id`` is refused (candidates are keyed by it)."""
    regions: list[Region] = []
    first: dict[str, int] = {}
    for i, region in enumerate(read_jsonl(path, Region.from_dict, what="region"), start=1):
        if region.region_id in first:
            raise SPRError(f"{path}: region_id {region.region_id!r} appears twice (records {first[region.region_id]} and {i})")
        first[region.region_id] = i
        if region.width < 1 or region.height < 1:
            raise SPRError(f"{path}: region {region.region_id!r} has image size {region.width}x{region.height}")
        regions.append(clean_region(region, stats))
    return regions
