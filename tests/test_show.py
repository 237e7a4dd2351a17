"""`spr show`: chosen/rejected boxes drawn in their colours on the image, scores and parts in the page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from helpers import run_spr
from spr_plugin.core.errors import SPRError
from spr_plugin.core.records import PreferencePair
from spr_plugin.families.profiles import get_box_format
from spr_plugin.inspect.viewer import CHOSEN_COLOR, PANEL_WIDTH, REJECTED_COLOR, annotated_text, show_pairs
from spr_plugin.settings import ShowConfig

NAME = "spr_built"


@pytest.fixture(scope="module")
def built(built_dataset) -> tuple[Path, Path]:
    """The shared build (conftest.built_dataset): its chosen sides have boxes to draw."""
    return built_dataset.data, built_dataset.pairs


@pytest.fixture
def demo_data(built, tmp_path) -> Path:
    """A copy of the built dataset folder (tests may move images away)."""
    return Path(shutil.copytree(built[0], tmp_path / "data"))


@pytest.fixture
def pairs_file(built) -> Path:
    return built[1]


def _count(img: Image.Image, color: tuple[int, int, int], box: tuple[int, int, int, int]) -> int:
    return sum(1 for px in img.crop(box).getdata() if px == color)


def test_cli_renders_png_per_pair_and_html(pairs_file, tmp_path):
    out = tmp_path / "view"
    root = json.loads(pairs_file.read_text().splitlines()[0])["region"]["image_root"]
    refused = run_spr("show", "--pairs", pairs_file, "--out", out, "-n", "3")  # no --images: nothing is read
    assert refused.returncode == 2 and "no --images given" in refused.stderr, refused.stderr
    proc = run_spr("show", "--pairs", pairs_file, "--out", out, "-n", "3", "--images", root)
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("pair_*.png"))
    assert len(pngs) == 3
    first = PreferencePair.from_dict(json.loads((pairs_file).read_text().splitlines()[0]))
    img = Image.open(pngs[0]).convert("RGB")
    assert img.width == 2 * PANEL_WIDTH + 10
    left, right = (0, 0, PANEL_WIDTH, img.height), (PANEL_WIDTH + 10, 0, img.width, img.height)
    fmt = get_box_format("qwen2_vl")
    w, h = first.region.width, first.region.height
    # Each side is drawn in its own colour only: green on the chosen panel, red on the rejected one.
    assert _count(img, CHOSEN_COLOR, left) > 100 and _count(img, CHOSEN_COLOR, right) == 0
    assert _count(img, REJECTED_COLOR, right) > 100 and _count(img, REJECTED_COLOR, left) == 0
    assert fmt.parse(first.chosen.candidate.text, w, h).boxes  # the first chosen has boxes to draw
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 3 and "pair_000.png" in page
    for fact in (f"score {first.chosen.score:.3f}", f"n_gt {first.chosen.localization.n_gt}", "parse drops", "text_region"):
        assert fact in page
    for k, v in first.rejected.parse_dropped.items():
        assert f"{k}: {v}" in page


def test_dataset_dir_source_falls_back_to_exported_images(demo_data, tmp_path):
    # Move the pairs away from their original images: the viewer must use the dataset's own copies.
    lines = (demo_data / "spr_built.pairs.jsonl").read_text().splitlines()
    moved = []
    for line in lines:
        d = json.loads(line)
        d["region"]["image_path"] = str(tmp_path / "gone" / Path(d["region"]["image_path"]).name)
        moved.append(json.dumps(d))
    (demo_data / "spr_built.pairs.jsonl").write_text("\n".join(moved) + "\n")
    res = show_pairs(ShowConfig(None, demo_data, NAME, tmp_path / "v", n=2))
    assert res.pairs == 2 and all(p.stat().st_size > 10_000 for p in res.pngs)


def test_annotated_text_numbers_boxes_and_marks_drops(demo_data):
    fmt = get_box_format("qwen2_vl")
    pair = PreferencePair.from_dict(json.loads((demo_data / "spr_built.pairs.jsonl").read_text().splitlines()[0]))
    r = pair.region
    chosen = annotated_text(pair.chosen, fmt, r.width, r.height)
    assert "[0]" in chosen and "<|box_start|>" not in chosen
    if pair.rejected.parse_dropped:
        assert "[dropped" in annotated_text(pair.rejected, fmt, r.width, r.height)


def test_missing_pairs_file_is_a_user_error(tmp_path):
    with pytest.raises(SPRError, match="not found"):
        show_pairs(ShowConfig(tmp_path / "nope.jsonl", None, "x", tmp_path / "v"))
    with pytest.raises(SPRError, match="either --pairs"):
        ShowConfig(None, None, "x", tmp_path / "v")


def test_page_reports_what_each_side_names_measured_as_the_statistics_measure_it(pairs_file, tmp_path):
    """Per side: named objects, absent ones, ungrounded, debris (spr_plugin.scoring.mentions.describe); the page
    opens with the counts over the shown pairs, chosen against rejected."""
    import html

    from spr_plugin.inspect.viewer import mention_lines
    from spr_plugin.scoring.mentions import Vocabulary, describe

    out = tmp_path / "view"
    root = json.loads(pairs_file.read_text().splitlines()[0])["region"]["image_root"]
    assert run_spr("show", "--pairs", pairs_file, "--out", out, "-n", "2", "--images", root).returncode == 0
    page = html.unescape((out / "index.html").read_text())
    pairs = [PreferencePair.from_dict(json.loads(line)) for line in pairs_file.read_text().splitlines()[:2]]
    fmt, vocab = get_box_format("qwen2_vl"), Vocabulary.of_regions(p.region for p in pairs)
    for pair in pairs:
        for side in (pair.chosen, pair.rejected):
            for line in mention_lines(side, pair.region, fmt, vocab):
                assert line in page
    chosen = [describe(p.chosen.candidate.text, p.region, fmt, vocab) for p in pairs]
    rejected = [describe(p.rejected.candidate.text, p.region, fmt, vocab) for p in pairs]
    absent = f"absent from the image: {sum(f.hallucinated > 0 for f in chosen)} / {sum(f.hallucinated > 0 for f in rejected)}"
    debris = f"with box debris: {sum(f.debris > 0 for f in chosen)} / {sum(f.debris > 0 for f in rejected)}"
    assert "In these 2 pairs" in page and absent in page and debris in page
