"""bench/effect_study.py end to end on a toy budget: every stage runs through the real tools and reports."""

from __future__ import annotations

import json

import pytest

from helpers import load_bench


@pytest.mark.slow
def test_effect_study_runs_every_stage_and_reports(tmp_path):
    study = load_bench("effect_study")
    cfg = study.StudyConfig(
        out=tmp_path / "es",
        sft_scenes=6,
        spr_scenes=3,
        test_scenes=3,
        pretrain_steps=4,
        pretrain_scenes=8,
        sft_steps=4,
        num_samples=2,
        pref_epochs=1,
    )
    results = study.run(cfg, [0], {"pairs"})
    assert set(results["models"]) == {"sft", "sft+spr_dpo(s0)", "sft+chosen_sft(s0)"}
    for model in results["models"].values():
        assert model["rec"]["summary"]["n"] > 0 and model["region"]["summary"]["regions"] == 3
        assert set(model["rec"]["summary"]["accuracy"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert results["pairs"]["pairs"] > 0  # the DPO stage trained on real SPR pairs of the SFT model's samples
    assert [h["step"] for h in results["pretrain_history"]] == [4]
    assert (cfg.out / "dpo_s0" / "adapter_model.safetensors").is_file()
    assert (cfg.out / "chosen_sft_s0" / "adapter_model.safetensors").is_file()
    assert (cfg.out / "rec_curve.png").stat().st_size > 0
    assert json.loads((cfg.out / "results.json").read_text())["rec_table"] == results["rec_table"]
