"""``spr eval rec`` / ``spr eval region`` as users run them (``main(argv)`` in process, tiny local model)."""

from __future__ import annotations

import json

from helpers import run_spr as spr
from spr_plugin.evaluation.rec_data import rec_items_from_detections, write_rec_jsonl


def test_eval_rec_cli_writes_report_and_table(tiny_qwen2vl, synthetic_scenes, tmp_path):
    items = rec_items_from_detections(synthetic_scenes, synthetic_scenes.parent / "images")[:3]
    ann = write_rec_jsonl(tmp_path / "rec.jsonl", items)
    out = tmp_path / "rec_report.json"
    images = synthetic_scenes.parent / "images"  # the REC file names absolute paths: only under --images
    args = ["eval", "rec", "--annotations", ann, "--images", images, "--model", tiny_qwen2vl, "--out", out,
            "--max-new-tokens", 6, "--quiet"]  # fmt: skip
    proc = spr(*args, "--convention", ">")
    assert proc.returncode == 0, proc.stderr
    assert "Acc@0.5" in proc.stdout and "Acc@0.9" in proc.stdout and "IoU > threshold" in proc.stdout
    report = json.loads(out.read_text())
    assert report["summary"]["n"] == 3 and report["convention"] == ">"
    assert "{expression}" in report["prompt"] and "<|object_ref_start|>" in report["prompt"]  # the template
    assert set(report["summary"]["accuracy"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert len(out.with_suffix(".items.jsonl").read_text().splitlines()) == 3
    again = spr(*args, "--convention", ">")
    assert again.returncode == 0 and "3 reused" in again.stdout


def test_eval_region_cli_samples_held_out_regions(tiny_qwen2vl, synthetic_scenes, tmp_path):
    out = tmp_path / "region_report.json"
    proc = spr(
        "eval", "region", "--annotations", synthetic_scenes, "--images", synthetic_scenes.parent / "images",
        "--k", 2, "--limit", 2, "--model", tiny_qwen2vl, "--out", out, "--max-new-tokens", 6, "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "F1@0.5" in proc.stdout
    report = json.loads(out.read_text())
    assert report["summary"]["regions"] == 2 and "Hungarian" in report["matching"]


def test_eval_user_errors_are_one_line(tiny_qwen2vl, tmp_path):
    # (a non-adapter --adapter folder is covered in process by test_eval_model_and_resume)
    missing = spr("eval", "rec", "--annotations", tmp_path / "nope.jsonl", "--model", tiny_qwen2vl, "--out", tmp_path / "r.json")
    assert missing.returncode == 2 and "REC annotation file not found" in missing.stderr and "Traceback" not in missing.stderr
    ann = tmp_path / "rec.jsonl"
    ann.write_text(json.dumps({"image": "a.jpg", "expression": "x", "box": [0, 0, 4, 4]}) + "\n")
    bad = spr("eval", "rec", "--annotations", ann, "--model", tiny_qwen2vl, "--out", tmp_path / "r.json", "--prompt", "where?")
    assert bad.returncode == 2 and "{expression}" in bad.stderr
    no_regions = spr("eval", "region", "--model", tiny_qwen2vl, "--out", tmp_path / "r.json")
    assert no_regions.returncode == 2 and "--regions" in no_regions.stderr


def test_bad_pre_resize_flags_are_one_line_errors(tiny_qwen2vl, tmp_path):
    ann = tmp_path / "rec.jsonl"
    ann.write_text(json.dumps({"image": "a.jpg", "expression": "x", "box": [0, 0, 4, 4]}) + "\n")
    base = ["eval", "rec", "--annotations", ann, "--model", tiny_qwen2vl, "--out", tmp_path / "r.json"]
    not_a_number = spr(*base, "--image-max-pixels", "lots")
    assert not_a_number.returncode == 2 and "pixel count" in not_a_number.stderr and "Traceback" not in not_a_number.stderr
    zero = spr(*base, "--image-max-pixels", 0)
    assert zero.returncode == 2 and "image_max_pixels must be a positive integer" in zero.stderr
    assert "Traceback" not in zero.stderr
    crossed = spr("generate", "--regions", tmp_path / "r.jsonl", "--model", tiny_qwen2vl, "--out", tmp_path / "c.jsonl",
                  "--image-max-pixels", 100, "--image-min-pixels", 200)  # fmt: skip
    assert crossed.returncode == 2 and "must not exceed image_max_pixels" in crossed.stderr and "Traceback" not in crossed.stderr
