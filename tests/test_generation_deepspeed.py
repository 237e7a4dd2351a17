"""The shipped DeepSpeed ZeRO configs (recipes/deepspeed/) are valid json of the stage their name says,
and every "auto" in them is a value the Hugging Face trainer integration fills in.

deepspeed itself is not installed here (it needs a CUDA toolchain), and LLaMA-Factory's argument parser
refuses a ``deepspeed:`` key without it, so the configs are read with accelerate's ``HfDeepSpeedConfig``,
the class transformers' own DeepSpeed config builds on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate.utils.deepspeed import HfDeepSpeedConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "deepspeed"

# Keys transformers' HfTrainerDeepSpeedConfig.trainer_config_process fills when they are "auto".
TRAINER_FILLED = {
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "fp16.enabled",
    "bf16.enabled",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}


def _autos(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _autos(v, f"{prefix}{k}.")
        elif v == "auto":
            yield prefix + k


@pytest.mark.parametrize("name,stage", [("ds_z2_config.json", 2), ("ds_z3_config.json", 3)])
def test_zero_config_is_valid_and_fully_auto(name, stage):
    path = RECIPES / name
    config = json.loads(path.read_text())
    ds = HfDeepSpeedConfig(str(path))
    assert ds.get_value("zero_optimization.stage") == stage
    assert ds.is_zero3() == (stage == 3)
    assert set(_autos(config)) <= TRAINER_FILLED  # batch sizes and precision follow the LLaMA-Factory recipe
    assert {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16.enabled"} <= set(_autos(config))
    if stage == 3:  # a LoRA adapter or full model saved from ZeRO-3 must be gathered, or the files are empty shards
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
