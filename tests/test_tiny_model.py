"""The locally built tiny Qwen2-VL: loads with the Auto classes, keeps Qwen's special tokens whole,
rebuilds idempotently and deterministically; the (slow) warm-up SFT teaches it to write boxes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from spr_plugin.demo.tiny_model import QWEN_SPECIAL_TOKENS, build_tiny_qwen2vl

PROMPT = (
    "Describe the region <|box_start|>(10,20),(500,600)<|box_end|> in detail. "
    "Ground every object you mention with a bounding box."
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _generate(model_dir: Path, image: Path, max_new_tokens: int = 24) -> str:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.open(image)], text=[text], return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=True, temperature=1.0, max_new_tokens=max_new_tokens)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 0 < new.numel() <= max_new_tokens
    return processor.tokenizer.decode(new, skip_special_tokens=False)


def test_loads_with_auto_classes_and_generates(tiny_qwen2vl, synthetic_scenes):
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2vl)
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    image = next((synthetic_scenes.parent / "images").glob("*.jpg"))
    assert isinstance(_generate(tiny_qwen2vl, image), str)


def test_special_tokens_are_single_tokens_and_match_the_config(tiny_qwen2vl):
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    tok = processor.tokenizer
    model_config = AutoModelForImageTextToText.from_pretrained(tiny_qwen2vl).config
    for token in QWEN_SPECIAL_TOKENS:
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == token
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model_config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model_config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    text = "The region shows <|object_ref_start|>red circle<|object_ref_end|><|box_start|>(12,345),(678,999)<|box_end|>."
    ids = tok.encode(text, add_special_tokens=False)
    for token in ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"):
        assert ids.count(tok.convert_tokens_to_ids(token)) == 1
    assert tok.decode(ids, skip_special_tokens=False) == text
    # Scene words are whole tokens, so short generations can still say something useful.
    assert len(tok.encode("red circle", add_special_tokens=False)) == 2


def test_chat_template_matches_qwen2vl(tiny_qwen2vl):
    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_rebuild_is_idempotent_and_deterministic(tiny_qwen2vl, tmp_path):
    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS

    weights = tiny_qwen2vl / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_tiny_qwen2vl(tiny_qwen2vl, corpus=[*CATEGORY_NAMES, *SCENE_WORDS]) == tiny_qwen2vl
    assert weights.stat().st_mtime_ns == mtime  # reused, not rebuilt

    again = build_tiny_qwen2vl(tmp_path / "again", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / name) == _sha(tiny_qwen2vl / name), name

    # Different arguments rebuild the same directory in place.
    build_tiny_qwen2vl(again, seed=1, corpus=[*CATEGORY_NAMES, *SCENE_WORDS])
    assert _sha(again / "model.safetensors") != _sha(tiny_qwen2vl / "model.safetensors")


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        build_tiny_qwen2vl(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "not a model"


@pytest.mark.slow
def test_warmup_sft_output_loads_and_generates(tiny_qwen2vl, synthetic_scenes, tmp_path):
    from spr_plugin.demo.warmup import warmup_sft

    out = warmup_sft(tiny_qwen2vl, synthetic_scenes, synthetic_scenes.parent / "images", tmp_path / "warm", steps=4)
    assert (out / "model.safetensors").is_file()
    assert _sha(out / "model.safetensors") != _sha(tiny_qwen2vl / "model.safetensors")
    image = next((synthetic_scenes.parent / "images").glob("*.jpg"))
    assert isinstance(_generate(out, image), str)


@pytest.mark.slow
def test_warmup_failure_raises_with_log_tail(synthetic_scenes, tmp_path):
    from spr_plugin.core.errors import SPRError
    from spr_plugin.demo.warmup import warmup_sft

    with pytest.raises(SPRError, match="llamafactory-cli train failed") as err:
        warmup_sft(tmp_path / "no-such-model", synthetic_scenes, synthetic_scenes.parent / "images", tmp_path / "warm", steps=1)
    assert "no-such-model" in str(err.value)  # the log tail names the cause
    assert (tmp_path / "warm" / "_warmup" / "train.log").is_file()


def test_set_image_budget_changes_the_visual_token_count(tiny_qwen2vl, synthetic_scenes, tmp_path):
    """The processor cap decides how many merged visual tokens an image becomes (the effect study raises it)."""
    import shutil

    from spr_plugin.demo.tiny_model import set_image_budget

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_qwen2vl, model_dir)
    image = Image.open(next((synthetic_scenes.parent / "images").glob("*.jpg")))

    def merged_tokens() -> int:
        grid = AutoProcessor.from_pretrained(model_dir).image_processor(images=[image], return_tensors="pt")["image_grid_thw"]
        return int(grid.prod()) // 4

    assert merged_tokens() <= 16
    set_image_budget(model_dir, 28 * 28 * 64)
    assert 32 < merged_tokens() <= 64


def test_two_builders_of_one_folder_build_it_once(tmp_path):
    """The effect study starts tasks side by side that ask for the same tiny model: the second waits for the first
    and reuses its build instead of removing the folder the first is moving into place."""
    import threading

    from spr_plugin.demo.tiny_model import _REQUIRED_FILES, atomic_build

    out, started, calls = tmp_path / "model", threading.Event(), []

    def write(tmp):
        calls.append("first")
        started.set()
        time.sleep(1.0)  # the second builder arrives while this one is still writing
        for name in _REQUIRED_FILES:
            (tmp / name).write_text("{}")

    def second():
        started.wait()
        atomic_build(out, "digest", lambda tmp: calls.append("second"))

    other = threading.Thread(target=second)
    other.start()
    atomic_build(out, "digest", write)
    other.join()
    assert calls == ["first"] and (out / _REQUIRED_FILES[0]).is_file()
