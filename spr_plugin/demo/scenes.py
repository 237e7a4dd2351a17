"""Synthetic scenes of coloured shapes with exact COCO boxes.

Why: SPR needs images with *known* object boxes so that grounded descriptions can be scored
against ground truth, and the demo/tests must run offline in seconds. Pillow draws a handful of
filled shapes per image; because we draw them, every box is exact. The output is plain COCO
(``instances.json``) so the same code path serves real COCO-style datasets later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: Colour name -> RGB. Saturated, mutually distinct hues so a tiny model can tell them apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}

#: Shape names; each has a drawing routine in :func:`_shape_polygon` / :func:`_draw_shape`.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: COCO category names, ``"<colour> <shape>"``; category id = index + 1 (stable across runs).
CATEGORY_NAMES: list[str] = [f"{c} {s}" for c in COLOURS for s in SHAPES]

#: Words that descriptions of these scenes use; tokenizers of tiny demo models include them.
SCENE_WORDS: list[str] = [
    *COLOURS,
    *SHAPES,
    "The region shows",
    "and",
    "next to",
    "above",
    "below",
    "left of",
    "right of",
    "a",
    "the",
    "object",
    "objects",
    "shape",
    "shapes",
]


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of circumradius ``r`` centred at ``(cx, cy)``."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int], outline: int = 0
) -> list[float]:
    """Draw one shape (filled, or only its ``outline`` pixels wide) and return its tight COCO box ``[x, y, w, h]``."""
    style = {"fill": fill} if outline <= 0 else {"outline": fill, "width": outline}
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], **style)
        x1, y1, x2, y2 = cx - r, cy - r, cx + r, cy + r
    else:
        pts = _shape_polygon(shape, cx, cy, r)
        draw.polygon(pts, **style)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def _overlap_too_big(box: Sequence[float], placed: Sequence[Sequence[float]], max_frac: float = 0.1) -> bool:
    """True if ``box`` covers more than ``max_frac`` of the smaller of itself and any placed box."""
    x1, y1, x2, y2 = box
    for px1, py1, px2, py2 in placed:
        iw = min(x2, px2) - max(x1, px1)
        ih = min(y2, py2) - max(y1, py1)
        if iw > 0 and ih > 0:
            smaller = min((x2 - x1) * (y2 - y1), (px2 - px1) * (py2 - py1))
            if iw * ih > max_frac * smaller:
                return True
    return False


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A light, slightly noisy background so images are not trivially flat (JPEG-friendly)."""
    w, h = size
    base = rng.integers(200, 246, size=3)
    noise = rng.normal(0.0, 6.0, size=(h, w, 1))
    arr = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def render_scenes(
    out_dir: str | Path,
    *,
    n_images: int = 12,
    seed: int = 0,
    size: tuple[int, int] = (448, 336),
    min_objects: int = 6,
    max_objects: int = 9,
    radius: tuple[float, float] = (0.05, 0.12),
    outline: int = 0,
) -> Path:
    """Render ``n_images`` scenes as JPEGs under ``out_dir/images/`` plus ``out_dir/instances.json``.

    Shapes are placed by rejection sampling so that no two overlap by more than 10% of the smaller
    one (boxes stay individually identifiable). Everything is drawn from one ``numpy`` generator
    seeded with ``seed``, so the same arguments give byte-identical JSON and images.
    ``radius`` bounds each shape's circumradius as fractions of the image's shorter side; ``outline > 0``
    draws shapes as outlines that many pixels wide instead of filled (the background shows through).
    Returns the path of the COCO json.
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    r_min = max(8.0, min(width, height) * radius[0])
    r_max = max(r_min + 1.0, min(width, height) * radius[1])
    colour_names = list(COLOURS)

    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id in range(1, n_images + 1):
        img = _background(rng, size)
        draw = ImageDraw.Draw(img)
        placed: list[tuple[float, float, float, float]] = []
        target = int(rng.integers(min_objects, max_objects + 1))
        for _ in range(target * 50):
            if len(placed) == target:
                break
            r = float(rng.uniform(r_min, r_max))
            cx = float(rng.uniform(r + 1, width - r - 1))
            cy = float(rng.uniform(r + 1, height - r - 1))
            corners = (cx - r, cy - r, cx + r, cy + r)
            if _overlap_too_big(corners, placed):
                continue
            colour = colour_names[int(rng.integers(len(colour_names)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            bbox = _draw_shape(draw, shape, cx, cy, r, COLOURS[colour], outline)
            placed.append(corners)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_NAMES.index(f"{colour} {shape}") + 1,
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 2),
                    "iscrowd": 0,
                }
            )
        if len(placed) < min_objects:
            raise ValueError(f"could only place {len(placed)} of {min_objects} objects on a {width}x{height} image")
        file_name = f"scene_{image_id:05d}.jpg"
        img.save(out / "images" / file_name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})

    coco = {
        "info": {"description": f"spr-plugin synthetic shapes (seed={seed})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": name.split()[1]} for i, name in enumerate(CATEGORY_NAMES)],
    }
    json_path = out / "instances.json"
    json_path.write_text(json.dumps(coco, indent=1))
    return json_path
