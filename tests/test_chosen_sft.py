"""The chosen-only SFT companion every build registers (the paper's ablation): its records, LLaMA-Factory's
own loader and trainer on it, clashes refused before anything is written, the SFT recipes, LlamaBoard's hint."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from candidates_factory import write_candidates
from helpers import run_spr
from spr_plugin.demo.scenes import render_scenes
from spr_plugin.llamafactory.registry import build_entries, chosen_sft_entry, ranking_entry
from spr_plugin.llamafactory.webui import stage_hint

ROOT = Path(__file__).resolve().parents[1]
NAME = "spr_c"  # the builds of this file
BUILT = "spr_built"  # the shared build


def _build(tmp: Path, data: Path, name: str = NAME, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    scenes = tmp / "scenes" / "instances.json"
    if not scenes.is_file():
        render_scenes(tmp / "scenes", n_images=4, seed=21)
        run_spr("regions", "--annotations", scenes, "--images", scenes.parent / "images", "--out", tmp / "r.jsonl")
        write_candidates(tmp / "r.jsonl", tmp / "c.jsonl")
    cmd = ["build", "--annotations", scenes, "--images", scenes.parent / "images", "--candidates", tmp / "c.jsonl"]
    cmd += ["--work-dir", tmp / "work", "--dataset-dir", data, "--name", name, "--min-margin", "0", *extra]
    return run_spr(*cmd)


@pytest.fixture(scope="module")
def built(built_dataset) -> Path:
    """The shared build (conftest.built_dataset): a data dir with a user's own entry and both of ours."""
    assert built_dataset.name == BUILT
    return built_dataset.data


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_registers_the_chosen_only_sft_companion(built):
    info = json.loads((built / "dataset_info.json").read_text())
    assert info["users_own"] == {"file_name": "users_own.json"}
    assert info[BUILT] == ranking_entry(f"{BUILT}.jsonl")
    assert info[f"{BUILT}_chosen"] == chosen_sft_entry(f"{BUILT}_chosen.jsonl")
    assert "ranking" not in info[f"{BUILT}_chosen"]  # SFT: listed under LlamaBoard's default stage
    meta = json.loads((built / f"{BUILT}_chosen.spr.json").read_text())  # spr check-recipe checks SFT recipes too
    assert meta == {**json.loads((built / f"{BUILT}.spr.json").read_text()), "chosen_only_of": BUILT}
    pairs, sft = _lines(built / f"{BUILT}.jsonl"), _lines(built / f"{BUILT}_chosen.jsonl")
    assert len(pairs) == len(sft) > 0
    for pair, rec in zip(pairs, sft):
        assert rec == {"conversations": [*pair["conversations"], pair["chosen"]], "images": pair["images"]}
        assert [m["from"] for m in rec["conversations"]] == ["human", "gpt"]


def test_llamafactory_loads_the_chosen_sft_dataset(built, tiny_qwen2vl, tmp_path):
    from llamafactory.train.test_utils import load_dataset_module
    from transformers import AutoTokenizer

    module = load_dataset_module(
        stage="sft",
        model_name_or_path=str(tiny_qwen2vl),
        do_train=True,
        finetuning_type="lora",
        dataset=f"{BUILT}_chosen",
        dataset_dir=str(built),
        template="qwen2_vl",
        cutoff_len=1024,
        image_max_pixels=12544,
        overwrite_cache=True,
        output_dir=str(tmp_path / "out"),
        report_to="none",
        bf16=False,
    )
    ds = module["train_dataset"]
    records = _lines(built / f"{BUILT}_chosen.jsonl")
    assert len(ds) == len(records)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2vl)
    labels = [t for t in ds[0]["labels"] if t >= 0]  # the supervised part: the chosen answer only
    assert records[0]["conversations"][1]["value"][:40] in tok.decode(labels)
    assert "<|image_pad|>" in tok.decode(ds[0]["input_ids"]) and "<|image_pad|>" not in tok.decode(labels)


def test_a_clashing_chosen_entry_refuses_the_build_before_anything_is_written(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    mine = {f"{NAME}_chosen": {"file_name": "mine.json"}}
    (data / "dataset_info.json").write_text(json.dumps(mine))
    proc = _build(tmp_path, data)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"spr build: error: dataset '{NAME}_chosen' is already registered in {data / 'dataset_info.json'} for "
        f"'mine.json', not for spr's {NAME}_chosen.jsonl; spr never replaces an entry it did not write (not even with "
        "--overwrite): choose another --name"
    ]
    assert json.loads((data / "dataset_info.json").read_text()) == mine
    assert not (data / f"{NAME}.jsonl").exists() and not (data / f"{NAME}_chosen.jsonl").exists()


