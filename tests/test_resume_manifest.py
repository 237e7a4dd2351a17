"""Safe resume: work is reused only when it was made from the same inputs and settings (spr_plugin.core.manifest).

A rerun with another seed, k, temperature or model used to score the first run's candidates against the new
regions and report them as already done. Now it refuses in one line naming what changed, and ``--fresh``
starts clean. Runs through the real CLI with the tiny local Qwen2-VL and the real MiniLM scorer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from candidates_factory import write_candidates
from helpers import run_spr
from spr_plugin.core.errors import SPRError
from spr_plugin.core.manifest import Manifest, differences

spr = run_spr


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


def test_differences_name_each_changed_setting():
    old = {"config": {"seed": 0, "k": 4}, "annotations": "sha256:" + "a" * 64}
    new = {"config": {"seed": 1, "k": 4, "extra": True}, "annotations": "sha256:" + "b" * 64}
    assert differences(old, new) == [
        "annotations sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb",
        "config.extra <unset> -> true",
        "config.seed 0 -> 1",
    ]


def test_outputs_without_a_record_are_refused_and_fresh_removes_only_covered_files(tmp_path):
    out = tmp_path / "candidates.jsonl"
    out.write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    m = Manifest(tmp_path / "manifest.json", {"candidates": [out]})
    with pytest.raises(SPRError, match="no record of how it was made"):
        m.check({"candidates": {"seed": 0}}, what="work dir")
    assert m.reset() == [out]
    m.check({"candidates": {"seed": 0}}, what="work dir")  # nothing left to reuse
    m.record({"candidates": {"seed": 0}})
    out.write_text("{}\n")
    m.check({"candidates": {"seed": 0}}, what="work dir")
    with pytest.raises(SPRError, match=r"changed: candidates.seed 0 -> 1"):
        m.check({"candidates": {"seed": 1}}, what="work dir")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    out.unlink()
    out.symlink_to(tmp_path / "notes.txt")  # a link of the user's where an output goes: --fresh removes nothing
    with pytest.raises(SPRError, match="is a symlink"):
        m.reset()
    assert out.is_symlink() and (tmp_path / "manifest.json").is_file() and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def gen_build(synthetic_scenes, tiny_qwen2vl, tmp_path_factory):
    """One build that generates with the tiny model; later tests rerun it in the same work dir."""
    tmp = tmp_path_factory.mktemp("resume")

    def run(*extra, model=tiny_qwen2vl):
        return spr(
            "build", "--annotations", synthetic_scenes, "--images", synthetic_scenes.parent / "images",
            "--model", model, "--work-dir", tmp / "work", "--dataset-dir", tmp / "data", "--name", "resume_ds",
            "--max-regions", 2, "--k", 3, "--num-samples", 2, "--variants", "box_text", "--max-new-tokens", 8,
            "--min-margin", 0, "--overwrite", *extra,
        )  # fmt: skip

    first = run()
    assert (tmp / "work" / "manifest.json").is_file() and (tmp / "work" / "candidates.jsonl").is_file(), first.stderr
    return tmp, run


def _summary(tmp: Path) -> dict:
    return json.loads((tmp / "work" / "summary.json").read_text())


def test_same_settings_resume(gen_build):
    tmp, run = gen_build
    before = (tmp / "work" / "candidates.jsonl").read_text()
    again = run()
    assert "Traceback" not in again.stderr
    gen = _summary(tmp)["generation"]
    assert gen["generated"] == 0 and gen["already_done"] == 4
    assert (tmp / "work" / "candidates.jsonl").read_text() == before


@pytest.mark.parametrize(
    "flags, changed",
    [
        (["--seed", "1"], "regions.config.seed 0 -> 1"),
        (["--k", "2"], "regions.config.k 3 -> 2"),
        (["--temperature", "0.5"], "candidates.generation.temperature 0.9 -> 0.5"),
        (["--lam", "0.5"], "pairs.scoring.lam 0.8 -> 0.5"),
        (["--virtual-objects", "drop"], "regions.config.virtual_objects"),
    ],
)
def test_other_settings_refuse_in_one_line(gen_build, flags, changed):
    tmp, run = gen_build
    before = (tmp / "work" / "candidates.jsonl").read_text()
    line = one_line_error(run(*flags), "was made with other settings", changed, "--fresh")
    assert "spr build: error:" in line
    assert (tmp / "work" / "candidates.jsonl").read_text() == before  # nothing touched


def test_another_model_refuses(gen_build, tiny_qwen2vl):
    tmp, run = gen_build
    alias = tmp / "same-weights-other-name"
    if not alias.exists():
        alias.symlink_to(tiny_qwen2vl, target_is_directory=True)
    one_line_error(run(model=alias), "candidates.generation.model")


def test_fresh_starts_over(gen_build):
    tmp, run = gen_build
    proc = run("--seed", "1", "--fresh")
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 2), proc.stderr
    manifest = json.loads((tmp / "work" / "manifest.json").read_text())
    assert manifest["stages"]["regions"]["config"]["seed"] == 1
    gen = _summary(tmp)["generation"]
    assert gen["already_done"] == 0 and gen["generated"] == 4
    run("--seed", "1")  # and the new settings resume
    assert _summary(tmp)["generation"]["already_done"] == 4


def test_candidates_file_builds_track_the_files_content(synthetic_scenes, tmp_path):
    from spr_plugin.pipeline import build_dataset, build_regions
    from spr_plugin.settings import BuildConfig

    cfg = BuildConfig(
        annotations=synthetic_scenes, image_root=synthetic_scenes.parent / "images", work_dir=tmp_path / "work",
        dataset_dir=tmp_path / "data", name="files_ds", candidates_file=tmp_path / "c.jsonl", progress=False, overwrite=True,
    )  # fmt: skip
    build_regions(cfg)
    write_candidates(tmp_path / "work" / "regions.jsonl", tmp_path / "c.jsonl")
    build_dataset(cfg)
    build_dataset(cfg)  # unchanged: fine
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write(json.dumps({"region_id": "x", "text": "y"}) + "\n")
    with pytest.raises(SPRError, match=r"candidates.files"):
        build_dataset(cfg)


def test_spr_generate_refuses_to_append_with_other_settings(synthetic_scenes, tiny_qwen2vl, tmp_path):
    regions = tmp_path / "regions.jsonl"
    p = spr("regions", "--annotations", synthetic_scenes, "--images", synthetic_scenes.parent / "images", "--out", regions,
            "--max-regions", 1, "--k", 3)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = tmp_path / "cands.jsonl"
    base = ["generate", "--regions", regions, "--model", tiny_qwen2vl, "--out", out, "--num-samples", 1,
            "--variants", "box_text", "--max-new-tokens", 4, "--no-progress",
            "--images", synthetic_scenes.parent / "images"]  # fmt: skip
    assert spr(*base).returncode == 0
    one_line_error(spr(*base, "--temperature", "0.3"), "candidates file", "generation.temperature 0.9 -> 0.3", "--fresh")
    one_line_error(spr(*base, "--seed", "7"), "generation.seed 0 -> 7")
    again = spr(*base, "--batch-size", "2")  # speed settings are not part of the fingerprint
    assert again.returncode == 0 and json.loads(again.stdout)["already_done"] == 1
    fresh = spr(*base, "--temperature", "0.3", "--fresh")
    assert fresh.returncode == 0 and json.loads(fresh.stdout)["generated"] == 1


def test_eval_results_are_not_reused_for_another_model_or_prompt(tiny_qwen2vl, synthetic_scenes, tmp_path):
    from spr_plugin.evaluation.rec_data import rec_items_from_detections, write_rec_jsonl

    ann = write_rec_jsonl(
        tmp_path / "rec.jsonl", rec_items_from_detections(synthetic_scenes, synthetic_scenes.parent / "images")[:2]
    )
    out = tmp_path / "r.json"
    base = ["eval", "rec", "--annotations", ann, "--images", synthetic_scenes.parent / "images", "--out", out,
            "--max-new-tokens", 4, "--quiet"]  # fmt: skip
    assert spr(*base, "--model", tiny_qwen2vl).returncode == 0
    alias = tmp_path / "other-model"
    alias.symlink_to(tiny_qwen2vl, target_is_directory=True)
    one_line_error(spr(*base, "--model", alias), "results file", "results.model")
    one_line_error(spr(*base, "--model", tiny_qwen2vl, "--prompt", "Where is {expression}?"), "results.prompt")
    fresh = spr(*base, "--model", alias, "--fresh")
    assert fresh.returncode == 0 and "(0 reused" in fresh.stdout
