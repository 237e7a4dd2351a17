"""Generation and evaluation show the model LLaMA-Factory's training-time frame.

LLaMA-Factory pre-resizes every image (``image_max_pixels``/``image_min_pixels``, then the Qwen2-VL
plugin's 28-pixel side and aspect cap) before the HF processor; Qwen2.5-VL boxes are pixels of the
result. These tests check :mod:`spr_plugin.core.frame` against LLaMA-Factory's own plugin, and that the
in-process generator, the server generator and evaluation all feed the model the pre-resized image.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from helpers import FakeOpenAI
from spr_plugin.cli import build_parser, main
from spr_plugin.core.errors import ConfigError
from spr_plugin.core.frame import ImageFrame, lf_image_size, lf_preprocess_image, lf_resize_steps
from spr_plugin.core.records import Box
from spr_plugin.core.sharegpt import IMAGE_TOKEN
from spr_plugin.demo.tiny_model import MAX_PIXELS, MIN_PIXELS
from spr_plugin.evaluation.config import RecConfig, RegionEvalConfig
from spr_plugin.evaluation.model import load_model
from spr_plugin.evaluation.rec import evaluate_rec
from spr_plugin.evaluation.rec_data import RecItem, write_rec_jsonl
from spr_plugin.evaluation.region import evaluate_region
from spr_plugin.families.box_formats import ResizeSpec
from spr_plugin.families.prompts import Prompt
from spr_plugin.generation.backends import make_generator
from spr_plugin.generation.cli import generation_config, server_config
from spr_plugin.generation.server_backend import to_openai_messages
from spr_plugin.generation.transformers_backend import TransformersGenerator
from spr_plugin.llamafactory.recipe_check import adopt_frame
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions
from spr_plugin.settings import GenerationConfig

LF_DEFAULT = (768 * 768, 32 * 32)
# Below the tiny processor's max_pixels (28*28*16), so smart_resize keeps the pre-resize's effect visible.
SMALL_MAX = 64 * 64
SIZES = [(1600, 1200), (20, 20), (1200, 1000), (769, 768), (5, 3000), (30, 7000), (20000, 60), (10, 20), (640, 480)]


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _grid_size(grid: list[int], patch: int = 14) -> tuple[int, int]:
    """(width, height) in pixels of a processor ``image_grid_thw`` row."""
    return (grid[2] * patch, grid[1] * patch)


@pytest.fixture(scope="module")
def lf_plugin():
    from llamafactory.data.mm_plugin import get_mm_plugin

    return get_mm_plugin("qwen2_vl", image_token="<|image_pad|>")


@pytest.fixture()
def big_jpeg(tmp_path):
    path = tmp_path / "big.jpg"
    _noise(1200, 1000).save(path)
    return path


# -- the pure arithmetic ------------------------------------------------------------------------


def test_lf_size_matches_llamafactory_plugin(lf_plugin):
    for w, h in SIZES:
        image = _noise(w, h, seed=w)
        for bounds in (LF_DEFAULT, (SMALL_MAX, 32 * 32), (10**9, 1)):
            ours = lf_preprocess_image(image, *bounds)
            theirs = lf_plugin._preprocess_image(image, image_max_pixels=bounds[0], image_min_pixels=bounds[1])
            assert ours.size == theirs.size == lf_image_size(w, h, *bounds), ((w, h), bounds)
            assert np.array_equal(np.asarray(ours), np.asarray(theirs))  # same resize steps, same pixels


def test_lf_size_known_values_and_no_op():
    assert lf_image_size(1600, 1200, *LF_DEFAULT) == (886, 665)
    assert lf_image_size(20, 20, *LF_DEFAULT) == (32, 32)
    assert lf_image_size(20000, 60, *LF_DEFAULT) == (7560, 42)  # max pixels, 28 side, then the 180 aspect cap
    assert lf_resize_steps(640, 480, *LF_DEFAULT) == []
    assert lf_image_size(1600, 1200, None, None) == (1600, 1200)
    image = _noise(64, 48)
    assert lf_preprocess_image(image, *LF_DEFAULT) is image  # unchanged: no copy, no resize


def test_resize_spec_frame_is_lf_size_then_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    spec = ResizeSpec()
    for w, h in SIZES:
        pw, ph = lf_image_size(w, h, *LF_DEFAULT)
        sh, sw = smart_resize(ph, pw, factor=28, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
        assert spec.input_size(w, h) == (sw, sh)


def test_pixel_bounds_are_validated(tiny_qwen2vl):
    for bad in ({"image_max_pixels": 0}, {"image_min_pixels": -1}, {"image_max_pixels": 100, "image_min_pixels": 200}):
        with pytest.raises(ConfigError, match="image_m"):
            GenerationConfig(model="m", frame=ImageFrame(**bad))
        with pytest.raises(ConfigError, match="image_m"):
            RecConfig(frame=ImageFrame(**bad))
        with pytest.raises(ConfigError, match="image_m"):
            RegionEvalConfig(frame=ImageFrame(**bad))
    GenerationConfig(model="m", frame=ImageFrame(None, None))  # None: no pre-resize


# -- in-process generation --------------------------------------------------------------------


def test_transformers_generator_feeds_the_processor_the_preresized_image(tiny_qwen2vl, big_jpeg):
    spec = ResizeSpec(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, pre_max_pixels=SMALL_MAX)
    prompt = Prompt("box_text", IMAGE_TOKEN + "Describe.", (str(big_jpeg),))
    gen = TransformersGenerator(GenerationConfig(model=str(tiny_qwen2vl), max_new_tokens=2, frame=ImageFrame(SMALL_MAX)))
    grid = gen.encode([prompt])["image_grid_thw"][0].tolist()
    # The model sees exactly the frame the qwen2_5_vl formats parse in ...
    assert _grid_size(grid) == spec.input_size(1200, 1000) == (56, 56)
    # ... which is not the frame of the original image.
    raw = TransformersGenerator(GenerationConfig(model=str(tiny_qwen2vl), frame=ImageFrame(None, None)))
    assert _grid_size(raw.encode([prompt])["image_grid_thw"][0].tolist()) == (112, 84)


# -- server generation ------------------------------------------------------------------------


def _data_url_image(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_server_data_url_holds_the_preresized_image(big_jpeg, tmp_path):
    (part,) = [c for c in to_openai_messages(Prompt("box_text", IMAGE_TOKEN, (str(big_jpeg),)))[0]["content"]]
    sent = _data_url_image(part["image_url"]["url"])
    assert sent.size == lf_image_size(1200, 1000, *LF_DEFAULT) == (841, 701)
    assert np.array_equal(np.asarray(sent), np.asarray(lf_preprocess_image(Image.open(big_jpeg), *LF_DEFAULT)))
    # An image LLaMA-Factory would not resize goes as its own file bytes; in-memory images are pre-resized too.
    small = tmp_path / "small.jpg"
    _noise(320, 240).save(small)
    (part,) = to_openai_messages(Prompt("box_text", IMAGE_TOKEN, (str(small),)))[0]["content"]
    assert base64.b64decode(part["image_url"]["url"].split(",", 1)[1]) == small.read_bytes()
    (part,) = to_openai_messages(Prompt("crop", IMAGE_TOKEN, (_noise(1600, 1200),)))[0]["content"]
    assert _data_url_image(part["image_url"]["url"]).size == (886, 665)


class _FakeOpenAI(FakeOpenAI):
    """Records the chat requests it answers (always "a cat")."""

    requests: list[dict] = []

    def seen(self, body: dict) -> None:
        type(self).requests.append(body)


def test_spr_generate_flags_reach_both_back_ends(big_jpeg):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        argv = ["generate", "--regions", "r.jsonl", "--out", "c.jsonl", "--backend", "openai", "--base-url", url]
        flags = ["--served-model", "tiny", "--image-max-pixels", str(SMALL_MAX), "--image-min-pixels", "none"]
        a = build_parser().parse_args([*argv, *flags])
        cfg = generation_config(a, 0)
        assert (cfg.image_max_pixels, cfg.image_min_pixels) == (SMALL_MAX, None)
        _FakeOpenAI.requests.clear()
        with make_generator(cfg, server_config(a, cfg)) as gen:
            assert gen.generate([Prompt("box_text", IMAGE_TOKEN + "Describe.", (str(big_jpeg),))], [0]) == [["a cat"] * 4]
        (req,) = _FakeOpenAI.requests
        image_part = next(p for p in req["messages"][0]["content"] if p["type"] == "image_url")
        assert _data_url_image(image_part["image_url"]["url"]).size == lf_image_size(1200, 1000, SMALL_MAX, None) == (70, 58)
    finally:
        httpd.shutdown()
        httpd.server_close()
    defaults = generation_config(build_parser().parse_args([*argv, "--served-model", "tiny"]), 0)
    assert (defaults.image_max_pixels, defaults.image_min_pixels) == LF_DEFAULT


def test_server_preresizes_with_the_served_familys_plugin(tmp_path):
    """A 20x600 image: the Qwen2-VL plugin (every family but InternVL) widens it to 28 pixels, InternVL's plugin does
    not. The server gets the frame LLaMA-Factory's plugin of --box-format would train in."""
    thin = tmp_path / "thin.png"
    _noise(20, 600).save(thin)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        sizes = {}
        for fmt in ("qwen2_vl", "internvl", "glm4v"):
            argv = ["generate", "--regions", "r.jsonl", "--out", "c.jsonl", "--backend", "openai", "--base-url", url]
            a = build_parser().parse_args([*argv, "--served-model", "tiny", "--box-format", fmt])
            cfg = generation_config(a, 0)
            _FakeOpenAI.requests.clear()
            with make_generator(cfg, server_config(a, cfg)) as gen:
                gen.generate([Prompt("box_text", IMAGE_TOKEN + "Describe.", (str(thin),))], [0])
            (req,) = _FakeOpenAI.requests
            part = next(p for p in req["messages"][0]["content"] if p["type"] == "image_url")
            sizes[fmt] = _data_url_image(part["image_url"]["url"]).size
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sizes == {"qwen2_vl": (28, 600), "internvl": (20, 600), "glm4v": (28, 600)}
    assert lf_image_size(20, 600, *LF_DEFAULT, qwen_rules=False) == (20, 600)


