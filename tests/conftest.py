"""Shared fixtures: a tiny local Qwen2-VL and synthetic COCO scenes, built once per session.

Nothing may come from the Hugging Face Hub (tests must run offline and fast), so the environment
is forced offline before any test imports transformers or LLaMA-Factory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end tests that train with llamafactory-cli (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Qwen2-VL (tokenizer, processor, weights), built in a few seconds."""
    from data_builders.synthetic import CATEGORY_NAMES, SCENE_WORDS
    from spr_plugin.tiny_model import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])


@pytest.fixture(scope="session")
def synthetic_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COCO ``instances.json`` of 6 rendered scenes; the JPEGs are in its sibling ``images/``."""
    from data_builders.synthetic import render_scenes

    return render_scenes(tmp_path_factory.mktemp("scenes"), n_images=6, seed=0)
