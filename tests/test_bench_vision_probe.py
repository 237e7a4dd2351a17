"""bench/vision_probe.py (the effect study's pretraining stage) runs, evaluates and saves a loadable checkpoint."""

from __future__ import annotations

import json

from transformers import AutoModelForImageTextToText, AutoProcessor

from helpers import load_bench


def test_probe_trains_evaluates_and_saves(tmp_path):
    probe = load_bench("vision_probe")
    cfg = probe.ProbeConfig(
        out=tmp_path / "probe",
        steps=6,
        batch_size=2,
        eval_every=3,
        scenes=6,
        test_scenes=3,
        hide_label=True,
        save=tmp_path / "model",
    )
    history = probe.run_probe(cfg)
    assert [h["step"] for h in history] == [3, 6]
    assert history[-1]["n"] == 3 and set(history[-1]["accuracy"]) >= {"0.5", "0.9"}
    assert json.loads((tmp_path / "probe" / "history.json").read_text()) == json.loads(json.dumps(history))
    # One REC answer per held-out scene, asked without the label (single-object scenes).
    rows = [json.loads(line) for line in (tmp_path / "probe" / "eval_6.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["expression"] for r in rows} == {"the shape"}
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    assert processor.image_processor.size["longest_edge"] == 784 * cfg.max_image_tokens
    assert model.config.text_config.hidden_size == cfg.hidden_size


def test_probe_stops_at_the_target_accuracy(tmp_path):
    probe = load_bench("vision_probe")
    cfg = probe.ProbeConfig(out=tmp_path / "probe", steps=6, batch_size=2, eval_every=2, scenes=4, test_scenes=2, target_acc=0.0)
    assert [h["step"] for h in probe.run_probe(cfg)] == [2]  # any accuracy reaches 0.0: stop at the first evaluation
