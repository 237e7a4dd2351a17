"""Region sampling from COCO-format json through pycocotools, and every bad input it can meet."""

import json
import shutil

import pytest

from spr_plugin.core.errors import SPRError
from spr_plugin.demo.scenes import render_scenes
from spr_plugin.regions.sampling import RegionConfig, RegionStats, load_coco, sample_regions


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return render_scenes(root, n_images=6, seed=3)


def _inside(inner, outer):
    return inner.x1 >= outer.x1 and inner.y1 >= outer.y1 and inner.x2 <= outer.x2 and inner.y2 <= outer.y2


def test_regions_hold_more_than_k_objects_inside_their_box(scenes):
    for k in (2, 4):
        regions = list(sample_regions(load_coco(scenes), scenes.parent / "images", RegionConfig(k=k, regions_per_image=2)))
        assert regions
        for r in regions:
            assert len(r.objects) > k
            assert all(_inside(o.box, r.box) for o in r.objects)
            assert r.seed_ann_id in {o.ann_id for o in r.objects}
            assert r.width == 448 and r.height == 336
            assert r.categories and all(" " in c for c in r.categories)


def test_sampling_is_seeded_and_independent_of_other_images(scenes):
    coco = load_coco(scenes)
    root = scenes.parent / "images"
    a = [r.to_dict() for r in sample_regions(coco, root, RegionConfig(seed=7))]
    b = [r.to_dict() for r in sample_regions(coco, root, RegionConfig(seed=7))]
    c = [r.to_dict() for r in sample_regions(coco, root, RegionConfig(seed=8))]
    assert a == b and a != c
    # Dropping image 1 does not change the regions of the other images.
    data = json.loads(scenes.read_text())
    data["images"] = [im for im in data["images"] if im["id"] != 1]
    smaller = scenes.parent / "smaller.json"
    smaller.write_text(json.dumps(data))
    d = [r.to_dict() for r in sample_regions(load_coco(smaller), root, RegionConfig(seed=7))]
    assert d == [r for r in a if r["image_id"] != 1]


def test_max_regions_and_round_trip(scenes):
    regions = list(sample_regions(load_coco(scenes), scenes.parent / "images", RegionConfig(max_regions=2)))
    assert len(regions) == 2
    from spr_plugin.core.records import Region

    assert [Region.from_dict(r.to_dict()) for r in regions] == regions


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "annotation file not found"),
        ("{oops", "not valid JSON"),
        ("[]", "holds a JSON object"),
        ('{"images": [], "annotations": []}', "'categories'"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', r"images\[0\] needs 'id' and 'file_name'"),
    ],
)
def test_malformed_annotation_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SPRError, match=message) as err:
        load_coco(path)
    assert str(path) in str(err.value)


def test_bad_records_are_skipped_and_counted(scenes, tmp_path):
    data = json.loads(scenes.read_text())
    images = tmp_path / "images"
    shutil.copytree(scenes.parent / "images", images)
    # image 1: missing file; image 2: corrupt file; image 3: annotated larger than the real image
    (images / data["images"][0]["file_name"]).unlink()
    (images / data["images"][1]["file_name"]).write_bytes(b"not a jpeg")
    for ann in data["annotations"]:
        if ann["image_id"] == 3:
            ann["bbox"] = [400, 300, 200, 200]
    # an unknown category id and a malformed bbox on image 4
    img4 = [a for a in data["annotations"] if a["image_id"] == 4]
    img4[0]["category_id"] = 999
    img4[1]["bbox"] = "oops"
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    stats = RegionStats()
    regions = list(sample_regions(load_coco(path), images, RegionConfig(k=3), stats))
    assert stats.skipped["missing_image"] == 1
    assert stats.skipped["corrupt_image"] == 1
    assert stats.skipped["image_smaller_than_box"] == 1
    assert stats.skipped["unknown_category"] == 1 and "999" in stats.examples["unknown_category"]
    assert stats.skipped["malformed_annotation"] == 1
    assert {r.image_id for r in regions} <= {4, 5, 6}
    assert all(999 not in {o.ann_id for o in r.objects} for r in regions)


def test_bad_region_config_is_a_clear_error():
    with pytest.raises(SPRError, match="k must be >= 1"):
        RegionConfig(k=0)
