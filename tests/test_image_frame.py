"""One image frame from sampling to training to evaluation: recorded by the build, checked against recipes
and evaluations through the real `spr` command, one line and exit 2 on a mismatch."""

import json
from pathlib import Path

import pytest
import yaml

from candidates_factory import write_candidates
from helpers import run_spr as spr
from spr_plugin.cli import build_parser
from spr_plugin.core.frame import ImageFrame
from spr_plugin.demo.scenes import render_scenes
from spr_plugin.families.profiles import get_box_format
from spr_plugin.llamafactory.recipe_check import adopt_frame

REPO = Path(__file__).resolve().parents[1]


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    for frag in fragments:
        assert frag in errors[0], errors[0]


def write_recipe(path, **keys):
    recipe = {"stage": "dpo", "template": "qwen2_vl", "dataset": "spr_frame", "dataset_dir": "data", **keys}
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A dataset exported with image_max_pixels 262144 (not the default), through the CLI."""
    root = tmp_path_factory.mktemp("frame")
    scenes = render_scenes(root / "scenes", n_images=3, seed=3)
    p = spr("regions", "--annotations", scenes, "--images", scenes.parent / "images", "--out", root / "regions.jsonl")
    assert p.returncode == 0, p.stderr
    write_candidates(root / "regions.jsonl", root / "candidates.jsonl")
    p = spr("pair", "--regions", root / "regions.jsonl", "--candidates", root / "candidates.jsonl", "--out", root / "pairs.jsonl",
            "--image-max-pixels", 262144)  # fmt: skip
    assert p.returncode == 0, p.stderr
    p = spr("export", "--pairs", root / "pairs.jsonl", "--dataset-dir", root / "data", "--name", "spr_frame",
            "--image-max-pixels", 262144, "--images", scenes.parent / "images")  # fmt: skip
    assert p.returncode == 0, p.stderr
    return root


def test_export_records_frame_template_and_box_format(built):
    meta = json.loads((built / "data" / "spr_frame.spr.json").read_text())
    assert meta["frame"] == {"image_max_pixels": 262144, "image_min_pixels": 1024}
    assert meta["template"] == "qwen2_vl" and meta["box_format"] == "qwen2_vl"


def test_check_recipe_accepts_the_same_frame_and_refuses_another(built):
    ok = write_recipe(built / "ok.yaml", image_max_pixels=262144)
    p = spr("check-recipe", ok, cwd=built)
    assert p.returncode == 0, p.stderr
    assert "spr_frame: frame" in p.stdout and "match" in p.stdout
    default = write_recipe(built / "default.yaml")  # LLaMA-Factory's default 768*768
    assert_one_line_error(spr("check-recipe", default, cwd=built), "image_max_pixels=589824", "image_max_pixels=262144")
    other_min = write_recipe(built / "min.yaml", image_max_pixels=262144, image_min_pixels=4096)
    assert_one_line_error(spr("check-recipe", other_min, "--dataset-dir", built / "data"), "image_min_pixels=4096")
    wrong_template = write_recipe(built / "tpl.yaml", image_max_pixels=262144, template="llava")
    assert_one_line_error(spr("check-recipe", wrong_template, cwd=built), "template=llava", "template=qwen2_vl")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "recipe not found"), ("a: [1,", "not valid YAML"), ("- 1\n", "mapping"), ("dataset: other\n", "nothing to check")],
)
def test_check_recipe_bad_inputs(built, tmp_path, content, fragment):
    path = tmp_path / "r.yaml"
    if content is not None:
        path.write_text(content)
    assert_one_line_error(spr("check-recipe", path, "--dataset-dir", built / "data"), fragment)


def test_build_refuses_a_recipe_in_another_frame_before_any_work(built, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", image_max_pixels=12544)
    work = tmp_path / "work"
    p = spr("build", "--annotations", built / "scenes" / "instances.json", "--images", built / "scenes" / "images",
            "--candidates", built / "candidates.jsonl", "--work-dir", work, "--dataset-dir", tmp_path / "data",
            "--recipe", recipe, "--image-max-pixels", 589824)  # fmt: skip
    assert_one_line_error(p, "image_max_pixels=12544", "image_max_pixels=589824")
    assert not work.exists() and not (tmp_path / "data").exists()


def test_build_adopts_the_recipe_frame_when_no_flag_gives_one(built, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", image_max_pixels=262144, image_min_pixels=4096, dataset="spr_adopt")
    p = spr("build", "--annotations", built / "scenes" / "instances.json", "--images", built / "scenes" / "images",
            "--candidates", built / "candidates.jsonl", "--work-dir", tmp_path / "work", "--dataset-dir", tmp_path / "data",
            "--name", "spr_adopt", "--recipe", recipe)  # fmt: skip
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "data" / "spr_adopt.spr.json").read_text())
    assert meta["frame"] == {"image_max_pixels": 262144, "image_min_pixels": 4096}
    assert json.loads((tmp_path / "work" / "summary.json").read_text())["frame"] == meta["frame"]
    # one flag given, the other bound from the recipe; a flag that contradicts the recipe is refused
    p = spr("build", "--annotations", built / "scenes" / "instances.json", "--images", built / "scenes" / "images",
            "--candidates", built / "candidates.jsonl", "--work-dir", tmp_path / "w2", "--dataset-dir", tmp_path / "d2",
            "--name", "spr_adopt", "--recipe", recipe, "--image-min-pixels", 1024)  # fmt: skip
    assert_one_line_error(p, "--image-min-pixels has image_min_pixels=1024", "image_min_pixels=4096")


def test_export_adopts_the_recipe_frame_for_pairs_without_a_record(built, tmp_path):
    old = tmp_path / "old.jsonl"
    old.write_text((built / "pairs.jsonl").read_text())  # no sidecar: an older spr's pairs
    assert_one_line_error(
        spr("export", "--pairs", old, "--dataset-dir", tmp_path / "data"), "records no box format", "--box-format"
    )
    recipe = write_recipe(tmp_path / "r.yaml", image_max_pixels=262144)
    p = spr(
        "export",
        "--pairs",
        old,
        "--dataset-dir",
        tmp_path / "data",
        "--name",
        "x",
        "--box-format",
        "qwen2_vl",
        "--recipe",
        recipe,
        "--images",
        built / "scenes" / "images",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "data" / "x.spr.json").read_text())["frame"]["image_max_pixels"] == 262144


def test_export_refuses_a_recipe_in_another_frame(built, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", image_max_pixels=12544)
    p = spr("export", "--pairs", built / "pairs.jsonl", "--dataset-dir", tmp_path / "data", "--name", "x", "--recipe", recipe,
            "--images", built / "scenes" / "images")  # fmt: skip
    assert_one_line_error(p, "image_max_pixels=12544")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("what", ["rec", "region"])
def test_eval_refuses_another_frame_before_loading_the_model(built, tmp_path, what):
    data_args = ["--annotations", built / "scenes" / "instances.json", "--images", built / "scenes" / "images"]
    common = [*data_args, "--model", tmp_path / "no-model", "--out", tmp_path / "r.json"]
    recipe = write_recipe(tmp_path / "r.yaml", image_max_pixels=262144)
    p = spr("eval", what, *common, "--recipe", recipe, "--image-max-pixels", 589824)
    assert_one_line_error(p, "image_max_pixels=262144", "--image-max-pixels has image_max_pixels=589824")
    p = spr("eval", what, *common, "--dataset-dir", built / "data", "--name", "spr_frame", "--image-max-pixels", 589824)
    assert_one_line_error(p, "dataset 'spr_frame'", "image_max_pixels=262144", "image_max_pixels=589824")
    other = write_recipe(tmp_path / "o.yaml", image_max_pixels=12544)  # recipe and dataset disagree: no flag can fix it
    p = spr("eval", what, *common, "--recipe", other, "--dataset-dir", built / "data", "--name", "spr_frame")
    assert_one_line_error(p, "image_max_pixels=12544", "image_max_pixels=262144")
    assert_one_line_error(spr("eval", what, *common, "--dataset-dir", built / "data"), "go together")
    for adopted in (["--dataset-dir", built / "data", "--name", "spr_frame"], ["--recipe", recipe]):
        p = spr("eval", what, *common, *adopted)  # no flag: the dataset's / recipe's frame is adopted
        assert p.returncode == 2 and "frame mismatch" not in p.stderr  # the frame matches: it failed later, on the model


def test_shipped_gpu_recipe_trains_in_the_build_default_frame():
    recipe = yaml.safe_load((REPO / "recipes" / "spr_qwen2vl.yaml").read_text())
    build = build_parser().parse_args(["build", "--annotations", "a.json", "--images", "i"])
    default = adopt_frame(build, [])  # no flag and no recipe: LLaMA-Factory's default
    assert ImageFrame.from_dict(recipe) == default == ImageFrame()


def test_qwen25_formats_parse_in_the_frame_they_are_given():
    big = ImageFrame(image_max_pixels=262144)
    assert get_box_format("qwen2_5_vl").frame_size(1280, 960) != get_box_format("qwen2_5_vl", big).frame_size(1280, 960)
    assert get_box_format("qwen2_5_vl", big).frame_size(1280, 960) == (588.0, 448.0)
    assert get_box_format("qwen2_vl", big).frame_size(1280, 960) == (1000.0, 1000.0)  # normalised: no frame
