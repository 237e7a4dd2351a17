"""The embedded default end to end, for real: rendered scenes -> tiny local Qwen2-VL (warm-up SFT via
llamafactory-cli) -> regions -> sampled candidates -> scores -> pairs -> dataset -> llamafactory-cli
DPO -> saved LoRA adapter with a finite loss. A second run resumes instead of redoing work."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _demo_again(out, *extra):
    cmd = [sys.executable, "-m", "spr_plugin.cli", "demo", "--out", str(out), "--images", "10",
           "--warmup-scenes", "80", "--warmup-steps", "300", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=1200)


@pytest.mark.slow
def test_demo_builds_pairs_and_trains_a_dpo_adapter(demo_run):
    out, proc = demo_run
    adapter = out / "spr_dpo_lora"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    loss = json.loads((adapter / "train_results.json").read_text())["train_loss"]
    assert math.isfinite(loss) and loss > 0
    # LLaMA-Factory really ran the DPO stage on our dataset
    log = (out / "train_dpo.log").read_text()
    assert "rewards/chosen" in log

    summary = json.loads((out / "work" / "summary.json").read_text())
    records = (out / "data" / "spr_demo.jsonl").read_text().splitlines()
    assert summary["pairs"]["pairs"] == len(records) > 0
    assert summary["generation"]["generated"] == len((out / "work" / "candidates.jsonl").read_text().splitlines())
    assert "spr_demo" in json.loads((out / "data" / "dataset_info.json").read_text())
    assert "[6/6] done" in proc.stderr and "SPR demo:" in proc.stdout
    assert "spr_plugin/recipes/spr_qwen2vl_cpu_demo.yaml" in proc.stderr  # the shipped recipe, run outside the repo

    # A rerun (e.g. after a crash) reuses the model and every finished candidate.
    again = _demo_again(out, "--no-train")
    assert again.returncode == 0, again.stderr[-4000:]
    summary2 = json.loads((out / "work" / "summary.json").read_text())
    assert summary2["generation"]["generated"] == 0
    assert summary2["generation"]["already_done"] == summary["generation"]["generated"]
    assert "reusing the warmed-up model" in again.stderr
