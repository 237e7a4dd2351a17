"""A build's reused work dir: its regions.jsonl is a file on disk like any other, so its images are read only under
the build's own --images (docs/inputs.md, "Image roots"). Real files, the real pipeline; the generator is a small
recording one of our own (no model: the check must come before any image reaches one)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from spr_plugin.core.errors import SPRError


class RecordingGenerator:
    """A candidate source that records every image it is given and answers with a fixed text."""

    name = "recording"
    seed_scope = "prompt"

    def __init__(self) -> None:
        self.images: list[object] = []

    def generate(self, prompts, seeds):
        for prompt in prompts:
            self.images.extend(prompt.images)
        return [["a block"] for _ in prompts]

    def close(self) -> None:
        pass


def test_reused_regions_of_a_build_read_no_image_outside_its_images(synthetic_scenes, tmp_path):
    from spr_plugin.pipeline import build_dataset, build_regions
    from spr_plugin.settings import BuildConfig, GenerationConfig

    cfg = BuildConfig(
        annotations=synthetic_scenes, image_root=synthetic_scenes.parent / "images", work_dir=tmp_path / "work",
        dataset_dir=tmp_path / "data", name="roots_ds", generation=GenerationConfig(model="none", num_samples=1),
        progress=False, overwrite=True,
    )  # fmt: skip
    build_regions(cfg)
    path = tmp_path / "work" / "regions.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    Image.new("RGB", (lines[0]["width"], lines[0]["height"]), (1, 2, 3)).save(secret)
    lines[0]["image_path"] = str(secret)  # a hand-edited (or received) work dir
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    generator = RecordingGenerator()
    with pytest.raises(SPRError, match="points outside"):
        build_dataset(cfg, generator=generator)
    assert generator.images == [] and not (tmp_path / "data" / "roots_ds.jsonl").exists()
