"""Synthetic scenes: valid COCO for pycocotools, exact boxes, deterministic; warm-up data built from them."""

from __future__ import annotations

import hashlib
import json
from itertools import combinations
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from spr_plugin.core.records import Box
from spr_plugin.demo.scenes import CATEGORY_NAMES, COLOURS, render_scenes
from spr_plugin.demo.warmup import DATASET_NAME, write_sft_dataset
from spr_plugin.families.box_formats import Qwen2VLFormat


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_scenes_load_with_pycocotools(synthetic_scenes):
    coco = COCO(str(synthetic_scenes))
    assert len(coco.getImgIds()) == 6
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CATEGORY_NAMES
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        with Image.open(synthetic_scenes.parent / "images" / info["file_name"]) as im:
            assert im.size == (info["width"], info["height"]) == (448, 336)
            assert im.format == "JPEG"
        assert 6 <= len(coco.getAnnIds(imgIds=img_id)) <= 9


def test_boxes_lie_inside_images_and_cover_their_shape(synthetic_scenes):
    coco = COCO(str(synthetic_scenes))
    for ann in coco.loadAnns(coco.getAnnIds()):
        info = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert ann["iscrowd"] == 0 and w > 0 and h > 0
        assert ann["area"] == pytest.approx(w * h, rel=1e-3)
        assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
        # The box centre lies inside every shape we draw, so it must have the category's colour.
        colour = COLOURS[coco.cats[ann["category_id"]]["name"].split()[0]]
        with Image.open(synthetic_scenes.parent / "images" / info["file_name"]) as im:
            pixel = im.convert("RGB").getpixel((int(x + w / 2), int(y + h / 2)))
        assert all(abs(a - b) <= 40 for a, b in zip(pixel, colour)), (ann, pixel, colour)


def test_shapes_do_not_overlap_heavily(synthetic_scenes):
    coco = COCO(str(synthetic_scenes))
    for img_id in coco.getImgIds():
        boxes = [Box.from_xywh(*a["bbox"]) for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        for a, b in combinations(boxes, 2):
            iw = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
            ih = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
            assert iw * ih <= 0.1 * min(a.area, b.area) + 1e-6


def test_rendering_is_deterministic_for_a_seed(tmp_path):
    first = render_scenes(tmp_path / "a", n_images=3, seed=7)
    second = render_scenes(tmp_path / "b", n_images=3, seed=7)
    other = render_scenes(tmp_path / "c", n_images=3, seed=8)
    assert _digest(first.parent) == _digest(second.parent)
    assert _digest(first.parent) != _digest(other.parent)


def test_impossible_object_count_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="could only place"):
        render_scenes(tmp_path, n_images=1, size=(64, 64), min_objects=30, max_objects=30)


def test_warmup_dataset_is_sharegpt_with_gt_boxes(synthetic_scenes, tmp_path):
    out = write_sft_dataset(synthetic_scenes, synthetic_scenes.parent / "images", tmp_path / "data", regions_per_image=3)
    info = json.loads((out / "dataset_info.json").read_text())[DATASET_NAME]
    assert info["formatting"] == "sharegpt"
    assert info["columns"] == {"messages": "conversations", "images": "images"}
    records = json.loads((out / info["file_name"]).read_text())
    assert 6 <= len(records) <= 6 * 3  # up to 3 distinct regions per image
    coco = COCO(str(synthetic_scenes))
    fmt = Qwen2VLFormat()
    for rec in records:
        (image,) = rec["images"]
        human, gpt = rec["conversations"]
        assert Path(image).is_absolute() and Path(image).is_file()
        assert human["from"] == "human" and human["value"].count("<image>") == 1
        assert human["value"].startswith("<image>Describe the region <|box_start|>(")
        assert gpt["from"] == "gpt" and gpt["value"].startswith("The region shows <|object_ref_start|>")
        parsed = fmt.parse(gpt["value"], 448, 336)
        assert len(parsed.phrases) >= 1 and all(p.box is not None for p in parsed.phrases)
        # Every grounded phrase names a real object of that image, within grid rounding.
        (img_id,) = [i for i, v in coco.imgs.items() if Path(image).name == v["file_name"]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        for phrase in parsed.phrases:
            assert any(
                coco.cats[a["category_id"]]["name"] == phrase.label
                and max(abs(u - v) for u, v in zip(phrase.box.as_list(), Box.from_xywh(*a["bbox"]).as_list())) <= 1.0
                for a in anns
            ), phrase


def test_radius_and_outline_options(tmp_path):
    """Big outlined shapes: sizes follow ``radius``; the interior shows the background, the border the colour."""
    js = render_scenes(tmp_path / "big", n_images=4, seed=3, min_objects=1, max_objects=1, radius=(0.2, 0.25), outline=6)
    coco = json.loads(js.read_text())
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 2 * 0.2 * 336 * 0.9 <= max(w, h) <= 2 * 0.25 * 336 + 1  # a triangle's box is narrower than 2r
        name = CATEGORY_NAMES[ann["category_id"] - 1]
        with Image.open(js.parent / "images" / coco["images"][ann["image_id"] - 1]["file_name"]) as im:
            rgb = im.convert("RGB")
            centre = rgb.getpixel((int(x + w / 2), int(y + h * 0.6)))
            assert min(centre) > 150, f"{name}: interior should be background, got {centre}"  # light background
            colour = COLOURS[name.split()[0]]
            border = [rgb.getpixel((int(x + w / 2), int(y + dy))) for dy in range(0, int(h / 2))]
            assert any(sum(abs(a - b) for a, b in zip(px, colour)) < 90 for px in border), name
    filled = render_scenes(tmp_path / "filled", n_images=4, seed=3, min_objects=1, max_objects=1, radius=(0.2, 0.25))
    ann = json.loads(filled.read_text())["annotations"][0]
    x, y, w, h = ann["bbox"]
    with Image.open(filled.parent / "images" / "scene_00001.jpg") as im:
        assert min(im.convert("RGB").getpixel((int(x + w / 2), int(y + h * 0.6)))) < 150  # filled: the shape's colour


def test_warmup_data_merges_its_entry_under_the_registry_lock(synthetic_scenes, tmp_path):
    """dataset_info.json is written through the registry (its lock, its merge): a user's entry stays."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"users_own": {"file_name": "users_own.json"}}))
    write_sft_dataset(synthetic_scenes, synthetic_scenes.parent / "images", data, regions_per_image=1)
    info = json.loads((data / "dataset_info.json").read_text())
    assert set(info) == {"users_own", DATASET_NAME}
    write_sft_dataset(synthetic_scenes, synthetic_scenes.parent / "images", data, regions_per_image=1)  # again: same entry
    assert json.loads((data / "dataset_info.json").read_text()) == info
