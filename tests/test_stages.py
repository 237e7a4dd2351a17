"""The stage API (#19): one function per stage, called by the commands; one model runner; one placeholder splitter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spr_plugin.cli import main
from spr_plugin.core.errors import SPRError
from spr_plugin.core.sharegpt import IMAGE_TOKEN, content_parts
from spr_plugin.regions.sampling import RegionConfig, sample_regions_stage


def test_spr_regions_writes_what_the_regions_stage_returns(synthetic_scenes: Path, tmp_path: Path, capsys) -> None:
    images = synthetic_scenes.parent / "images"
    out = tmp_path / "regions.jsonl"
    assert main(["regions", "--annotations", str(synthetic_scenes), "--images", str(images), "--out", str(out), "--k", "3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    regions, stats = sample_regions_stage(RegionConfig(k=3), synthetic_scenes, images)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == [r.to_dict() for r in regions] and len(written) > 0
    assert printed == stats.to_dict()


def test_the_regions_stage_refuses_in_one_line(synthetic_scenes: Path, tmp_path: Path) -> None:
    with pytest.raises(SPRError, match="image folder not found"):
        sample_regions_stage(RegionConfig(), synthetic_scenes, tmp_path / "nowhere")
    with pytest.raises(SPRError, match="no query region could be sampled"):  # no scene holds more than 99 objects
        sample_regions_stage(RegionConfig(k=99), synthetic_scenes, synthetic_scenes.parent / "images")


def test_content_parts_keeps_the_order_of_text_and_images_and_counts_them() -> None:
    text = f"{IMAGE_TOKEN}Describe {IMAGE_TOKEN} and{IMAGE_TOKEN}"
    parts = content_parts(text, lambda i: {"type": "image", "index": i}, n_images=3)
    assert parts == [
        {"type": "image", "index": 0},
        {"type": "text", "text": "Describe "},
        {"type": "image", "index": 1},
        {"type": "text", "text": " and"},
        {"type": "image", "index": 2},
    ]
    with pytest.raises(ValueError, match="2 images"):
        content_parts(text, lambda i: {"type": "image"}, n_images=2)


def test_generation_and_evaluation_run_the_same_model_runner(tiny_qwen2vl: Path, synthetic_scenes: Path) -> None:
    """Greedy candidates and greedy evaluation answers of one prompt agree: one loader, encoder and decoder."""
    from spr_plugin.evaluation.model import load_model
    from spr_plugin.evaluation.runner import generate_greedy
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.families.prompts import Prompt, training_prompt
    from spr_plugin.generation.backends import make_generator
    from spr_plugin.generation.model_runner import ModelRunner
    from spr_plugin.settings import GenerationConfig

    regions, _ = sample_regions_stage(RegionConfig(k=3, max_regions=2), synthetic_scenes, synthetic_scenes.parent / "images")
    fmt = get_box_format("qwen2_vl")
    prompts = [Prompt("box_text", training_prompt(r, fmt), (r.image_path,)) for r in regions]
    gen = make_generator(GenerationConfig(model=str(tiny_qwen2vl), greedy=True, num_samples=1, max_new_tokens=12))
    assert isinstance(gen.runner, ModelRunner)
    sampled = [texts[0] for texts in gen.generate(prompts, [0] * len(prompts))]
    loaded = load_model(tiny_qwen2vl)
    assert isinstance(loaded, ModelRunner) and loaded.name == str(tiny_qwen2vl)
    assert generate_greedy(loaded, prompts, 12) == sampled


def test_one_resumable_results_file_keeps_finished_keys_and_drops_a_torn_line(tmp_path: Path) -> None:
    from spr_plugin.core.resumable import ResumableJsonl

    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a", "v": 1}\n{"id": "b", "v": 2}\n{"id": "c", "v"')  # killed mid-line
    results = ResumableJsonl(path, lambda r: str(r["id"]), lambda d: d, what="result")
    assert set(results.done) == {"a", "b"}
    with results as sink:
        sink.write({"id": "c", "v": 3}, {"id": "c", "v": 3})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    assert set(ResumableJsonl(path, lambda r: str(r["id"]), lambda d: d, what="result").done) == {"a", "b", "c"}
