"""Detection datasets as their authors publish them: LVIS v1, Objects365 (v1/v2, json and archive layouts), COCO.

Samples are written by ``formats_factory`` from each format's published description; the tests run the
real loader (pycocotools), real images and the real CLI.
"""

from __future__ import annotations

import json

import pytest
from formats_factory import W, draw_image, six_boxes, write_lvis, write_objects365

from helpers import run_spr as spr
from spr_plugin.core.errors import SPRError
from spr_plugin.families.profiles import get_box_format
from spr_plugin.families.prompts import build_prompt
from spr_plugin.regions.sampling import RegionConfig, RegionStats, check_images_found, load_coco, sample_regions
from spr_plugin.scoring.semantic import region_reference_text


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


def _regions(ann, root, **cfg):
    stats = RegionStats()
    regions = list(sample_regions(load_coco(ann), root, RegionConfig(**cfg), stats))
    return regions, stats


# -- LVIS v1 ------------------------------------------------------------------------------------------------


def test_lvis_v1_as_published_gives_regions_with_readable_names(tmp_path):
    ann, coco_root = write_lvis(tmp_path)
    regions, stats = _regions(ann, coco_root, k=4)
    assert sorted(r.image_id for r in regions) == [155379, 397133]
    assert stats.loader["file_names_from_coco_url"] == 2
    by_id = {r.image_id: r for r in regions}
    # the image lives at the coco_url's last two parts: LVIS val uses train2017 images too
    assert by_id[155379].image_path == str(coco_root / "train2017" / "000000155379.jpg")
    assert by_id[397133].image_path == str(coco_root / "val2017" / "000000397133.jpg")
    names = {o.category for r in regions for o in r.objects}
    assert names == {"aerosol can", "bat (animal)"}  # not aerosol_can / bat_(animal)
    can = next(o for r in regions for o in r.objects if o.category == "aerosol can")
    assert can.synonyms == ("spray can",)  # LVIS synonyms kept for label matching
    for r in regions:
        prompt = build_prompt("refs", r, get_box_format("qwen2_vl"))
        assert "bat (animal)" in prompt.text or "aerosol can" in prompt.text
        assert "aerosol_can" not in prompt.text and "bat_(animal)" not in prompt.text
        assert "_" not in region_reference_text(r)


def test_lvis_not_exhaustive_and_negative_categories_travel_with_the_region(tmp_path):
    ann, coco_root = write_lvis(tmp_path)
    regions, _ = _regions(ann, coco_root, k=4)
    r = next(r for r in regions if r.image_id == 397133)
    assert r.not_exhaustive == ("banana",) and r.absent == ("Band Aid",)
    again = type(r).from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r  # survives regions.jsonl / pairs.jsonl
    other = next(r for r in regions if r.image_id == 155379)
    assert other.not_exhaustive == () and "not_exhaustive" not in other.to_dict()


def test_lvis_image_root_can_be_the_split_folder(tmp_path):
    """--images coco/val2017 (a common spelling): val images are found, the train2017 one is counted missing."""
    ann, coco_root = write_lvis(tmp_path)
    regions, stats = _regions(ann, coco_root / "val2017", k=4)
    assert [r.image_id for r in regions] == [397133]
    assert stats.skipped["missing_image"] == 1


def test_lvis_build_through_the_cli(tmp_path):
    ann, coco_root = write_lvis(tmp_path)
    out = tmp_path / "regions.jsonl"
    p = spr("regions", "--annotations", ann, "--images", coco_root, "--out", out, "--k", 4)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(row["image_root"] == str(coco_root) for row in rows)
    assert json.loads(p.stdout)["regions"] == 2


# -- Objects365 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_objects365_archive_layout_is_found(tmp_path, version):
    """The json says images/v2/patch8/x.jpg; the official archive extracts to val/patch8/x.jpg."""
    ann, base = write_objects365(tmp_path, version=version)
    for root in (base, base / "val"):  # the folder holding val/, or val/ itself
        regions, stats = _regions(ann, root, k=3)
        assert len(regions) == 2, stats.to_dict()
        assert all("/val/patch8/" in r.image_path for r in regions)


def test_objects365_json_layout_still_works(tmp_path):
    ann, base = write_objects365(tmp_path, archive_layout=False)
    regions, _ = _regions(ann, base, k=3)
    assert len(regions) == 2 and all("/images/v2/patch8/" in r.image_path for r in regions)


def test_objects365_box_overshooting_the_border_is_clamped_not_the_image_dropped(tmp_path):
    ann, base = write_objects365(tmp_path)
    regions, stats = _regions(ann, base, k=3)
    first = next(r for r in regions if r.image_id == 1)
    assert stats.boxes_clamped == 1 and "image_smaller_than_box" not in stats.skipped
    assert max(o.box.x2 for o in first.objects) <= W


