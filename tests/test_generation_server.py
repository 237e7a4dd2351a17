"""The server back end against a real OpenAI-compatible server: `llamafactory-cli api` serving the
tiny local Qwen2-VL on a loopback port. A wrong URL or model name fails up front in one line; a build
runs through the server and records variants, seeds and temperatures on every candidate."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
from PIL import Image

from spr_plugin.cli import main
from spr_plugin.core.errors import SPRError
from spr_plugin.core.options import VARIANTS
from spr_plugin.families.profiles import get_box_format
from spr_plugin.families.prompts import build_prompt
from spr_plugin.generation.server_backend import OpenAIServerGenerator, to_openai_messages
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions
from spr_plugin.settings import ServerConfig

SERVED = "tiny-spr"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_qwen2vl, tmp_path_factory):
    """``llamafactory-cli api`` on 127.0.0.1:<free port>; yields the base URL."""
    work = tmp_path_factory.mktemp("lf_api")
    config = work / "api.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_qwen2vl}\ntemplate: qwen2_vl\ninfer_backend: huggingface\n"
        "skip_special_tokens: false\ntrust_remote_code: true\n"
    )
    port = _free_port()
    env = {
        **os.environ,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_MODEL_NAME": SERVED,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    cli = os.path.join(os.path.dirname(sys.executable), "llamafactory-cli")
    log = (work / "api.log").open("w")
    proc = subprocess.Popen([cli, "api", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llamafactory-cli api exited: {(work / 'api.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=2) as r:
                    if SERVED in r.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llamafactory-cli api did not come up in 180 s")
            time.sleep(0.5)
        yield base_url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def regions(synthetic_scenes):
    return list(sample_regions(load_coco(synthetic_scenes), synthetic_scenes.parent / "images", RegionConfig()))


def test_wrong_model_name_is_caught_before_the_run(server):
    with pytest.raises(SPRError, match=f"model 'nope' is not served at .*it serves: {SERVED}"):
        OpenAIServerGenerator(ServerConfig(server, "nope"))


def test_wrong_url_is_one_clear_line_without_retrying(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(SPRError, match="cannot reach an OpenAI-compatible server"):
        OpenAIServerGenerator(ServerConfig(url, SERVED, max_retries=5))
    assert time.monotonic() - started < 5
    regions_file = tmp_path / "r.jsonl"
    regions_file.write_text("")
    argv = ["generate", "--regions", str(regions_file), "--out", str(tmp_path / "c.jsonl"), "--backend", "openai"]
    assert main([*argv, "--base-url", url, "--served-model", SERVED]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(err) == 1 and "cannot reach" in err[0] and url in err[0]


def test_base_url_without_v1_is_explained(server):
    with pytest.raises(SPRError, match="ends in /v1"):
        OpenAIServerGenerator(ServerConfig(server.removesuffix("/v1"), SERVED))


def test_images_go_inline_as_data_urls(regions):
    fmt = get_box_format("qwen2_vl")
    messages = to_openai_messages(build_prompt("crop", regions[0], fmt))
    urls = [part["image_url"]["url"] for part in messages[0]["content"] if part["type"] == "image_url"]
    assert [u.split(";")[0] for u in urls] == ["data:image/jpeg", "data:image/png"]  # the file as is, the crop as PNG
    crop = Image.open(io.BytesIO(base64.b64decode(urls[1].split(",", 1)[1])))
    box = regions[0].box
    assert abs(crop.width - box.width) <= 1 and abs(crop.height - box.height) <= 1


def test_generate_returns_n_samples_per_prompt_concurrently(server, regions):
    fmt = get_box_format("qwen2_vl")
    prompts = [build_prompt(v, r, fmt) for r in regions[:2] for v in VARIANTS]
    with OpenAIServerGenerator(ServerConfig(server, SERVED, num_samples=2, max_new_tokens=6, concurrency=3)) as gen:
        out = gen.generate(prompts, list(range(len(prompts))))
        assert gen.requests == len(prompts)
    assert [len(texts) for texts in out] == [2] * len(prompts)


def test_build_through_the_server(server, synthetic_scenes, tmp_path, capsys):
    work, data = tmp_path / "work", tmp_path / "data"
    argv = [
        "build", "--annotations", str(synthetic_scenes), "--images", str(synthetic_scenes.parent / "images"),
        "--work-dir", str(work), "--dataset-dir", str(data), "--name", "spr_server",
        "--backend", "openai", "--base-url", server, "--served-model", SERVED, "--concurrency", "4",
        "--num-samples", "2", "--max-new-tokens", "12", "--temperature", "0.7", "--seed", "5", "--min-margin", "0",
    ]  # fmt: skip
    code = main(argv)
    summary = json.loads((work / "summary.json").read_text())
    n_regions = summary["regions"]["regions"]
    gen = summary["generation"]
    assert gen["generated"] == n_regions * len(VARIANTS) * 2 and gen["skipped"] == {}
    assert summary["pairs"]["candidates"] == gen["generated"] and summary["pairs"]["regions"] == n_regions
    lines = [json.loads(line) for line in (work / "candidates.jsonl").read_text().splitlines()]
    assert Counter(d["variant"] for d in lines) == {v: n_regions * 2 for v in VARIANTS}
    assert all(d["temperature"] == 0.7 and d["generator"] == f"{SERVED}@{server}" for d in lines)
    # Each (region, variant) prompt has its own seed, whatever the batching.
    seeds = {(d["region_id"], d["variant"]): d["seed"] for d in lines}
    assert len(set(seeds.values())) == len(seeds)
    # Random tiny-model text rarely parses, so pairs may or may not survive; either outcome is reported.
    if code == 0:
        assert summary["pairs"]["pairs"] > 0 and (data / "spr_server.jsonl").is_file()
    else:
        assert code == 2 and summary["pairs"]["pairs"] == 0
    # Rerunning resumes: everything is already there, nothing is requested again.
    capsys.readouterr()
    main([*argv, "--overwrite"])
    assert json.loads((work / "summary.json").read_text())["generation"]["already_done"] == gen["generated"]


def test_server_options_are_checked_before_anything_loads(tmp_path, capsys):
    regions_file = tmp_path / "r.jsonl"
    regions_file.write_text("")
    base = ["generate", "--regions", str(regions_file), "--out", str(tmp_path / "c.jsonl"), "--backend", "openai"]
    assert main(base) == 2
    assert "--backend openai needs --base-url" in capsys.readouterr().err
    assert main([*base, "--base-url", "127.0.0.1:8000/v1", "--served-model", SERVED]) == 2
    assert "must start with http://" in capsys.readouterr().err
