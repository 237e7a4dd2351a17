"""Hostile inputs: fuzzed annotation files, paths escaping their folder, concurrent `spr register` runs.

Contract: a user's bad file ends in :class:`SPRError` (one line from the CLI) or in counted skips,
never in another exception; no file outside the image root / dataset folder is ever read or registered.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from spr_plugin.core.errors import SPRError
from spr_plugin.llamafactory.registry import ranking_entry, register_dataset
from spr_plugin.regions.sampling import RegionConfig, RegionStats, load_coco, sample_regions

SPR = [sys.executable, "-m", "spr_plugin.cli"]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
ANY_JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12
)
# Valid values most of the time (so generated files get through to region sampling), wrong ones often.
GOOD_ID, GOOD_NUM = st.integers(0, 2), st.floats(0, 70)  # boxes fit the 200x150 test image
IDS = st.one_of(GOOD_ID, GOOD_ID, GOOD_ID, st.sampled_from([-1, 2**63, "1", "x", 1.5, None, True]), ANY_JSON)
NUMS = st.one_of(
    GOOD_NUM, GOOD_NUM, GOOD_NUM, st.integers(-50, 200), st.sampled_from([math.nan, math.inf, -math.inf, "3", None, True])
)
FILE_NAMES = st.sampled_from(["img.png"] * 6 + ["missing.png", "../img.png", "/etc/passwd", "sub/../img.png", "", 7, None])


@st.composite
def coco_like(draw):
    """Mostly well-shaped COCO dicts whose fields are randomly wrong (types, values, missing keys), mixed
    with arbitrary JSON, so both the validation and the sampling code behind it are exercised."""
    if draw(st.integers(0, 9)) == 0:
        return draw(ANY_JSON)
    clean = draw(st.booleans())  # clean: only the annotations are corrupted, so sampling runs often
    image_id = GOOD_ID if clean else IDS
    images = draw(
        st.lists(
            st.fixed_dictionaries(
                {"id": image_id, "file_name": FILE_NAMES},
                optional={"width": NUMS, "height": NUMS, "extra": ANY_JSON},
            ),
            min_size=1 if clean else 0,
            max_size=3,
        )
    )
    good_box = st.lists(GOOD_NUM, min_size=4, max_size=4)
    bbox = st.one_of(good_box, good_box, st.lists(NUMS, min_size=4, max_size=4), st.lists(NUMS, max_size=6), ANY_JSON)
    any_ann = st.fixed_dictionaries(
        {"id": IDS, "image_id": IDS, "bbox": bbox, "category_id": IDS},
        optional={"iscrowd": st.one_of(st.integers(0, 1), ANY_JSON), "area": NUMS},
    )
    # A plausible object: 5-60 px boxes inside the image, ids that exist.
    sized = st.tuples(st.floats(0, 100), st.floats(0, 80), st.floats(5, 60), st.floats(5, 60)).map(list)
    good_ann = st.fixed_dictionaries({"id": st.integers(0, 10**6), "image_id": GOOD_ID, "bbox": sized, "category_id": GOOD_ID})
    ann = good_ann | good_ann | any_ann | ANY_JSON if clean else any_ann | ANY_JSON
    anns = draw(st.lists(ann, min_size=4 if clean else 0, max_size=16))
    good_cat = st.fixed_dictionaries({"id": GOOD_ID, "name": st.text(max_size=8)})
    bad_cat = st.fixed_dictionaries({"id": IDS, "name": ANY_JSON}) | ANY_JSON
    cats = draw(st.lists(good_cat if clean else good_cat | good_cat | bad_cat, min_size=1 if clean else 0, max_size=3))
    data = {"images": images, "annotations": anns, "categories": cats}
    if not clean and draw(st.integers(0, 3)) == 0:
        data[draw(st.sampled_from(list(data)))] = draw(ANY_JSON)  # one top-level list replaced by anything
    return data


def _valid_base() -> dict:
    """A correct COCO file for the 200x150 test image: 3 images, 6 objects each."""
    images = [{"id": i, "file_name": "img.png", "width": 200, "height": 150} for i in range(3)]
    anns = [
        {"id": 10 * i + j, "image_id": i, "category_id": j % 2, "bbox": [5 + 30 * j, 10 + 5 * j, 25, 30], "iscrowd": 0}
        for i in range(3)
        for j in range(6)
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}


def _slots(node, out):
    """Every (container, key) of a JSON tree, in a stable order."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((node, key))
        _slots(child, out)
    return out


@st.composite
def mutated_coco(draw):
    """A valid file with a few values replaced or keys deleted: reaches deep into region sampling."""
    data = _valid_base()
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(data, [])
        container, key = slots[draw(st.integers(0, len(slots) - 1))]
        if draw(st.booleans()) and isinstance(container, dict):
            del container[key]
        else:
            container[key] = draw(st.one_of(IDS, NUMS, FILE_NAMES, ANY_JSON))
    return data


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_images")
    Image.new("RGB", (200, 150), "white").save(root / "img.png")
    return root


