"""TRL's own DPOTrainer on the parquet of `spr export-hf`, with spr_plugin.trl.dpo (trl 0.24 + transformers 5.6):
the import fix, log-probabilities equal to the model's own encoding of the same rows, the example script training
a LoRA adapter for a few real steps, and the refusals that replace crashes deep inside the forward pass."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from candidates_factory import write_candidates
from helpers import run_spr
from spr_plugin.core.errors import SPRError
from spr_plugin.demo.scenes import render_scenes
from spr_plugin.families.prompts import PROMPT_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
NAME = "spr_trl"
FRAME = 12544  # the tiny model's processor budget: LLaMA-Factory's pre-resize and smart_resize then agree


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> Path:
    """`spr build --candidates` on rendered scenes in the frame the tests train in, then `spr export-hf`."""
    tmp = tmp_path_factory.mktemp("trl_dpo")
    scenes = render_scenes(tmp / "scenes", n_images=4, seed=5)
    common = ["--annotations", scenes, "--images", scenes.parent / "images"]
    assert run_spr("regions", *common, "--out", tmp / "r.jsonl").returncode == 0
    write_candidates(tmp / "r.jsonl", tmp / "c.jsonl")
    build = [*common, "--candidates", tmp / "c.jsonl", "--work-dir", tmp / "w", "--dataset-dir", tmp / "data", "--name", NAME]
    build += ["--min-margin", "0", "--image-max-pixels", FRAME]
    assert run_spr("build", *build).returncode == 0
    export = ["--dataset-dir", tmp / "data", "--name", NAME, "--out", tmp / "hf"]  # the frame comes from <name>.spr.json
    proc = run_spr("export-hf", *export)
    assert proc.returncode == 0, proc.stderr
    return tmp / "hf" / f"{NAME}.parquet"


def _load(parquet: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset("parquet", data_files=str(parquet), split="train", cache_dir=str(tmp_path / "cache"))


def test_import_trl_fixes_only_trls_own_flags():
    import transformers.utils.import_utils as tf_import_utils

    before = tf_import_utils._is_package_available
    from spr_plugin.trl.dpo import import_trl

    trl = import_trl()
    from trl import import_utils

    assert trl.DPOTrainer and trl.GRPOTrainer  # the import that failed with "No module named 'mergekit'"
    assert import_utils.is_mergekit_available() is False and import_utils.is_deepspeed_available() is False
    assert tf_import_utils._is_package_available is before  # transformers is left alone


def test_the_parquet_records_box_format_frame_and_prompt_template(parquet, tmp_path):
    ds = _load(parquet, tmp_path)
    assert {"box_format", "image_max_pixels", "image_min_pixels", "template", "prompt_template"} <= set(ds.column_names)
    for row in ds:
        assert (row["box_format"], row["image_max_pixels"], row["image_min_pixels"]) == ("qwen2_vl", FRAME, 32 * 32)
        assert row["template"] == "qwen2_vl"
        assert row["prompt_template"] == PROMPT_TEMPLATE
        prompt = row["prompt"][0]["content"][1]["text"]
        assert prompt.startswith("Describe the region <|box_start|>(") and prompt.endswith("bounding box.")


def _vary_image_sizes(ds):
    """Odd rows get a narrower image, so rows differ in patch and image-token counts (padding and the order of
    concatenated patches are then exercised)."""

    def narrow(row, i):
        if i % 2:
            im = row["images"][0]
            row["images"] = [im.resize((im.width // 3, im.height))]
        return row

    return ds.map(narrow, with_indices=True)


def test_adapter_log_probs_equal_the_models_own_encoding(parquet, tiny_qwen2vl, tmp_path):
    """Chosen and rejected log-probabilities through TRL's batched, padded, concatenated forward equal a forward
    pass on the processor's own encoding of each row (pixel values, grid, mm_token_type_ids), row by row."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from spr_plugin.trl.dpo import Qwen2VLDPOTrainer, import_trl, preprocess_images

    trl = import_trl()
    ds = _vary_image_sizes(_load(parquet, tmp_path))
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2vl).eval()
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "out"), max_prompt_length=None, max_length=None, report_to="none", use_cpu=True
    )
    trainer = Qwen2VLDPOTrainer(model, args=args, train_dataset=ds, processing_class=processor)
    rows = [trainer.train_dataset[i] for i in range(len(ds))]
    assert len({len(r["prompt_input_ids"]) for r in rows}) > 1  # the batch really is padded
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        out = trainer.concatenated_forward(trainer.model, batch)
    for i, row in enumerate(ds):
        images = preprocess_images(row["images"], row["image_max_pixels"], row["image_min_pixels"])
        text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        enc = processor(text=[text], images=images, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == rows[i]["prompt_input_ids"]
        for side in ("chosen", "rejected"):
            answer = torch.tensor([rows[i][f"{side}_input_ids"]])
            ids = torch.cat([enc["input_ids"], answer], 1)
            types = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(answer)], 1)
            with torch.no_grad():
                logits = model(
                    input_ids=ids, pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=types
                ).logits
            logps = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            expected = logps[enc["input_ids"].shape[1] - 1 :].sum()
            assert torch.allclose(out[f"{side}_logps"][i], expected, rtol=1e-4, atol=1e-3), (i, side)