def test_server_family_and_parse_family_must_agree(tmp_path):
    """Candidates parsed as one family from a server set up (pre-resizing) for another: refused before any request."""
    from spr_plugin.families.profiles import get_box_format
    from spr_plugin.generation.candidates import generate_candidates
    from spr_plugin.settings import ServerConfig

    with pytest.raises(ConfigError, match="unknown box format"):
        ServerConfig(base_url="http://127.0.0.1:9/v1", served_model="m", box_format="qwen9")

    class _Unused:  # never asked: the check comes first
        config = ServerConfig(base_url="http://127.0.0.1:9/v1", served_model="m", box_format="internvl")

    with pytest.raises(ConfigError, match="set up for box format 'internvl'.*parsed as 'qwen2_vl'"):
        generate_candidates(
            [], _Unused(), get_box_format("qwen2_vl"), tmp_path / "c.jsonl", variants=("box_text",), num_samples=1,
            batch_size=1, temperature=0.7, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "c.jsonl").exists()


# -- evaluation -------------------------------------------------------------------------------


def _grids_seen_by(model) -> tuple[list[list[int]], object]:
    """Record the ``image_grid_thw`` of every forward pass of the real model (a torch hook, not a mock)."""
    seen: list[list[int]] = []

    def hook(_module, _args, kwargs):
        if kwargs.get("image_grid_thw") is not None:
            seen.extend(kwargs["image_grid_thw"].tolist())

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_eval_rec_and_region_show_the_model_the_preresized_image(tiny_qwen2vl, synthetic_scenes, big_jpeg, tmp_path):
    loaded = load_model(tiny_qwen2vl)
    seen, handle = _grids_seen_by(loaded.model)
    try:
        item = RecItem("a", str(big_jpeg), "the cat", Box(10, 10, 100, 100))
        cfg = RecConfig(max_new_tokens=2, frame=ImageFrame(SMALL_MAX))
        report = evaluate_rec([item], loaded, cfg, tmp_path / "rec.jsonl", progress=False)
        assert {_grid_size(g) for g in seen} == {(56, 56)}  # every decoding step; original: (112, 84)
        assert report.decoding["image_max_pixels"] == SMALL_MAX and report.decoding["image_min_pixels"] == 32 * 32

        seen.clear()
        coco = load_coco(synthetic_scenes)
        regions = list(sample_regions(coco, synthetic_scenes.parent / "images", RegionConfig(k=2, max_regions=1)))
        rcfg = RegionEvalConfig(max_new_tokens=2, frame=ImageFrame(SMALL_MAX))
        rep = evaluate_region(regions, loaded, rcfg, tmp_path / "region.jsonl", progress=False)
        spec = ResizeSpec(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, pre_max_pixels=SMALL_MAX)
        assert {_grid_size(g) for g in seen} == {spec.input_size(regions[0].width, regions[0].height)}
        assert rep.decoding["image_max_pixels"] == SMALL_MAX
    finally:
        handle.remove()


def test_spr_eval_rec_flags_are_recorded_in_the_report(tiny_qwen2vl, big_jpeg, tmp_path, capsys):
    ann = write_rec_jsonl(tmp_path / "rec.jsonl", [RecItem("a", str(big_jpeg), "the cat", Box(10, 10, 100, 100))])
    out = tmp_path / "report.json"
    args = ["eval", "rec", "--annotations", str(ann), "--model", str(tiny_qwen2vl), "--out", str(out)]
    assert main([*args, "--max-new-tokens", "2", "--quiet", "--image-max-pixels", "4096", "--image-min-pixels", "none"]) == 0
    decoding = json.loads(out.read_text())["decoding"]
    assert (decoding["image_max_pixels"], decoding["image_min_pixels"]) == (4096, None)
    region = build_parser().parse_args(["eval", "region", "--regions", "r.jsonl", "--model", "m", "--out", "o.json"])
    region_frame = adopt_frame(region, [])  # no flag, no recipe, no dataset: LLaMA-Factory's defaults
    assert (region_frame.image_max_pixels, region_frame.image_min_pixels) == LF_DEFAULT
