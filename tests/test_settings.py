"""Settings defined once (spr_plugin/settings.py): one sampling config for both back ends, the server's own
model name and batch floor, and the candidates-file fingerprint kept as it was."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from spr_plugin.cli import build_parser
from spr_plugin.core.errors import ConfigError
from spr_plugin.generation.backends import generation_fingerprint
from spr_plugin.generation.cli import generation_config
from spr_plugin.settings import BuildConfig, GenerationConfig, SamplingConfig, ServerConfig

BASE = ["generate", "--regions", "r.jsonl", "--out", "c.jsonl", "--num-samples", "3", "--temperature", "0.7"]


def test_both_back_ends_share_the_sampling_fields():
    shared = {f.name for f in dataclasses.fields(SamplingConfig)}
    assert shared <= {f.name for f in dataclasses.fields(GenerationConfig)}
    assert shared <= {f.name for f in dataclasses.fields(ServerConfig)}
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        ServerConfig("http://x/v1", "m", temperature=0.0)  # checked once, in SamplingConfig
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        GenerationConfig("m", temperature=0.0)


def test_the_server_run_names_its_model_in_its_own_field_and_keeps_the_batch_size():
    a = build_parser().parse_args([*BASE, "--backend", "openai", "--base-url", "http://h/v1", "--served-model", "srv"])
    cfg = generation_config(a, seed=1)
    assert cfg.model is None and cfg.served_model == "srv" and cfg.generator_name == "srv"
    assert cfg.batch_size == 4  # the user's (default) batch size: the server back end asks for more itself
    assert (cfg.num_samples, cfg.temperature) == (3, 0.7)
    assert ServerConfig("http://h/v1", "srv", concurrency=16).min_batch_size == 64
    # The candidates file's fingerprint names the generator as before served_model existed.
    assert generation_fingerprint(cfg, "qwen2_vl")["generation"]["model"] == "srv"


def test_the_in_process_run_ignores_a_served_model_flag():
    a = build_parser().parse_args([*BASE, "--model", "ckpt", "--served-model", "srv"])
    cfg = generation_config(a, seed=0)
    assert (cfg.model, cfg.served_model) == ("ckpt", None)
    fingerprint = generation_fingerprint(cfg, "qwen2_vl")["generation"]
    assert "served_model" not in fingerprint and fingerprint["model"].endswith("ckpt")


def test_the_sampling_frame_is_one_field_recorded_flat_as_before():
    from spr_plugin.core.frame import ImageFrame

    a = build_parser().parse_args([*BASE, "--model", "ckpt", "--image-max-pixels", "12544", "--image-min-pixels", "none"])
    cfg = generation_config(a, seed=0)
    assert cfg.frame == ImageFrame(12544, None) and (cfg.image_max_pixels, cfg.image_min_pixels) == (12544, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_max_pixels = 1  # type: ignore[misc]  # read-only: the frame is given whole
    # Candidates manifests, summaries and cards keep the two bounds flat, where the frame field sits.
    keys = list(cfg.to_dict())
    assert "frame" not in keys and keys[keys.index("max_new_tokens") + 1 : keys.index("max_new_tokens") + 3] == [
        "image_max_pixels",
        "image_min_pixels",
    ]
    fingerprint = generation_fingerprint(cfg, "qwen2_vl")["generation"]
    assert (fingerprint["image_max_pixels"], fingerprint["image_min_pixels"]) == (12544, None) and "frame" not in fingerprint
    build = BuildConfig(Path("a.json"), Path("i"), Path("w"), Path("d"), generation=cfg, frame=cfg.frame).to_dict()
    assert build["generation"]["image_max_pixels"] == 12544 and "frame" not in build["generation"]  # summary.json, card
    server = ServerConfig("http://h/v1", "srv", **cfg.sampling())  # the frame goes from one back end's config to the other's
    assert server.frame == cfg.frame
    with pytest.raises(ConfigError, match="image_min_pixels"):
        ImageFrame(100, 200)


def test_a_generation_config_names_exactly_one_model():
    with pytest.raises(ConfigError, match="exactly one of model"):
        GenerationConfig()
    with pytest.raises(ConfigError, match="exactly one of model"):
        GenerationConfig("ckpt", served_model="srv")


def test_eval_flags_come_from_the_eval_configs_with_each_commands_defaults():
    from spr_plugin.evaluation.cli import _config
    from spr_plugin.evaluation.config import RecConfig, RegionEvalConfig

    common = ["--model", "m", "--out", "o.json"]
    rec = build_parser().parse_args(["eval", "rec", "--annotations", "a.jsonl", *common, "--thresholds", "0.5,0.75"])
    cfg = _config(RecConfig, rec)
    assert cfg == RecConfig(thresholds=(0.5, 0.75))  # every other field at the config's default
    region = _config(RegionEvalConfig, build_parser().parse_args(["eval", "region", "--regions", "r.jsonl", *common]))
    assert region == RegionEvalConfig() and (cfg.max_new_tokens, region.max_new_tokens) == (64, 160)
    frame = build_parser().parse_args(["eval", "region", "--regions", "r.jsonl", *common, "--image-max-pixels", "none"])
    assert _config(RegionEvalConfig, frame).image_max_pixels is None
    with pytest.raises(ConfigError, match="IoU thresholds must lie in"):
        _config(RecConfig, build_parser().parse_args(["eval", "rec", "--annotations", "a", *common, "--thresholds", "2"]))
    with pytest.raises(SystemExit):  # not numbers: argparse's usage error, exit 2
        build_parser().parse_args(["eval", "rec", "--annotations", "a", *common, "--thresholds", "0.5,x"])
