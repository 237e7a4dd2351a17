"""Model loading for evaluation (base checkpoint, base + real peft LoRA adapter) and resumable runs."""

from __future__ import annotations

import pytest

from spr_plugin.core.errors import SPRError
from spr_plugin.evaluation.config import RecConfig, RegionEvalConfig
from spr_plugin.evaluation.model import load_model
from spr_plugin.evaluation.rec import evaluate_rec
from spr_plugin.evaluation.rec_data import rec_items_from_detections
from spr_plugin.evaluation.region import evaluate_region
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions


@pytest.fixture(scope="module")
def lora_adapter(tiny_qwen2vl, tmp_path_factory):
    """A real peft LoRA adapter on the tiny model, with non-zero B so it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen2vl)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg)
    out = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(out)
    return out


def _logits(model, processor):
    import torch

    ids = processor.tokenizer("The region shows a red circle", return_tensors="pt")
    with torch.inference_mode():
        return model(**ids).logits


def test_base_plus_lora_equals_peft_model_and_differs_from_base(tiny_qwen2vl, lora_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = load_model(tiny_qwen2vl)
    merged = load_model(tiny_qwen2vl, lora_adapter)
    assert merged.adapter == str(lora_adapter) and "+" in merged.name
    reference = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_qwen2vl), lora_adapter).eval()
    lm, lb, lr = _logits(merged.model, merged.processor), _logits(base.model, base.processor), _logits(reference, base.processor)
    assert torch.allclose(lm, lr, atol=1e-4)
    assert not torch.allclose(lm, lb, atol=1e-3)
    assert merged.processor.tokenizer.padding_side == "left"


def test_adapter_folder_without_adapter_config_is_a_clear_error(tiny_qwen2vl, tmp_path):
    with pytest.raises(SPRError, match="not a LoRA adapter folder"):
        load_model(tiny_qwen2vl, tmp_path)
    with pytest.raises(SPRError, match="cannot load the model"):
        load_model(tmp_path / "missing")


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_rec_eval_resumes_and_skips_done_items(tiny_qwen2vl, synthetic_scenes, tmp_path):
    items = rec_items_from_detections(synthetic_scenes, synthetic_scenes.parent / "images")[:3]
    loaded = load_model(tiny_qwen2vl)
    cfg = RecConfig(batch_size=2, max_new_tokens=6)
    results = tmp_path / "rec.items.jsonl"
    first = evaluate_rec(items, loaded, cfg, results, progress=False)
    assert first.reused == 0 and first.summary.n == 3 and len(_lines(results)) == 3
    # A random model writes no valid box: everything is wrong, nothing is dropped.
    assert first.summary.accuracy["0.5"] == 0.0 and first.summary.unparseable == 3
    second = evaluate_rec(items, loaded, cfg, results, progress=False)
    assert second.reused == 3 and len(_lines(results)) == 3
    assert second.summary == first.summary
    # An interrupted run: one finished line lost and a torn half line left behind.
    kept = _lines(results)[:2]
    results.write_text("\n".join(kept) + "\n" + '{"id": "torn')
    third = evaluate_rec(items, loaded, cfg, results, progress=False)
    assert third.reused == 2 and len(_lines(results)) == 3
    assert third.to_dict()["threshold_rule"].startswith("correct iff IoU >= threshold")


def test_region_eval_counts_objects_and_resumes(tiny_qwen2vl, synthetic_scenes, tmp_path):
    coco = load_coco(synthetic_scenes)
    regions = list(sample_regions(coco, synthetic_scenes.parent / "images", RegionConfig(k=2, max_regions=2)))
    loaded = load_model(tiny_qwen2vl)
    results = tmp_path / "region.items.jsonl"
    rep = evaluate_region(regions, loaded, RegionEvalConfig(batch_size=2, max_new_tokens=6), results, progress=False)
    assert rep.summary.regions == 2 and rep.summary.n_gt == sum(len(r.objects) for r in regions)
    assert rep.summary.recall == 0.0  # a random model localizes nothing
    assert "Describe the region" in rep.prompt_example
    again = evaluate_region(regions, loaded, RegionEvalConfig(batch_size=2, max_new_tokens=6), results, progress=False)
    assert again.reused == 2 and len(_lines(results)) == 2
