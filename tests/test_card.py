"""The build writes a dataset card next to the dataset; `spr export-hf` writes a TRL-style parquet that
loads back with `datasets`, whose images decode and whose rows record the box format, frame and prompt template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_spr
from spr_plugin.core.errors import SPRError
from spr_plugin.families.prompts import PROMPT_TEMPLATE
from spr_plugin.inspect.hf_export import export_hf

NAME = "spr_built"  # the shared build (conftest.built_dataset)


@pytest.fixture(scope="module")
def built(built_dataset) -> tuple[Path, dict]:
    return built_dataset.data, built_dataset.summary


def test_build_writes_a_dataset_card(built):
    data, summary = built
    card = (data / f"{NAME}.README.md").read_text()
    n = summary["dataset"]["records"]
    for fact in (
        f"# {NAME}",
        "| λ (weight of S_sem) | 0.8 |",
        "| localization metric, IoU threshold | hungarian, 0.5 |",
        "| seeds: regions, generation | 3, n/a |",
        f"| candidates | {summary['pairs']['candidates']} |",
        f"| pairs | {n} ",
        "parse failures: candidates without any valid box",
        "| chosen |",
        "| rejected |",
        "candidates.jsonl",  # no generator: the card names the candidate file instead
    ):
        assert fact in card, fact
    # LLaMA-Factory reads only file_name: the card is not registered as a dataset.
    assert list(json.loads((data / "dataset_info.json").read_text())) == ["users_own", NAME, f"{NAME}_chosen"]


def test_export_hf_parquet_loads_with_datasets_and_images_decode(built, tmp_path):
    import datasets

    data, summary = built
    proc = run_spr("export-hf", "--dataset-dir", data, "--name", NAME, "--out", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "hf" / f"{NAME}.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.num_rows == summary["dataset"]["records"]
    frame_columns = ("box_format", "image_max_pixels", "image_min_pixels", "template", "prompt_template")
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "images", *frame_columns}
    # what the build recorded in <name>.spr.json, per row (its defaults here; tests/test_trl_dpo.py builds in another frame)
    assert set(zip(*(ds[c] for c in frame_columns))) == {("qwen2_vl", 768 * 768, 32 * 32, "qwen2_vl", PROMPT_TEMPLATE)}
    assert isinstance(ds.features["images"].feature, datasets.Image)
    records = [json.loads(line) for line in (data / f"{NAME}.jsonl").read_text().splitlines()]
    for row, rec in zip(ds, records):
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0]["type"] == "image"
        assert rec["conversations"][0]["value"].endswith(row["prompt"][0]["content"][1]["text"])
        assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": rec["chosen"]["value"]}]}]
        assert row["rejected"][0]["content"][0]["text"] == rec["rejected"]["value"]
        (img,) = row["images"]
        img.load()  # decodes from the embedded bytes, not from the dataset folder
        assert img.size[0] > 0 and img.size[1] > 0


def test_export_hf_refuses_image_paths_outside_the_dataset_folder(built, tmp_path):
    data, _ = built
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "dataset_info.json").write_text((data / "dataset_info.json").read_text())
    rec = json.loads((data / f"{NAME}.jsonl").read_text().splitlines()[0])
    rec["images"] = ["../" * 8 + "etc/passwd"]
    (evil / f"{NAME}.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(SPRError, match="points outside"):
        export_hf(evil, NAME, tmp_path / "out")
    with pytest.raises(SPRError, match="not registered"):
        export_hf(evil, "other", tmp_path / "out")


def test_export_hf_records_null_template_for_prompts_that_are_not_sprs(built, tmp_path):
    import datasets

    data, _ = built
    own = tmp_path / "own"
    own.mkdir()
    (own / "dataset_info.json").write_text((data / "dataset_info.json").read_text())
    rec = json.loads((data / f"{NAME}.jsonl").read_text().splitlines()[0])
    rec["images"] = [str((data / rec["images"][0]).resolve())]
    other = {**rec, "conversations": [{"from": "human", "value": "<image>What is in the picture?"}]}
    (own / f"{NAME}.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(other) + "\n")
    res = export_hf(own, NAME, tmp_path / "out", image_root=data)  # absolute image paths: only under a root given
    ds = datasets.load_dataset("parquet", data_files=str(res.parquet), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["prompt_template"] == [PROMPT_TEMPLATE, None]


def test_export_hf_refuses_flags_that_contradict_the_recorded_build(built, tmp_path):
    data, _ = built
    proc = run_spr("export-hf", "--dataset-dir", data, "--name", NAME, "--out", tmp_path / "hf", "--image-max-pixels", "12544")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"spr export-hf: error: dataset '{NAME}' was built with image_max_pixels=589824 ({data / (NAME + '.spr.json')}) "
        "but --image-max-pixels says 12544; leave it out to use the recorded value"
    )
    assert not (tmp_path / "hf").exists()
    same = ["export-hf", "--dataset-dir", data, "--name", NAME, "--out", tmp_path / "hf2", "--image-max-pixels", "589824"]
    assert run_spr(*same).returncode == 0  # agreeing values are fine


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--box-format", "yolo"],
            "unknown box format 'yolo'; choose one of glm4v, internvl, qwen2_5_vl, qwen2_5_vl_json, qwen2_vl, qwen3_vl",
        ),
        (
            ["--image-max-pixels", "0"],
            "image_max_pixels must be a positive integer of at most 10^12 or None (no pre-resize), got 0",
        ),
        (
            ["--image-max-pixels", "1000", "--image-min-pixels", "2000"],
            "image_min_pixels (2000) must not exceed image_max_pixels (1000)",
        ),
    ],
)
def test_export_hf_bad_frame_flags_are_one_line_errors(built, tmp_path, flags, message):
    data, _ = built
    proc = run_spr("export-hf", "--dataset-dir", data, "--name", NAME, "--out", tmp_path / "hf", *flags)
    assert proc.returncode == 2 and proc.stderr.strip() == f"spr export-hf: error: {message}"
    assert not (tmp_path / "hf").exists()