def test_a_box_far_outside_the_image_still_skips_it(tmp_path):
    """Annotations for a larger image (30% over the border) mean the wrong image: skipped and counted."""
    ann, base = write_objects365(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [W - 10.0, 20.0, 100.0, 40.0]
    ann.write_text(json.dumps(data))
    regions, stats = _regions(ann, base, k=3)
    assert [r.image_id for r in regions] == [2] and stats.skipped["image_smaller_than_box"] == 1


@pytest.mark.parametrize(
    "policy, n_objects, n_ignored, counted",
    [
        ("ignore", 4, 2, {"isfake": 1, "isreflected": 1}),
        ("keep", 6, 0, {}),
        ("drop", 4, 0, {"isfake_dropped": 1, "isreflected_dropped": 1}),
    ],
)
def test_objects365_fake_and_reflected_objects_follow_the_chosen_policy(tmp_path, policy, n_objects, n_ignored, counted):
    ann, base = write_objects365(tmp_path)
    regions, stats = _regions(ann, base, k=3, virtual_objects=policy)
    second = next(r for r in regions if r.image_id == 2)
    assert len(second.objects) == n_objects and len(second.ignored) == n_ignored
    assert dict(stats.ignored_objects) == counted
    assert all(o.category in ("Person", "Cabinet/shelf", "Handbag/Satchel") for o in second.objects)


def test_objects365_names_with_alternatives_get_each_part_as_synonym(tmp_path):
    ann, base = write_objects365(tmp_path)
    regions, _ = _regions(ann, base, k=3)
    shelf = next(o for r in regions for o in r.objects if o.category == "Cabinet/shelf")
    assert shelf.synonyms == ("Cabinet", "shelf")


def test_wrong_image_folder_is_one_line_naming_the_expected_path(tmp_path):
    ann, base = write_objects365(tmp_path)
    out = tmp_path / "r.jsonl"
    line = one_line_error(
        spr("regions", "--annotations", ann, "--images", tmp_path / "elsewhere", "--out", out), "image folder not found"
    )
    assert "elsewhere" in line
    (tmp_path / "empty").mkdir()
    line = one_line_error(
        spr("regions", "--annotations", ann, "--images", tmp_path / "empty", "--out", out),
        "images/v2/patch8/objects365_v2_00000001.jpg",
        "was expected at",
    )
    assert str(tmp_path / "empty") in line and not out.exists()
    # spr eval region used to blame --k for the same mistake
    line = one_line_error(
        spr(
            "eval",
            "region",
            "--annotations",
            ann,
            "--images",
            tmp_path / "empty",
            "--model",
            tmp_path / "no-model",
            "--out",
            tmp_path / "rep.json",
        ),  # fmt: skip
        "was expected at",
    )
    assert "--k" not in line


def test_no_region_at_all_is_a_one_line_error_with_the_reasons(tmp_path):
    ann, base = write_objects365(tmp_path)
    p = spr("regions", "--annotations", ann, "--images", base, "--out", tmp_path / "r.jsonl", "--k", 50)
    one_line_error(p, "no query region could be sampled", "too_few_objects")


# -- COCO: crowds, duplicates ----------------------------------------------------------------------------------


def _coco_with(tmp_path, images, anns):
    root = tmp_path / "images"
    for img in images:
        draw_image(root / img["file_name"], six_boxes())
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return path, root


def _anns(image_id, start, n=6, crowd=()):
    return [
        {"id": start + j, "image_id": image_id, "category_id": 1, "bbox": six_boxes()[j], "iscrowd": int(j in crowd)}
        for j in range(n)
    ]


def test_duplicate_image_ids_are_refused(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]
    ann, root = _coco_with(tmp_path, images, _anns(1, 10))
    with pytest.raises(SPRError, match=r"images\[1\] repeats image id 1"):
        load_coco(ann)
    one_line_error(spr("regions", "--annotations", ann, "--images", root, "--out", tmp_path / "r.jsonl"), "repeats image id 1")


def test_duplicate_annotation_ids_are_refused(tmp_path):
    ann, root = _coco_with(tmp_path, [{"id": 1, "file_name": "a.jpg"}], _anns(1, 10) + _anns(1, 10)[:1])
    with pytest.raises(SPRError, match="repeats annotation id 10"):
        load_coco(ann)


def test_crowd_boxes_are_ignored_objects_not_required_ones(tmp_path):
    ann, root = _coco_with(tmp_path, [{"id": 1, "file_name": "a.jpg"}], _anns(1, 10, crowd=(5,)))
    regions, stats = _regions(ann, root, k=4)
    assert len(regions[0].objects) == 5 and [o.ann_id for o in regions[0].ignored] == [15]
    assert stats.ignored_objects["crowd"] == 1


def test_lvis_image_without_coco_url_or_file_name_is_one_line(tmp_path):
    ann, root = _coco_with(tmp_path, [{"id": 1, "file_name": "a.jpg"}], _anns(1, 10))
    data = json.loads(ann.read_text())
    data["images"] = [{"id": 1, "coco_url": 5}]
    ann.write_text(json.dumps(data))
    one_line_error(spr("regions", "--annotations", ann, "--images", root, "--out", tmp_path / "r.jsonl"), "coco_url")


def test_check_images_found_accepts_a_partly_missing_dataset(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "gone.jpg"}]
    ann, root = _coco_with(tmp_path, images[:1], _anns(1, 10))
    data = json.loads(ann.read_text())
    data["images"] = images
    data["annotations"] += _anns(2, 20)
    ann.write_text(json.dumps(data))
    check_images_found(load_coco(ann), root)  # one image found is enough; the other is skipped and counted
    regions, stats = _regions(ann, root, k=4)
    assert len(regions) == 1 and stats.skipped["missing_image"] == 1


def test_same_basename_in_other_folders_is_never_taken_for_a_missing_image(tmp_path):
    """Per-sequence datasets reuse names (seq1/0001.jpg, seq2/0001.jpg): a missing seq3/0001.jpg is missing."""
    images = [{"id": i, "file_name": f"seq{i}/0001.jpg"} for i in (1, 2, 3)]
    root = tmp_path / "images"
    for i in (1, 2):
        draw_image(root / f"seq{i}" / "0001.jpg", six_boxes())
    path = tmp_path / "ann.json"
    anns = [a for i in (1, 2, 3) for a in _anns(i, 10 * i)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    regions, stats = _regions(path, root, k=4)
    assert sorted(r.image_id for r in regions) == [1, 2] and stats.skipped["missing_image"] == 1
