"""The staged route keeps one frame: `spr generate` (a real run through the server back end) records its box format
and frame, `spr pair` scores in them and records them next to the pairs, `spr export` writes the dataset in them
and `<name>.spr.json` says so. Mismatches on the way are refused (more cases: bench/hostile_cases/formats.py)."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from helpers import FakeOpenAI
from helpers import run_spr as spr
from spr_plugin.core.records import Box
from spr_plugin.families.profiles import get_box_format

FRAME = {"image_max_pixels": 12544, "image_min_pixels": 1024}


def _texts() -> list[str]:
    """Three answers of different quality in Qwen2-VL's 0-1000 grid (the server does not know the region)."""
    fmt = get_box_format("qwen2_vl")
    near = fmt.render("red circle", Box(100, 100, 400, 400), 1000, 1000)
    far = fmt.render("blue square", Box(600, 600, 990, 990), 1000, 1000)
    return [f"The region shows {near} and {far}.", f"The region shows {far}.", "The region shows some shapes."]


class _Server(FakeOpenAI):
    """Answers every chat request with the same n texts."""

    def texts(self, body: dict) -> list[str]:
        return _texts()


@pytest.fixture(scope="module")
def staged(synthetic_scenes, tmp_path_factory):
    """regions -> generate (frame 12544, through the server back end) -> pair, no frame flag after generate."""
    work = tmp_path_factory.mktemp("staged_frame")
    images = synthetic_scenes.parent / "images"
    p = spr("regions", "--annotations", synthetic_scenes, "--images", images, "--out", work / "r.jsonl", "--max-regions", 6)
    assert p.returncode == 0, p.stderr
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        p = spr("generate", "--regions", work / "r.jsonl", "--out", work / "c.jsonl", "--backend", "openai", "--base-url", url,
                "--served-model", "tiny", "--num-samples", 3, "--variants", "box_text", "--image-max-pixels", 12544,
                "--no-progress", "--images", images)  # fmt: skip
        assert p.returncode == 0, p.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
    p = spr("pair", "--regions", work / "r.jsonl", "--candidates", work / "c.jsonl", "--out", work / "p.jsonl", "--min-margin", 0)
    assert p.returncode == 0, p.stderr
    return work


def test_staged_route_exports_in_the_frame_the_candidates_were_sampled_in(staged, tmp_path):
    record = json.loads((staged / "p.jsonl.manifest.json").read_text())["stages"]["pairs"]
    assert record["box_format"] == "qwen2_vl" and record["frame"] == FRAME
    assert record["candidates_record"].endswith("c.jsonl.manifest.json")
    images = json.loads((staged / "r.jsonl").read_text().splitlines()[0])["image_root"]
    p = spr("export", "--pairs", staged / "p.jsonl", "--dataset-dir", tmp_path / "data", "--name", "staged", "--images", images)
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "data" / "staged.spr.json").read_text())
    assert meta["frame"] == FRAME and meta["box_format"] == "qwen2_vl"  # not LLaMA-Factory's default 589824
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: dpo\ntemplate: qwen2_vl\ndataset: staged\ndataset_dir: data\nimage_max_pixels: 12544\n")
    assert spr("check-recipe", recipe, cwd=tmp_path).returncode == 0


def test_staged_route_refuses_another_format_or_frame_on_the_way(staged, tmp_path):
    def refused(p, *fragments):
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        line = next(line for line in p.stderr.splitlines() if ": error: " in line)
        assert all(f in line for f in fragments), line

    pair = ["pair", "--regions", staged / "r.jsonl", "--candidates", staged / "c.jsonl", "--out", tmp_path / "p.jsonl"]
    refused(spr(*pair, "--box-format", "qwen2_5_vl"), "candidates are in box format qwen2_vl", "c.jsonl.manifest.json")
    refused(spr(*pair, "--image-max-pixels", 589824), "image_max_pixels=589824", "image_max_pixels=12544")
    assert not (tmp_path / "p.jsonl").exists()
    export = ["export", "--pairs", staged / "p.jsonl", "--dataset-dir", tmp_path / "data"]
    refused(spr(*export, "--box-format", "qwen2_5_vl"), "scored in box format qwen2_vl", "--box-format says qwen2_5_vl")
    refused(spr(*export, "--image-min-pixels", 4096), "image_min_pixels=4096", "image_min_pixels=1024")
    assert not (tmp_path / "data").exists()
