"""The tiny local Qwen3-VL, InternVL and GLM-4.1V: the families' real classes and special tokens, rebuilt idempotently, and
the image a generator shows them is the image LLaMA-Factory trains them on (same tokens, same tiling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from candidates_factory import build_family_dataset
from spr_plugin.families.profiles import get_box_format, get_profile
from spr_plugin.families.prompts import Prompt
from spr_plugin.generation.transformers_backend import encode_prompts
from spr_plugin.testing.tiny_families import TINY_BUILDERS

FIXTURES = {"qwen3_vl": "tiny_qwen3vl", "internvl": "tiny_internvl", "glm4v": "tiny_glm4v"}
CLASSES = {
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLForConditionalGeneration"),
    "internvl": ("InternVLProcessor", "InternVLForConditionalGeneration"),
    "glm4v": ("Glm4vProcessor", "Glm4vForConditionalGeneration"),
}
FRAME = 12544  # the CPU recipes' image_max_pixels


@pytest.fixture(params=list(FIXTURES))
def family(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(FIXTURES[request.param])


def test_loads_with_auto_classes_and_keeps_grounding_tokens_whole(family):
    name, model_dir = family
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    assert (type(processor).__name__, type(model).__name__) == CLASSES[name]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    tok = processor.tokenizer
    assert tok.eos_token == ("<|endoftext|>" if name == "glm4v" else "<|im_end|>") and tok.pad_token == "<|endoftext|>"
    assert model.config.image_token_id == processor.image_token_id
    for token in get_profile(name).grounding_tokens:
        ids = tok.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == token
    fmt = get_box_format(name)
    from helpers import region

    reg = region()
    answer = "The region shows " + fmt.render("red circle", reg.objects[0].box, reg.width, reg.height) + "."
    assert tok.decode(tok.encode(answer, add_special_tokens=False), skip_special_tokens=False) == answer


def test_rebuild_is_reused_and_a_foreign_folder_is_refused(family, tmp_path):
    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS

    name, model_dir = family
    weights = model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert TINY_BUILDERS[name](model_dir, corpus=[*CATEGORY_NAMES, *SCENE_WORDS]) == model_dir
    assert weights.stat().st_mtime_ns == mtime
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        TINY_BUILDERS[name](tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "not a model"


def test_qwen3vl_processor_works_in_32_pixel_multiples(tiny_qwen3vl):
    processor = AutoProcessor.from_pretrained(tiny_qwen3vl)
    assert processor.image_processor.patch_size == 16 and processor.image_processor.merge_size == 2
    for size in ((333, 177), (64, 640), (100, 100)):
        _, h, w = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert (h * 16) % 32 == 0 and (w * 16) % 32 == 0


@pytest.fixture(scope="module")
def family_datasets(tmp_path_factory) -> dict[str, Path]:
    return {name: build_family_dataset(tmp_path_factory.mktemp(name), name, f"spr_{name}", FRAME)[0] for name in FIXTURES}


def test_generation_shows_the_image_as_llamafactory_trains_on_it(family, family_datasets, tmp_path):
    """The one-frame guarantee per family: the prompt SPR samples with and LLaMA-Factory's tokenization of the DPO
    record hold the same number of image tokens (for InternVL: the same tiling, one tile, not the processor's 13)."""
    from llamafactory.train.test_utils import load_dataset_module

    name, model_dir = family
    data = family_datasets[name]
    module = load_dataset_module(
        stage="rm",
        model_name_or_path=str(model_dir),
        do_train=True,
        finetuning_type="lora",
        dataset=f"spr_{name}",
        dataset_dir=str(data),
        template=get_profile(name).template,
        cutoff_len=1024,
        image_max_pixels=FRAME,
        overwrite_cache=True,
        output_dir=str(tmp_path / "out"),
        report_to="none",
        bf16=False,
    )
    ds = module["train_dataset"]
    record = json.loads((data / f"spr_{name}.jsonl").read_text().splitlines()[0])
    processor = AutoProcessor.from_pretrained(model_dir)
    image_id = processor.image_token_id
    trained = ds[0]["chosen_input_ids"].count(image_id)
    prompt = Prompt("box_text", record["conversations"][0]["value"], (str(data / record["images"][0]),))
    sampled = int((encode_prompts(processor, [prompt], "cpu", FRAME, 1024)["input_ids"] == image_id).sum())
    assert trained == sampled > 0
    chosen = processor.tokenizer.decode(ds[0]["chosen_input_ids"], skip_special_tokens=False)
    assert record["chosen"]["value"] in chosen  # the family's answer syntax reaches the model unchanged


def test_generation_pre_resizes_as_the_family_plugin_of_llamafactory(family):
    """InternVL's plugin has only the pixel bounds; the Qwen2-VL plugin family (Qwen3-VL, GLM) also raises sides to
    28 pixels and caps the aspect ratio. The image a generator shows must be the one LLaMA-Factory trains on."""
    from llamafactory.data.template import TEMPLATES

    from spr_plugin.families.profiles import qwen_resize_rules
    from spr_plugin.generation.transformers_backend import load_model_input

    name, model_dir = family
    processor = AutoProcessor.from_pretrained(model_dir)
    plugin = TEMPLATES[get_profile(name).template].mm_plugin
    assert qwen_resize_rules(processor) is get_profile(name).qwen_resize_rules
    for size in ((20, 60), (6000, 20), (33, 33), (640, 480), (1, 300)):
        for bounds in ((FRAME, 1024), (768 * 768, 32 * 32)):
            image = Image.new("L", size)
            theirs = plugin._preprocess_image(image, image_max_pixels=bounds[0], image_min_pixels=bounds[1])
            ours = load_model_input(image, *bounds, qwen_resize_rules(processor))
            assert ours.size == theirs.size and ours.mode == theirs.mode == "RGB", (name, size, bounds)


def test_gpu_recipes_are_accepted_by_llamafactory(family, family_datasets, tmp_path):
    """Every key of the family's GPU recipe parses in LLaMA-Factory (unknown keys raise); only the model, the data
    folder and the precision are swapped for what this CPU machine has."""
    import yaml
    from llamafactory.hparams import get_train_args

    name, model_dir = family
    stem = {"qwen3_vl": "spr_qwen3vl", "internvl": "spr_internvl", "glm4v": "spr_glm4v"}[name]
    args = yaml.safe_load((Path(__file__).resolve().parents[1] / f"recipes/{stem}.yaml").read_text())
    args.update(
        model_name_or_path=str(model_dir),
        dataset_dir=str(family_datasets[name]),
        dataset=f"spr_{name}",
        bf16=False,
        output_dir=str(tmp_path / "out"),
    )
    _, data_args, _, finetuning_args, _ = get_train_args(args)
    assert finetuning_args.stage == "dpo" and finetuning_args.pref_loss == "sigmoid"
    assert data_args.template == get_profile(name).template
