"""The image-roots rule (core/paths.ImageRoots, docs/inputs.md) and the validation of records read from files."""

from __future__ import annotations

import json
import math
import os

import pytest
from PIL import Image

from spr_plugin.core.errors import SPRError
from spr_plugin.core.images import confine_regions, region_image
from spr_plugin.core.jsonl import atomic_write_jsonl, dumps, finite_or_null, read_jsonl
from spr_plugin.core.paths import ImageRoots
from spr_plugin.core.records import PreferencePair, Region


def _region(path, width=20, height=10, **kw) -> Region:
    d = {"region_id": "r", "image_id": 1, "image_path": str(path), "width": width, "height": height, "box": [1, 1, 9, 9],
         "objects": [{"ann_id": 1, "category": "cat", "box": [1, 1, 5, 5]}], "seed_ann_id": 1, **kw}  # fmt: skip
    return Region.from_dict(d)


@pytest.fixture
def tree(tmp_path):
    """root/a.png, root/sub/b.png, a second root, an outside image and a symlinked root."""
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "outside").mkdir()
    for p in ("root/a.png", "root/sub/b.png", "other/c.png", "outside/secret.png"):
        Image.new("RGB", (20, 10)).save(tmp_path / p)
    (tmp_path / "linked_root").symlink_to(tmp_path / "root", target_is_directory=True)
    return tmp_path


def test_images_are_read_only_under_the_named_roots(tree):
    roots = ImageRoots.of([tree / "root", tree / "other"])
    assert roots.resolve(str(tree / "root" / "sub" / "b.png")) == tree / "root" / "sub" / "b.png"
    assert roots.resolve("c.png") == tree / "other" / "c.png"  # relative: under the first root that holds it
    for bad in (str(tree / "outside" / "secret.png"), "../outside/secret.png", "/etc/passwd"):
        with pytest.raises(SPRError, match="points outside the image folders named on the command line"):
            roots.resolve(bad)
    with pytest.raises(SPRError, match="no --images given"):
        ImageRoots.of(None).resolve(str(tree / "root" / "a.png"))
    for bad in ("", "a\x00b", 3, None):
        with pytest.raises(SPRError, match="not a usable file path"):
            roots.resolve(bad)


def test_a_symlinked_root_works_and_a_symlink_leaving_a_root_does_not(tree):
    assert ImageRoots.of(tree / "linked_root").resolve(str(tree / "linked_root" / "a.png")).is_file()
    (tree / "root" / "escape.png").symlink_to(tree / "outside" / "secret.png")
    (tree / "root" / "dir").symlink_to(tree / "outside", target_is_directory=True)
    roots = ImageRoots.of(tree / "root")
    for bad in ("escape.png", "dir/secret.png"):
        with pytest.raises(SPRError, match="is a link to .*outside the image folders"):
            roots.resolve(bad)
    # root/dir/../a.png is read as root/a.png (what the check approved), never as outside/../a.png
    assert roots.resolve(f"{tree}/root/dir/../a.png") == tree / "root" / "a.png"
    # naming the outside folder too makes it readable: the user decides
    assert ImageRoots.of([tree / "root", tree / "outside"]).resolve("escape.png") == tree / "root" / "escape.png"


def test_region_image_checks_the_declared_size_and_confine_rewrites_paths(tree):
    roots = ImageRoots.of(tree / "root")
    assert region_image(_region(tree / "root" / "a.png"), roots) == tree / "root" / "a.png"
    with pytest.raises(SPRError, match="is 20x10 but the region declares 40x20"):
        region_image(_region(tree / "root" / "a.png", 40, 20), roots)
    assert region_image(_region(tree / "root" / "gone.png"), roots) == tree / "root" / "gone.png"  # missing: counted later
    with pytest.raises(SPRError, match=f"pass --images {tree / 'outside'} if you trust this file"):
        region_image(_region(tree / "outside" / "secret.png", image_root=str(tree / "outside")), roots)
    (confined,) = confine_regions([_region("sub/../a.png")], roots)
    assert confined.image_path == str(tree / "root" / "a.png")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"box": [0, 0, math.inf, 5]}, "finite"),
        ({"box": [5, 1, 5, 9]}, "empty or reversed"),
        ({"box": [9, 1, 2, 9]}, "empty or reversed"),
        ({"box": [0, 0, 1]}, "4 numbers"),
        ({"box": [30, 30, 40, 40]}, "outside the 20x10 image"),
        ({"image_id": 10**40}, "below 2\\^63"),
        ({"seed_ann_id": -1}, "non-negative"),
        ({"width": "20"}, "width must be"),
        ({"width": 0}, "image size"),
        ({"region_id": {"a": 1}}, "region_id must be a string"),
        ({"region_id": True}, "region_id must be a string"),
        ({"image_path": ""}, "image_path must be"),
        ({"objects": [{"ann_id": 1, "category": "cat", "box": [5, 5, 1, 1]}]}, "empty or reversed"),
        ({"objects": [{"ann_id": 1e40, "category": "cat", "box": [1, 1, 5, 5]}]}, "below 2\\^63"),
        ({"objects": [{"ann_id": 1, "category": ["cat"], "box": [1, 1, 5, 5]}]}, "category must be"),
    ],
)
def test_hand_edited_region_values_are_refused_in_one_line(tmp_path, change, message):
    good = _region("x.png").to_dict()
    (tmp_path / "r.jsonl").write_text(json.dumps({**good, **change}).replace("Infinity", "1e999") + "\n")
    with pytest.raises(SPRError, match=f"r.jsonl:1: not a valid region .*{message}"):
        list(read_jsonl(tmp_path / "r.jsonl", Region.from_dict, what="region"))


def test_pair_scores_must_be_finite_and_refined_a_bool(tmp_path):
    region = _region("x.png").to_dict()
    side = {"candidate": {"region_id": "r", "text": "t"}, "refined": True, "score": 0.5,
            "semantic": {"score": 0.5, "scorer": "text"},
            "localization": {"score": 0.5, "metric": "f1", "n_gt": 1, "n_pred": 0, "matches": []}}  # fmt: skip
    pair = {"region": region, "chosen": side, "rejected": {**side, "refined": False}}
    assert PreferencePair.from_dict(pair).margin == 0
    for bad, message in (({"score": 1e999}, "finite"), ({"refined": "false"}, "true or false")):
        text = json.dumps({**pair, "chosen": {**side, **bad}}).replace("Infinity", "1e999")
        (tmp_path / "p.jsonl").write_text(text + "\n")
        with pytest.raises(SPRError, match=message):
            list(read_jsonl(tmp_path / "p.jsonl", PreferencePair.from_dict, what="pair"))


def test_json_writers_refuse_non_finite_numbers(tmp_path):
    with pytest.raises(SPRError, match=r"non-finite number .*rows.1.score = nan"):
        dumps({"rows": [{"score": 1.0}, {"score": math.nan}]})
    with pytest.raises(SPRError, match="margin = inf"):
        atomic_write_jsonl(tmp_path / "x.jsonl", [{"margin": math.inf}])
    assert not (tmp_path / "x.jsonl").exists() and not os.listdir(tmp_path)
    assert finite_or_null({"a": [1.5, math.inf], "b": math.nan}) == {"a": [1.5, None], "b": None}
