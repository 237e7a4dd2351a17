"""The in-process back end batches for real: left padding, batched logits equal per-prompt logits,
calls bounded by max_batch_sequences, every candidate records variant, seed and temperature."""

from __future__ import annotations

import json

import pytest
import torch

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.options import VARIANTS
from spr_plugin.families.profiles import get_box_format
from spr_plugin.families.prompts import build_prompt
from spr_plugin.generation.candidates import generate_candidates, prompt_seed, read_candidates
from spr_plugin.generation.transformers_backend import TransformersGenerator, clean_output
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions
from spr_plugin.settings import GenerationConfig

FMT = get_box_format("qwen2_vl")


@pytest.fixture(scope="module")
def regions(synthetic_scenes):
    coco = load_coco(synthetic_scenes)
    return list(sample_regions(coco, synthetic_scenes.parent / "images", RegionConfig(regions_per_image=1)))


@pytest.fixture(scope="module")
def generator(tiny_qwen2vl):
    return TransformersGenerator(
        GenerationConfig(model=str(tiny_qwen2vl), num_samples=3, max_new_tokens=6, max_batch_sequences=7)
    )


def test_prompts_of_different_length_are_left_padded(generator, regions):
    prompts = [build_prompt("box_text", regions[0], FMT), build_prompt("crop", regions[0], FMT)]  # crop: 2 images, longer
    mask = generator.encode(prompts)["attention_mask"]
    assert generator.processor.tokenizer.padding_side == "left"
    assert mask[0, 0] == 0 and mask[1, 0] == 1  # the short prompt is padded on the left
    assert bool(mask[:, -1].all())  # every prompt ends at the right edge, where generation continues


def test_batched_next_token_logits_equal_per_prompt_logits(generator, regions):
    prompts = [build_prompt(v, r, FMT) for r in regions[:2] for v in VARIANTS]
    with torch.inference_mode():
        batched = generator.model(**generator.encode(prompts)).logits[:, -1]
        single = torch.cat([generator.model(**generator.encode([p])).logits[:, -1] for p in prompts])
    assert batched.shape == single.shape == (len(prompts), generator.model.config.text_config.vocab_size)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_calls_are_bounded_and_outputs_keep_prompt_order(generator, regions):
    prompts = [build_prompt("box_text", r, FMT) for r in regions[:5]]
    generator.calls.clear()
    out = generator.generate(prompts, [7])
    assert [len(texts) for texts in out] == [3] * 5 and all(isinstance(t, str) for texts in out for t in texts)
    assert generator.calls == [6, 6, 3]  # 7 // 3 = 2 prompts x 3 samples per call, then the rest
    generator.calls.clear()
    assert generator.generate(prompts, [7]) == out  # same seed, same batch: same samples


def test_more_samples_than_the_bound_split_into_several_calls(tiny_qwen2vl, regions):
    gen = TransformersGenerator(GenerationConfig(model=str(tiny_qwen2vl), num_samples=5, max_new_tokens=4, max_batch_sequences=2))
    out = gen.generate([build_prompt("refs", r, FMT) for r in regions[:2]], [1])
    assert [len(t) for t in out] == [5, 5]
    assert gen.calls == [2, 2, 1, 2, 2, 1]


def test_candidates_record_variant_seed_temperature_and_generator(generator, regions, tmp_path):
    out = tmp_path / "c.jsonl"
    stats = generate_candidates(
        regions[:2], generator, FMT, out, variants=VARIANTS, num_samples=3, batch_size=4, temperature=0.9, seed=11, progress=False
    )
    cands = read_candidates(out)
    assert stats.generated == len(cands) == 2 * len(VARIANTS) * 3 and stats.prompts == 6 and stats.regions == 2
    assert {c.variant for c in cands} == set(VARIANTS)
    assert {c.key for c in cands} == {(r.region_id, v, s) for r in regions[:2] for v in VARIANTS for s in range(3)}
    assert all(c.temperature == 0.9 and c.generator == generator.name for c in cands)
    # Batched sampling shares one RNG stream: each candidate records its batch's seed, the first prompt's.
    by_variant = {}
    for line in out.read_text().splitlines():
        d = json.loads(line)
        by_variant.setdefault(d["variant"], set()).add(d["seed"])
    first_of_batch = prompt_seed(11, regions[0].region_id, "box_text")
    assert by_variant["box_text"] == {first_of_batch}
    assert stats.to_dict()["candidates_per_second"] > 0


def test_special_tokens_survive_decoding_and_padding_is_cut():
    raw = (
        "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|><|endoftext|><|endoftext|>"
    )
    assert clean_output(raw) == "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"


def test_bad_generation_settings_are_config_errors(tiny_qwen2vl):
    with pytest.raises(ConfigError, match="max_batch_sequences"):
        GenerationConfig(model=str(tiny_qwen2vl), max_batch_sequences=0)
    with pytest.raises(ConfigError, match="unknown prompt variants"):
        GenerationConfig(model=str(tiny_qwen2vl), variants=("box_text", "nope"))


def test_clean_output_drops_media_markers_a_weak_model_samples():
    raw = "<|video_pad|>The region shows <image><|object_ref_start|>a<|object_ref_end|><|vision_start|>.<|im_end|>tail"
    assert clean_output(raw) == "The region shows <|object_ref_start|>a<|object_ref_end|>."
