"""Each supported family end to end on CPU with its tiny checkpoint and its shipped CPU recipe (#20): the tiny
model samples candidates with the family's processor and prompts, `spr build --box-format <family>` pairs them
(with scripted ones, so pairs are known to exist), `spr check-recipe` accepts the recipe, `llamafactory-cli train`
runs a few DPO steps, `spr eval rec` evaluates the adapter, and `spr export-hf` writes the TRL parquet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from candidates_factory import write_candidates
from helpers import run_spr
from spr_plugin.demo.scenes import render_scenes
from spr_plugin.families.profiles import get_box_format, get_profile
from spr_plugin.families.prompts import prompt_template

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "qwen3_vl": ("tiny_qwen3vl", "spr_qwen3vl"),
    "internvl": ("tiny_internvl", "spr_internvl"),
    "glm4v": ("tiny_glm4v", "spr_glm4v"),
}


def _rec_file(instances: Path, out: Path, n: int = 3) -> Path:
    """Our REC JSONL ({id, image, expression, box}) from the first objects of the scenes."""
    coco = json.loads(instances.read_text())
    images = {i["id"]: i["file_name"] for i in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    lines = []
    for a in coco["annotations"][:n]:
        x, y, w, h = a["bbox"]
        item = {"id": str(a["id"]), "image": images[a["image_id"]], "expression": names[a["category_id"]]}
        lines.append(json.dumps({**item, "box": [x, y, x + w, y + h]}))
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_builds_trains_evaluates_and_exports(name, request, tmp_path):
    import pyarrow.parquet as pq

    from spr_plugin.llamafactory.train import run_train

    fixture, stem = FAMILIES[name]
    model = request.getfixturevalue(fixture)
    recipe = yaml.safe_load((ROOT / f"recipes/{stem}_cpu_demo.yaml").read_text())
    frame = str(recipe["image_max_pixels"])
    scenes = render_scenes(tmp_path / "scenes", n_images=4, seed=5)
    images = scenes.parent / "images"
    regions = tmp_path / "regions.jsonl"
    assert run_spr("regions", "--annotations", scenes, "--images", images, "--out", regions).returncode == 0

    # the tiny model's own samples: the family's processor, chat template and three prompt variants
    sampled = tmp_path / "sampled.jsonl"
    proc = run_spr("generate", "--regions", regions, "--out", sampled, "--images", images, "--model", model, "--box-format", name,
                   "--num-samples", "2", "--max-new-tokens", "8", "--image-max-pixels", frame, "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["generated"] == len(sampled.read_text().splitlines()) > 0
    assert {json.loads(line)["variant"] for line in sampled.read_text().splitlines()} == {"box_text", "crop", "refs"}
    scripted = tmp_path / "scripted.jsonl"
    write_candidates(regions, scripted, box_format=name)

    data, out = tmp_path / "data", tmp_path / "lora"
    local = tmp_path / "recipe.yaml"
    overrides = {"model_name_or_path": str(model), "dataset_dir": str(data), "output_dir": str(out), "max_steps": 2}
    local.write_text(yaml.safe_dump({**recipe, **overrides, "logging_steps": 1}))
    proc = run_spr("build", "--annotations", scenes, "--images", images, "--candidates", sampled, scripted,
                   "--work-dir", tmp_path / "work", "--dataset-dir", data, "--name", stem, "--min-margin", "0",
                   "--box-format", name, "--image-max-pixels", frame, "--recipe", local)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((data / f"{stem}.spr.json").read_text())
    assert meta["box_format"] == name and meta["template"] == get_profile(name).template == recipe["template"]
    records = [json.loads(line) for line in (data / f"{stem}.jsonl").read_text().splitlines()]
    assert records and all(r["conversations"][0]["value"].startswith(prompt_template(name).split("{box}")[0]) for r in records)

    fmt = get_box_format(name)
    for r in records:  # what DPO teaches: no unusable box in a chosen answer, and Qwen3-VL's JSON stays JSON
        chosen = r["chosen"]["value"]
        parse = fmt.parse(chosen, 1000, 1000)
        assert parse.dropped == {} and not any(p.malformed for p in parse.phrases)
        if name == "qwen3_vl" and "```json" in chosen:
            json.loads(chosen.split("```json")[1].split("```")[0])

    check = run_spr("check-recipe", local)
    assert check.returncode == 0 and "match" in check.stdout, check.stderr

    log = tmp_path / "train.log"
    run_train(local, {"preprocessing_num_workers": 1}, log_path=log, echo=False)
    assert (out / "adapter_model.safetensors").is_file()
    loss = json.loads((out / "train_results.json").read_text())["train_loss"]
    assert math.isfinite(loss) and loss > 0 and "rewards/chosen" in log.read_text()

    report = tmp_path / "rec.json"
    proc = run_spr("eval", "rec", "--annotations", _rec_file(scenes, tmp_path / "rec.jsonl"), "--images", images,
                   "--model", model, "--adapter", out, "--box-format", name, "--recipe", local, "--image-max-pixels", frame,
                   "--max-new-tokens", "8", "--out", report, "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    assert result["summary"]["n"] == 3 and result["box_format"] == name and result["prompt"] == get_profile(name).rec_prompt

    parquet = tmp_path / "hf"
    assert run_spr("export-hf", "--dataset-dir", data, "--name", stem, "--out", parquet).returncode == 0
    table = pq.read_table(next(parquet.glob("*.parquet"))).to_pylist()
    assert len(table) == len(records)
    assert {(r["box_format"], r["template"], r["prompt_template"]) for r in table} == {
        (name, get_profile(name).template, prompt_template(name))
    }