@pytest.mark.slow  # trains (TRL example script in a subprocess)
def test_example_script_trains_a_lora_adapter_with_trls_dpo_trainer(parquet, tiny_qwen2vl, tmp_path):
    out = tmp_path / "dpo"
    cmd = [sys.executable, str(ROOT / "recipes/trl_dpo_qwen2vl.py"), "--model", str(tiny_qwen2vl), "--data", str(parquet)]
    cmd += ["--output-dir", str(out), "--max-steps", "3", "--batch-size", "2", "--grad-accum", "1", "--learning-rate", "1e-3"]
    cmd += ["--logging-steps", "1", "--cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file()
    log = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in log] == [1, 2, 3]
    assert all(e["logps/chosen"] < 0 and e["logps/rejected"] < 0 for e in log)
    assert log[-1]["loss"] < log[0]["loss"]  # lr 1e-3 on 4 pairs: the preference margin grows within 3 steps
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and "language_model" in adapter["target_modules"]


def test_a_prompt_longer_than_max_prompt_length_is_refused_not_cut(parquet, tiny_qwen2vl, tmp_path):
    from transformers import AutoProcessor

    from spr_plugin.trl.dpo import Qwen2VLDPOTrainer, import_trl

    trl = import_trl()
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    ds = _load(parquet, tmp_path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), max_prompt_length=16, max_length=None, report_to="none", use_cpu=True)
    with pytest.raises(SPRError, match=r"prompt has \d+ tokens .* max_prompt_length is 16"):
        Qwen2VLDPOTrainer(str(tiny_qwen2vl), args=args, train_dataset=ds, processing_class=processor)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), max_prompt_length=None, max_length=64, report_to="none", use_cpu=True)
    with pytest.raises(SPRError, match="truncation_mode 'keep_end' would cut the image tokens"):
        Qwen2VLDPOTrainer(str(tiny_qwen2vl), args=args, train_dataset=ds, processing_class=processor)


def test_answers_with_a_media_token_are_refused(parquet, tiny_qwen2vl, tmp_path):
    """Qwen2-VL counts every <|image_pad|> as an image placeholder: one in an answer fails the forward pass."""
    from transformers import AutoProcessor

    from spr_plugin.trl.dpo import Qwen2VLDPOTrainer, import_trl

    trl = import_trl()
    ds = _load(parquet, tmp_path)

    def poison(row):
        row["rejected"] = [{"role": "assistant", "content": [{"type": "text", "text": "a <|image_pad|> square"}]}]
        return row

    args = trl.DPOConfig(
        output_dir=str(tmp_path / "out"), max_prompt_length=None, max_length=None, report_to="none", use_cpu=True
    )
    with pytest.raises(SPRError, match="an answer contains an image or video token"):
        Qwen2VLDPOTrainer(
            str(tiny_qwen2vl),
            args=args,
            train_dataset=ds.map(poison),
            processing_class=AutoProcessor.from_pretrained(tiny_qwen2vl),
        )


def test_rows_without_the_recorded_frame_are_refused(parquet, tiny_qwen2vl, tmp_path):
    from transformers import AutoProcessor

    from spr_plugin.trl.dpo import Qwen2VLDPOTrainer, import_trl

    trl = import_trl()
    ds = _load(parquet, tmp_path).remove_columns(["image_max_pixels", "image_min_pixels"])
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "out"), max_prompt_length=None, max_length=None, report_to="none", use_cpu=True
    )
    with pytest.raises(SPRError, match="no image_max_pixels, image_min_pixels column.*spr export-hf"):
        Qwen2VLDPOTrainer(
            str(tiny_qwen2vl), args=args, train_dataset=ds, processing_class=AutoProcessor.from_pretrained(tiny_qwen2vl)
        )
