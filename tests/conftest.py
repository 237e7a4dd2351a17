"""Shared fixtures: a tiny local Qwen2-VL and synthetic COCO scenes, built once per session.

Nothing may come from the Hugging Face Hub (tests must run offline and fast), so the environment
is forced offline before any test imports transformers or LLaMA-Factory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: end-to-end tests that train, run the demo or a browser, or kill processes (deselect with -m 'not slow')"
    )


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Qwen2-VL (tokenizer, processor, weights), built in a few seconds."""
    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS
    from spr_plugin.demo.tiny_model import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])


@pytest.fixture(scope="session")
def tiny_qwen3vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Qwen3-VL (Qwen3VLProcessor, patch 16), built in a few seconds."""
    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS
    from spr_plugin.testing.tiny_families import build_tiny_qwen3vl

    return build_tiny_qwen3vl(tmp_path_factory.mktemp("models") / "tiny-qwen3vl", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])


@pytest.fixture(scope="session")
def tiny_internvl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random InternVL (-hf layout, InternVLProcessor, one 56-pixel tile), built in a few seconds."""
    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS
    from spr_plugin.testing.tiny_families import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("models") / "tiny-internvl", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])


@pytest.fixture(scope="session")
def tiny_glm4v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random GLM-4.1V (Glm4vProcessor, patch 14), built in a few seconds."""
    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS
    from spr_plugin.testing.tiny_families import build_tiny_glm4v

    return build_tiny_glm4v(tmp_path_factory.mktemp("models") / "tiny-glm4v", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])


@pytest.fixture(scope="session")
def synthetic_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COCO ``instances.json`` of 6 rendered scenes; the JPEGs are in its sibling ``images/``."""
    from spr_plugin.demo.scenes import render_scenes

    return render_scenes(tmp_path_factory.mktemp("scenes"), n_images=6, seed=0)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random CLIP that ``SentenceTransformer(path)`` loads (scores are meaningless)."""
    from spr_plugin.testing.tiny_checkpoints import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_grounding_dino(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Grounding DINO with MiniLM's BERT tokenizer (boxes are meaningless)."""
    from spr_plugin.testing.tiny_checkpoints import build_tiny_grounding_dino

    return build_tiny_grounding_dino(tmp_path_factory.mktemp("models") / "tiny-grounding-dino")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """One real `spr demo` per session (scenes, tiny model + warm-up SFT, pairs, dataset, DPO adapter),
    shared by the end-to-end and web UI tests; returns (output folder, the finished process)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("demo") / "demo"
    cmd = [sys.executable, "-m", "spr_plugin.cli", "demo", "--out", str(out), "--images", "10",
           "--warmup-scenes", "80", "--warmup-steps", "300"]  # fmt: skip
    # Run from a folder outside the repo: the demo needs no recipes/ folder in the working directory (#22.5).
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


@dataclass(frozen=True)
class BuiltDataset:
    """A finished build: the LLaMA-Factory dataset folder (which also holds a user's own entry), the work dir and
    the summary. Shared read-only; a test that changes files works on a copy."""

    data: Path
    name: str
    work: Path
    summary: dict

    @property
    def pairs(self) -> Path:
        return self.work / "pairs.jsonl"


@pytest.fixture(scope="session")
def built_dataset(synthetic_scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltDataset:
    """One build per session (regions -> scripted candidates -> scores, refinement, pairs -> dataset, card),
    shared by the tests of the dataset's LLaMA-Factory contract, its card, its viewer and its exports."""
    from candidates_factory import write_candidates
    from spr_plugin.pipeline import build_dataset, build_regions
    from spr_plugin.settings import BuildConfig, PairingConfig, RegionConfig

    root = tmp_path_factory.mktemp("built")
    data = root / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"users_own": {"file_name": "users_own.json"}}))
    cfg = BuildConfig(
        annotations=synthetic_scenes,
        image_root=synthetic_scenes.parent / "images",
        work_dir=root / "work",
        dataset_dir=data,
        name="spr_built",
        regions=RegionConfig(k=4, seed=3),
        pairing=PairingConfig(min_margin=0.0),
        candidates_file=root / "candidates.jsonl",
        progress=False,
    )
    build_regions(cfg)
    write_candidates(root / "work" / "regions.jsonl", root / "candidates.jsonl")
    summary = build_dataset(cfg)
    return BuiltDataset(data, cfg.name, root / "work", summary.to_dict())
