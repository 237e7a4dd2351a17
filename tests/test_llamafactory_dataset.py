"""The emitted dataset through LLaMA-Factory's own loader, and the shipped recipes through its parser."""

import json
from pathlib import Path

import pytest
import yaml

from candidates_factory import write_candidates
from helpers import run_spr
from spr_plugin.demo.scenes import render_scenes
from spr_plugin.llamafactory.registry import ranking_entry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(built_dataset) -> Path:
    """The shared build (conftest.built_dataset), into a data dir that already has a user's entry."""
    return built_dataset.data


def _load_with_llamafactory(dataset_dir, name, model, out):
    """The preference dataset as LLaMA-Factory's DPO workflow tokenizes it (stage "rm" loads pairs)."""
    from llamafactory.train.test_utils import load_dataset_module

    module = load_dataset_module(
        stage="rm",
        model_name_or_path=str(model),
        do_train=True,
        finetuning_type="lora",
        dataset=name,
        dataset_dir=str(dataset_dir),
        template="qwen2_vl",
        cutoff_len=1024,
        image_max_pixels=12544,
        overwrite_cache=True,
        output_dir=str(out),
        report_to="none",
        bf16=False,
    )
    return module["train_dataset"]


def test_records_follow_the_llamafactory_contract(built):
    info = json.loads((built / "dataset_info.json").read_text())
    assert info["users_own"] == {"file_name": "users_own.json"}  # kept
    assert info["spr_built"] == ranking_entry("spr_built.jsonl")
    records = [json.loads(line) for line in (built / "spr_built.jsonl").read_text().splitlines()]
    assert records
    for rec in records:
        (turn,) = rec["conversations"]
        assert turn["from"] == "human"
        n_placeholders = sum(m["value"].count("<image>") for m in [turn, rec["chosen"], rec["rejected"]])
        assert n_placeholders == len(rec["images"]) == 1
        assert set(rec["chosen"]) == set(rec["rejected"]) == {"from", "value"} and rec["chosen"]["from"] == "gpt"
        # relative image paths resolve against dataset_dir (= LLaMA-Factory's media_dir), not the json's folder
        assert not Path(rec["images"][0]).is_absolute() and (built / rec["images"][0]).is_file()
        assert "<|box_start|>" in rec["chosen"]["value"]


def test_dataset_loads_through_llamafactory_with_qwen2vl_template(built, tiny_qwen2vl, tmp_path):
    n_records = len((built / "spr_built.jsonl").read_text().splitlines())
    ds = _load_with_llamafactory(built, "spr_built", tiny_qwen2vl, tmp_path / "out")
    assert len(ds) == n_records
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2vl)
    chosen = tok.decode(ds[0]["chosen_input_ids"])
    assert "<|box_start|>" in chosen and "<|object_ref_start|>" in chosen and "<|image_pad|>" in chosen


def _recipe_keys(path):
    return yaml.safe_load(path.read_text())


def test_recipes_name_the_registered_dataset_and_safe_settings():
    gpu = _recipe_keys(ROOT / "recipes/spr_qwen2vl.yaml")
    cpu = _recipe_keys(ROOT / "recipes/spr_qwen2vl_cpu_demo.yaml")
    entries = json.loads((ROOT / "recipes/dataset_info.json").read_text())
    for recipe in (gpu, cpu):
        assert recipe["stage"] == "dpo" and recipe["finetuning_type"] == "lora" and recipe["template"] == "qwen2_vl"
        assert recipe["pref_loss"] == "sigmoid"  # hinge/ipo silently become sigmoid with trl >= 0.20
        assert entries[recipe["dataset"]] == ranking_entry(f"{recipe['dataset']}.jsonl")
    assert gpu["model_name_or_path"] == "Qwen/Qwen2-VL-7B-Instruct" and gpu["dataset_dir"] == "data"
    assert cpu["bf16"] is False


def test_gpu_recipe_is_accepted_by_llamafactory(built, tiny_qwen2vl, tmp_path):
    """Every key of the GPU recipe parses in LLaMA-Factory (unknown keys would raise); only the model,
    the data folder and the precision are swapped for what this CPU machine has."""
    from llamafactory.hparams import get_train_args

    args = _recipe_keys(ROOT / "recipes/spr_qwen2vl.yaml")
    args.update(
        model_name_or_path=str(tiny_qwen2vl),
        dataset_dir=str(built),
        dataset="spr_built",
        bf16=False,
        output_dir=str(tmp_path / "out"),
    )
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    assert finetuning_args.stage == "dpo" and finetuning_args.pref_loss == "sigmoid"
    assert data_args.template == "qwen2_vl" and data_args.dataset == ["spr_built"]


def test_stray_media_markers_in_answers_do_not_reach_llamafactory(tiny_qwen2vl, tmp_path):
    """Weak models do sample ``<image>`` / ``<|video_pad|>``; exported answers must not carry them.

    Without the scrub LLaMA-Factory refuses the records (``<image>`` count != image count) or, for a
    stray ``<|video_pad|>``, its Qwen2-VL collator crashes computing M-RoPE positions.
    """
    from transformers import AutoTokenizer

    scenes = render_scenes(tmp_path / "scenes", n_images=3, seed=5)
    common = ["--annotations", scenes, "--images", scenes.parent / "images"]
    assert run_spr("regions", *common, "--out", tmp_path / "r.jsonl").returncode == 0
    write_candidates(tmp_path / "r.jsonl", tmp_path / "c.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):  # every answer gets debris: the best (chosen) and the worst (rejected) alike
        row["text"] = ("<image>" if i % 2 else "<|video_pad|><|vision_start|>") + row["text"] + "<|image_pad|><video>"
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "data"
    cmd = [*common, "--candidates", tmp_path / "c.jsonl", "--work-dir", tmp_path / "w", "--dataset-dir", data, "--name", "spr_m"]
    proc = run_spr("build", *cmd)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (data / "spr_m.jsonl").read_text().splitlines()]
    assert records
    for rec in records:
        for answer in (rec["chosen"]["value"], rec["rejected"]["value"]):
            assert not any(m in answer for m in ("<image>", "<video>", "<|video_pad|>", "<|image_pad|>", "<|vision_start|>"))
    ds = _load_with_llamafactory(data, "spr_m", tiny_qwen2vl, tmp_path / "out")
    assert len(ds) == len(records)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2vl)
    video_pad = tok.convert_tokens_to_ids("<|video_pad|>")
    assert all(video_pad not in row["chosen_input_ids"] and video_pad not in row["rejected_input_ids"] for row in ds)