@FUZZ
@given(data=st.one_of(mutated_coco(), coco_like()), raw=st.sampled_from([False] * 9 + [True]))
def test_fuzzed_annotation_files_give_spr_error_or_regions(image_root, data, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ann.json"
        text = json.dumps(data, allow_nan=True)
        path.write_text(text if not raw else text[: len(text) // 2])  # raw: a truncated file
        try:
            coco = load_coco(path)
            stats = RegionStats()
            regions = list(sample_regions(coco, image_root, RegionConfig(k=1, regions_per_image=2), stats))
        except SPRError as exc:
            event(f"outcome: SPRError ({str(exc).split(': ', 1)[-1][:28]})")
            return
        event(f"outcome: {'regions' if regions else 'no region'}; skips {sorted(stats.skipped)}")
        for r in regions:
            assert Path(r.image_path).resolve().parent == image_root.resolve()
            assert len(r.objects) > 1 and all(math.isfinite(v) for v in r.box.as_list())


def _coco(file_names: list[str]) -> dict:
    images, anns, next_id = [], [], 1
    for i, name in enumerate(file_names, start=1):
        images.append({"id": i, "file_name": name, "width": 200, "height": 150})
        for j in range(3):
            anns.append({"id": next_id, "image_id": i, "category_id": 1, "bbox": [10 + 50 * j, 10, 40, 40], "iscrowd": 0})
            next_id += 1
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}


def test_image_paths_escaping_the_image_root_are_refused(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (200, 150)).save(root / "ok.png")
    Image.new("RGB", (200, 150)).save(tmp_path / "secret.png")  # a real image outside the root
    names = ["ok.png", "../secret.png", str(tmp_path / "secret.png"), str(root / "ok.png"), "a/../../secret.png"]
    (tmp_path / "ann.json").write_text(json.dumps(_coco(names)))
    stats = RegionStats()
    regions = list(sample_regions(load_coco(tmp_path / "ann.json"), root, RegionConfig(k=1), stats))
    assert sorted(r.image_id for r in regions) == [1, 4]  # relative and absolute paths inside the root
    assert stats.skipped["path_outside_image_root"] == 3
    assert all("secret" not in r.image_path for r in regions)


def test_symlinked_image_folders_still_work(tmp_path):
    real = tmp_path / "big_disk"
    real.mkdir()
    Image.new("RGB", (200, 150)).save(real / "ok.png")
    (tmp_path / "images").symlink_to(real, target_is_directory=True)
    (tmp_path / "ann.json").write_text(json.dumps(_coco(["ok.png"])))
    assert len(list(sample_regions(load_coco(tmp_path / "ann.json"), tmp_path / "images", RegionConfig(k=1)))) == 1


@pytest.mark.parametrize("file_name", ["../outside.jsonl", "/etc/passwd", "a/../../x.jsonl"])
def test_registering_a_file_outside_the_dataset_dir_is_refused(tmp_path, file_name):
    with pytest.raises(SPRError, match="points outside"):
        register_dataset(tmp_path, "evil", ranking_entry(file_name))
    assert not (tmp_path / "dataset_info.json").exists()
    proc = subprocess.run(
        [*SPR, "register", "--dataset-dir", tmp_path, "--name", "evil", "--file-name", file_name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "points outside" in proc.stderr


def test_concurrent_spr_register_processes_lose_no_entry(tmp_path):
    existing = {"users_own": {"file_name": "mine.json"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(existing))
    names = [f"spr_{i}" for i in range(8)]
    for n in names:
        (tmp_path / f"{n}.jsonl").write_text("")  # spr register refuses a file that is not there
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [*SPR, "register", "--dataset-dir", tmp_path, "--name", n, "--file-name", f"{n}.jsonl"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in names
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert sorted(info) == sorted([*names, "users_own"]) and info["users_own"] == existing["users_own"]
    assert not list(tmp_path.glob(".dataset_info.json.*.tmp"))


def test_registering_records_whose_images_escape_the_dataset_dir_is_refused(tmp_path):
    record = {
        "conversations": [{"from": "human", "value": "<image>Describe."}],
        "chosen": {"from": "gpt", "value": "a"},
        "rejected": {"from": "gpt", "value": "b"},
        "images": ["ok/img.jpg"],
    }
    bad = {**record, "images": ["../../etc/passwd"]}
    (tmp_path / "good.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "images": ["/abs/ok.jpg"]}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(bad) + "\n")
    register_dataset(tmp_path, "good", ranking_entry("good.jsonl"))  # relative inside, or explicit absolute
    with pytest.raises(SPRError, match=r"bad\.jsonl:2: images entry '\.\./\.\./etc/passwd' points outside"):
        register_dataset(tmp_path, "bad", ranking_entry("bad.jsonl"))
    assert list(json.loads((tmp_path / "dataset_info.json").read_text())) == ["good"]
