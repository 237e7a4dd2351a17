"""Shipped recipes (package data, `spr recipes`, names in `spr check-recipe`) and `spr check-recipe RECIPE key=value`
judging what `llamafactory-cli train RECIPE key=value` trains on: its settings read by LLaMA-Factory's own reader,
and a real training whose image tokens show the frame check-recipe judged."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from helpers import run_spr as spr
from spr_plugin.core.frame import ImageFrame, lf_preprocess_image
from spr_plugin.llamafactory.recipe_check import recipe_settings
from spr_plugin.llamafactory.shipped_recipes import RECIPES_DIR, shipped_files, shipped_recipe_names

REPO = Path(__file__).resolve().parents[1]
CPU_RECIPE = RECIPES_DIR / "spr_qwen2vl_cpu_demo.yaml"


def _one_line_error(p, *fragments):
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, p.stderr
    assert all(f in errors[0] for f in fragments), errors[0]


def test_the_clone_recipes_folder_is_the_shipped_one():
    """One source of truth: the top-level recipes/ of a clone is a link to the package data."""
    assert (REPO / "recipes").resolve() == RECIPES_DIR
    assert {"spr_qwen2vl", "spr_qwen2vl_cpu_demo", "spr_qwen2vl_chosen_sft"} <= set(shipped_recipe_names())
    assert {Path("trl_dpo_qwen2vl.py"), Path("dataset_info.json"), Path("deepspeed/ds_z3_config.json")} <= set(shipped_files())


OVERRIDES = [
    [],
    ["image_max_pixels=12544"],
    ["dataset_dir=/abs/data", "dataset=a,b", "template=qwen2_vl", "image_min_pixels=null"],
    ["learning_rate=1e-5", "lora_rank=16", "image_max_pixels=262144", "image_max_pixels=4096"],
]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=lambda o: " ".join(o) or "none")
def test_overrides_are_read_exactly_as_llamafactory_reads_them(overrides, monkeypatch):
    from llamafactory.hparams.parser import read_args

    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", str(CPU_RECIPE), *overrides])  # what `train` leaves in argv
    assert recipe_settings(CPU_RECIPE, overrides) == read_args()


def test_check_recipe_judges_the_overridden_settings(built_dataset, tmp_path):
    data = built_dataset.data  # built in LLaMA-Factory's default frame (589824)
    dataset = ["dataset_dir=" + str(data), "dataset=" + built_dataset.name]
    # the CPU recipe trains at 12544: refused, and the message names the override that was read
    _one_line_error(spr("check-recipe", CPU_RECIPE, *dataset), "image_max_pixels=12544", "image_max_pixels=589824")
    ok = spr("check-recipe", "spr_qwen2vl_cpu_demo", *dataset, "image_max_pixels=589824")  # a shipped recipe by name
    assert ok.returncode == 0, ok.stderr
    assert f"{built_dataset.name}: frame" in ok.stdout
    _one_line_error(spr("check-recipe", CPU_RECIPE, *dataset, "image_max_pixels=589824", "template=llava"), "template=llava")
    _one_line_error(spr("check-recipe", CPU_RECIPE, *dataset, "image_max_pixels"), "not key=value")
    _one_line_error(spr("check-recipe", CPU_RECIPE, *dataset, "--image_max_pixels=1"), "--image_max_pixels=1")
    _one_line_error(spr("check-recipe", CPU_RECIPE, *dataset, "image_max_pixels=-3"), "image_max_pixels must be a positive")
    _one_line_error(spr("check-recipe", "no_such_recipe"), "recipe not found")
    # --dataset-dir still overrides whatever the YAML and the overrides say
    ok = spr("check-recipe", CPU_RECIPE, "dataset_dir=/nowhere", "dataset=" + built_dataset.name, "image_max_pixels=589824",
             "--dataset-dir", data)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_spr_recipes_writes_the_shipped_files_and_never_replaces_edits(tmp_path):
    out = tmp_path / "recipes"
    p = spr("recipes", "--out", out)
    assert p.returncode == 0, p.stderr
    for rel in shipped_files():
        assert (out / rel).read_bytes() == (RECIPES_DIR / rel).read_bytes()
    assert spr("recipes", "--out", out).returncode == 0  # identical files: nothing to do
    edited = out / "spr_qwen2vl.yaml"
    edited.write_text(edited.read_text() + "# mine\n")
    _one_line_error(spr("recipes", "--out", out), "spr_qwen2vl.yaml exists and differs")
    assert edited.read_text().endswith("# mine\n")
    listing = spr("recipes")
    assert listing.returncode == 0 and "spr_qwen2vl_cpu_demo.yaml" in listing.stdout


def _image_tokens_in_log(log: str, pad_id: int) -> int:
    ids = re.search(r"chosen_input_ids:\n(\[[^\]]*\])", log)
    assert ids, log[-3000:]
    return json.loads(ids.group(1)).count(pad_id)


@pytest.mark.slow
def test_llamafactory_cli_train_with_the_same_overrides_trains_in_the_judged_frame(built_dataset, tiny_qwen2vl, tmp_path):
    """check-recipe passes `CPU_RECIPE image_max_pixels=589824 ...`; the real training with those overrides feeds the
    model exactly as many image tokens as the 589824 frame gives (and not the recipe file's 12544)."""
    from PIL import Image
    from transformers import AutoProcessor

    from spr_plugin.llamafactory.train import run_train

    overrides = {"dataset_dir": built_dataset.data, "dataset": built_dataset.name, "image_max_pixels": 589824}
    judged = spr("check-recipe", CPU_RECIPE, *[f"{k}={v}" for k, v in overrides.items()])
    assert judged.returncode == 0, judged.stderr
    out = tmp_path / "dpo"
    train = {**overrides, "model_name_or_path": tiny_qwen2vl, "output_dir": out, "max_steps": 1, "max_samples": 2}
    run_train(CPU_RECIPE, {**train, "preprocessing_num_workers": 1}, log_path=tmp_path / "train.log", echo=False)
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    pad_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    first = json.loads((built_dataset.data / f"{built_dataset.name}.jsonl").read_text().splitlines()[0])
    image = Image.open(built_dataset.data / first["images"][0])

    def tokens(frame: ImageFrame) -> int:
        grid = processor.image_processor(images=[lf_preprocess_image(image, frame.image_max_pixels, frame.image_min_pixels)])
        return int(grid["image_grid_thw"][0].prod()) // processor.image_processor.merge_size**2

    seen = _image_tokens_in_log((tmp_path / "train.log").read_text(), pad_id)
    assert seen == tokens(ImageFrame(589824, 1024)) != tokens(ImageFrame(12544, 1024))


@pytest.mark.slow
def test_the_built_wheel_ships_the_recipes_and_check_recipe_runs_from_it(built_dataset, tmp_path):
    """`pip wheel` of the project, installed with --no-deps into a clean folder (the dependencies are the venv's),
    then `spr check-recipe` on a shipped recipe from a folder outside the repo: the code and recipe come from the wheel."""
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    pip = [sys.executable, "-m", "pip"]
    src = tmp_path / "src"  # a copy of what the wheel is built from: the build leaves nothing in the repo
    for package in ("spr_plugin", "data_builders"):  # data_builders/ is in the source tree, but not in the wheel
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheel = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src],
                           capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    (whl,) = (tmp_path / "dist").glob("spr_plugin-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    # one top-level package in users' site-packages: no generic data_builders; the demo's code is the library's
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))} == {"spr_plugin"}
    assert "spr_plugin/demo/run.py" in names and "spr_plugin/demo/tiny_model.py" in names
    for rel in shipped_files():
        assert f"spr_plugin/recipes/{rel.as_posix()}" in names
    target = tmp_path / "site"
    inst = subprocess.run([*pip, "install", "--no-deps", "--target", target, whl], capture_output=True, text=True, env=env)
    assert inst.returncode == 0, inst.stderr[-3000:]
    user = tmp_path / "elsewhere"
    user.mkdir()
    env["PYTHONPATH"] = str(target)
    where = subprocess.run([sys.executable, "-c", "import spr_plugin; print(spr_plugin.__file__)"],
                           capture_output=True, text=True, env=env, cwd=user)  # fmt: skip
    assert Path(where.stdout.strip()).resolve() == (target / "spr_plugin" / "__init__.py").resolve(), where.stderr
    args = ["check-recipe", "spr_qwen2vl", f"dataset_dir={built_dataset.data}", f"dataset={built_dataset.name}"]
    p = subprocess.run([sys.executable, "-m", "spr_plugin.cli", *args], capture_output=True, text=True, env=env, cwd=user)
    assert p.returncode == 0, p.stderr
    assert f"{built_dataset.name}: frame" in p.stdout
    p = subprocess.run([sys.executable, "-m", "spr_plugin.cli", "recipes", "--out", "recipes"], env=env, cwd=user,
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert yaml.safe_load((user / "recipes" / "spr_qwen2vl.yaml").read_text())["dataset"] == "spr_qwen2vl"
    for script in ("trl_dpo_qwen2vl.py", "trl_grpo_qwen2vl.py"):  # the TRL scripts run from the written-out copy
        p = subprocess.run([sys.executable, f"recipes/{script}", "--help"], env=env, cwd=user, capture_output=True, text=True)
        assert p.returncode == 0 and "--model" in p.stdout, p.stderr