def test_an_existing_chosen_file_is_not_overwritten(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / f"{NAME}_chosen.jsonl").write_text("precious\n")
    proc = _build(tmp_path, data)
    assert proc.returncode == 2 and "already exists and spr did not write it" in proc.stderr
    assert (data / f"{NAME}_chosen.jsonl").read_text() == "precious\n"
    # --overwrite replaces only what spr wrote: the user's file is still refused, and still there
    proc = _build(tmp_path, data, extra=("--overwrite",))
    assert proc.returncode == 2 and "already exists and spr did not write it" in proc.stderr
    assert (data / f"{NAME}_chosen.jsonl").read_text() == "precious\n"
    (data / f"{NAME}_chosen.jsonl").unlink()
    assert _build(tmp_path, data, extra=("--overwrite",)).returncode == 0
    assert (data / f"{NAME}_chosen.jsonl").read_text() != "precious\n"


def test_sft_recipes_name_the_registered_companions_and_parse_in_llamafactory(built, tiny_qwen2vl, tmp_path):
    from llamafactory.hparams import get_train_args

    entries = json.loads((ROOT / "recipes/dataset_info.json").read_text())
    for dpo_name in ("spr_qwen2vl", "spr_demo"):
        assert {k: entries[k] for k in build_entries(dpo_name)} == build_entries(dpo_name)
    for recipe_file, dpo_recipe_file in (
        ("spr_qwen2vl_chosen_sft.yaml", "spr_qwen2vl.yaml"),
        ("spr_qwen2vl_chosen_sft_cpu_demo.yaml", "spr_qwen2vl_cpu_demo.yaml"),
    ):
        recipe = yaml.safe_load((ROOT / "recipes" / recipe_file).read_text())
        dpo = yaml.safe_load((ROOT / "recipes" / dpo_recipe_file).read_text())
        assert recipe["stage"] == "sft" and recipe["dataset"] == dpo["dataset"] + "_chosen"
        assert entries[recipe["dataset"]] == chosen_sft_entry(f"{recipe['dataset']}.jsonl")
        # the ablation differs from its DPO recipe only in the objective: same model, frame, LoRA and rate
        for key in ("model_name_or_path", "image_max_pixels", "lora_rank", "learning_rate", "template", "dataset_dir"):
            assert recipe[key] == dpo[key], key
        args = {**recipe, "model_name_or_path": str(tiny_qwen2vl), "dataset_dir": str(built), "dataset": f"{BUILT}_chosen"}
        args.update(bf16=False, output_dir=str(tmp_path / "out"))
        _, data_args, _, finetuning_args, _ = get_train_args(args)
        assert finetuning_args.stage == "sft" and data_args.dataset == [f"{BUILT}_chosen"]


def test_check_recipe_checks_the_sft_recipe_against_the_companion(built, tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes/spr_qwen2vl_chosen_sft_cpu_demo.yaml").read_text())
    for frame, ok in ((768 * 768, True), (recipe["image_max_pixels"], False)):  # the build used the default frame
        path = tmp_path / f"sft_{frame}.yaml"
        path.write_text(yaml.safe_dump({**recipe, "dataset": f"{BUILT}_chosen", "image_max_pixels": frame}))
        proc = run_spr("check-recipe", path, "--dataset-dir", built)
        assert (proc.returncode == 0) is ok, proc.stderr
        assert (f"{BUILT}_chosen: frame" in proc.stdout) if ok else ("image frame mismatch" in proc.stderr)


@pytest.mark.slow
def test_llamafactory_cli_trains_the_chosen_sft_recipe(built, tiny_qwen2vl, tmp_path):
    from spr_plugin.llamafactory.train import run_train

    out = tmp_path / "sft"
    overrides = {"model_name_or_path": tiny_qwen2vl, "dataset_dir": built, "dataset": f"{BUILT}_chosen"}
    overrides.update(output_dir=out, max_steps=2, logging_steps=1, preprocessing_num_workers=1)
    run_train(ROOT / "recipes/spr_qwen2vl_chosen_sft_cpu_demo.yaml", overrides, log_path=tmp_path / "train.log", echo=False)
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "train_results.json").read_text())["train_loss"] > 0


def test_stage_hint_says_which_stage_lists_which_dataset(built):
    hint = stage_hint(json.loads((built / "dataset_info.json").read_text()))
    assert hint.splitlines() == [
        f"Stage Supervised Fine-Tuning (the default) lists: {BUILT}_chosen, users_own",
        f"Stage DPO (or Reward Modeling) lists: {BUILT}",
    ]
    assert "lists nothing here" in stage_hint({"a": ranking_entry("a.jsonl")})
