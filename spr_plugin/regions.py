"""Query regions from COCO-format detection annotations (COCO, Objects365 and LVIS all use it).

SPR asks the model to describe *regions*, not single objects: a random seed object is grown by merging
its nearest neighbouring objects until the region holds more than ``k`` objects (k = 4 in the paper).
Objects lying inside the grown box join the region too, otherwise a faithful description of the crop
would be punished for naming them.

Sampling is seeded per image (``seed``, ``image_id``), so the regions of an image do not depend on
which other images are processed, their order, or the shard a process works on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from .errors import ConfigError, SPRError
from .paths import is_contained
from .records import AnnotatedObject, Box, Region

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionConfig:
    k: int = 4  # a region holds more than k objects
    regions_per_image: int = 1
    max_regions: int | None = None
    seed: int = 0
    min_box_area: float = 16.0  # annotations smaller than this (pixels²) are noise for grounding
    containment: float = 0.9  # share of an object's area inside the region for it to belong to it

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.regions_per_image < 1:
            raise ConfigError(f"regions_per_image must be >= 1, got {self.regions_per_image}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")


@dataclass
class RegionStats:
    """What region sampling skipped and why; reported in the run summary."""

    images_seen: int = 0
    regions: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example)


def load_coco(annotation_file: str | os.PathLike) -> COCO:
    """Read a COCO-format json with pycocotools, turning every failure into a clear :class:`SPRError`."""
    path = Path(annotation_file)
    if not path.is_file():
        raise SPRError(f"annotation file not found: {path}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise SPRError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SPRError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise SPRError(f"{path}: a COCO annotation file holds a JSON object, found {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SPRError(f"{path}: missing or malformed '{key}' list (is this a COCO-format detection file?)")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not {"id", "file_name"} <= img.keys():
            raise SPRError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        if not _is_id(img["id"]):
            raise SPRError(f"{path}: images[{i}] has id {img['id']!r}; image ids must be non-negative integers")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not {"id", "name"} <= cat.keys():
            raise SPRError(f"{path}: categories[{i}] needs 'id' and 'name'")
        if not _is_id(cat["id"]) or not isinstance(cat["name"], str):
            raise SPRError(f"{path}: categories[{i}] needs an integer 'id' and a string 'name', found {cat!r:.80}")
    # Annotations pycocotools cannot index (non-integer ids, no category_id) are dropped here.
    data["annotations"] = [
        a
        for a in data["annotations"]
        if isinstance(a, dict) and _is_id(a.get("image_id")) and _is_id(a.get("id")) and _is_id(a.get("category_id"))
    ]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _is_id(value: object) -> bool:
    """COCO, Objects365 and LVIS ids are non-negative integers (bools are not ids)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid_objects(coco: COCO, img_id: int, config: RegionConfig, stats: RegionStats) -> list[AnnotatedObject]:
    objs = []
    for ann in coco.imgToAnns.get(img_id, []):
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            stats.skip("malformed_annotation", f"annotation {ann.get('id')}")
            continue
        cat = coco.cats.get(ann.get("category_id"))
        if cat is None:
            stats.skip("unknown_category", f"annotation {ann.get('id')} has category_id {ann.get('category_id')!r}")
            continue
        if ann.get("iscrowd", 0):
            continue
        box = Box.from_xywh(*bbox)
        if box.area < config.min_box_area:
            continue
        listed = cat.get("synonyms") if isinstance(cat.get("synonyms"), list) else []  # LVIS: a list of names
        synonyms = tuple(s for s in listed if isinstance(s, str) and s.strip() and s != cat["name"])
        objs.append(AnnotatedObject(int(ann["id"]), str(cat["name"]), box, synonyms))
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


def _image_size(path: Path) -> tuple[int, int] | str:
    """The image's real size, or the reason it cannot be used."""
    if not path.is_file():
        return "missing_image"
    try:
        with Image.open(path) as im:
            im.verify()
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "corrupt_image"


def sample_regions(
    coco: COCO, image_root: str | os.PathLike, config: RegionConfig, stats: RegionStats | None = None
) -> Iterator[Region]:
    """Yield query regions, image by image in id order; skipped images are counted in ``stats``."""
    stats = stats if stats is not None else RegionStats()
    root = Path(image_root).resolve()
    for img_id in sorted(coco.imgs):
        if config.max_regions is not None and stats.regions >= config.max_regions:
            return
        info = coco.imgs[img_id]
        stats.images_seen += 1
        objects = _valid_objects(coco, img_id, config, stats)
        if len(objects) <= config.k:
            stats.skip("too_few_objects", f"image {img_id} has {len(objects)} usable objects")
            continue
        if not is_contained(root, str(info["file_name"])):  # "../../etc/passwd", "/abs/elsewhere.jpg"
            stats.skip("path_outside_image_root", f"image {img_id}: {info['file_name']!r}")
            continue
        path = root / str(info["file_name"])
        size = _image_size(path)
        if isinstance(size, str):
            stats.skip(size, str(path))
            continue
        width, height = size
        if any(o.box.x2 > width + 1 or o.box.y2 > height + 1 or o.box.x1 < -1 or o.box.y1 < -1 for o in objects):
            stats.skip("image_smaller_than_box", f"{path} is {width}x{height}")
            continue
        rng = np.random.default_rng([config.seed, int(img_id)])
        seen: set[tuple[int, ...]] = set()
        for r, seed_index in enumerate(rng.permutation(len(objects))[: config.regions_per_image]):
            box, members = grow_region(objects, int(seed_index), config)
            member_ids = tuple(objects[i].ann_id for i in members)
            if member_ids in seen:
                continue
            seen.add(member_ids)
            stats.regions += 1
            yield Region(
                region_id=f"{img_id}_{r}",
                image_id=int(img_id),
                image_path=str(path),
                width=int(width),
                height=int(height),
                box=box,
                objects=tuple(objects[i] for i in members),
                seed_ann_id=objects[int(seed_index)].ann_id,
            )
            if config.max_regions is not None and stats.regions >= config.max_regions:
                return
