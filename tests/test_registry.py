"""dataset_info.json merging: keeps other entries, refuses clashes, leaves bad files alone, loses nothing
under concurrent registration."""

import json
import multiprocessing as mp

import pytest

from spr_plugin.core.errors import SPRError
from spr_plugin.llamafactory.registry import ranking_entry, register_dataset


def test_merge_keeps_existing_entries(tmp_path):
    existing = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}, "mine": {"file_name": "x.json", "ranking": True}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(existing))
    register_dataset(tmp_path, "spr_a", ranking_entry("spr_a.jsonl"))
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["alpaca_en_demo"] == existing["alpaca_en_demo"] and info["mine"] == existing["mine"]
    assert info["spr_a"]["ranking"] is True and info["spr_a"]["columns"]["images"] == "images"
    assert not list(tmp_path.glob(".dataset_info.json.*.tmp"))  # no temp file left behind


def test_same_entry_is_idempotent_and_a_different_one_is_refused(tmp_path):
    register_dataset(tmp_path, "spr_a", ranking_entry("spr_a.jsonl"))
    register_dataset(tmp_path, "spr_a", ranking_entry("spr_a.jsonl"))
    before = (tmp_path / "dataset_info.json").read_text()
    with pytest.raises(SPRError, match="already registered.*--overwrite"):
        register_dataset(tmp_path, "spr_a", ranking_entry("other.jsonl"))
    assert (tmp_path / "dataset_info.json").read_text() == before
    register_dataset(tmp_path, "spr_a", ranking_entry("other.jsonl"), overwrite=True)
    assert json.loads((tmp_path / "dataset_info.json").read_text())["spr_a"]["file_name"] == "other.jsonl"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_malformed_dataset_info_is_left_untouched(tmp_path, content):
    path = tmp_path / "dataset_info.json"
    path.write_text(content)
    with pytest.raises(SPRError, match="nothing was changed"):
        register_dataset(tmp_path, "spr_a", ranking_entry("spr_a.jsonl"))
    assert path.read_text() == content


def _register(args):
    directory, name = args
    register_dataset(directory, name, ranking_entry(f"{name}.jsonl"))


def test_concurrent_registrations_lose_no_entry(tmp_path):
    names = [f"ds_{i}" for i in range(24)]
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_register, [(str(tmp_path), n) for n in names])
    assert sorted(json.loads((tmp_path / "dataset_info.json").read_text())) == sorted(names)
