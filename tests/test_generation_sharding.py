"""Sharding splits regions deterministically (order-independent, disjoint, complete); shard files merge
into one candidate set without duplicates; `accelerate launch` runs one shard per process for real."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections import Counter

import pytest

from candidates_factory import write_candidates
from helpers import region
from spr_plugin.cli import main
from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.records import Candidate
from spr_plugin.generation.candidates import merge_candidates, read_candidates
from spr_plugin.generation.sharding import ShardSpec, launched_world, resolve_shard, select_shard, shard_of, shard_path
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _regions(n):
    base = region()
    return [type(base)(f"{i}_0", i, base.image_path, base.width, base.height, base.box, base.objects, 1) for i in range(n)]


def test_shards_are_disjoint_complete_and_independent_of_order():
    regions = _regions(500)
    shards = [[r.region_id for r in select_shard(regions, ShardSpec(i, 4))] for i in range(4)]
    ids = [r.region_id for r in regions]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert all(len(s) > 80 for s in shards)  # roughly balanced (125 expected each)
    shuffled = regions[:]
    random.Random(3).shuffle(shuffled)
    for i in range(4):
        assert {r.region_id for r in select_shard(shuffled, ShardSpec(i, 4))} == set(shards[i])
    # A region's shard depends on its id only, not on which other regions exist.
    assert [shard_of(r.region_id, 4) for r in regions[:50]] == [shard_of(r.region_id, 4) for r in _regions(50)]
    assert [r.region_id for r in select_shard(regions, ShardSpec())] == ids


def test_shard_spec_parsing_and_file_names(tmp_path):
    assert ShardSpec.parse(" 2 / 5 ") == ShardSpec(2, 5)
    for bad in ("5/5", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError):
            ShardSpec.parse(bad)
    assert shard_path(tmp_path / "c.jsonl", ShardSpec(1, 4)).name == "c.shard-00001-of-00004.jsonl"
    assert shard_path(tmp_path / "c.jsonl", ShardSpec()) == tmp_path / "c.jsonl"


def test_launcher_environment_decides_the_default_shard(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world() is None and resolve_shard(None) == ShardSpec()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert launched_world() == (3, 4)
    assert resolve_shard("1/2") == ShardSpec(1, 2)  # an explicit --shard wins


def test_merge_drops_duplicate_keys_and_keeps_the_first(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rows_a = [Candidate("r1", "box_text", i, f"a{i}") for i in range(3)]
    rows_b = [Candidate("r1", "box_text", 2, "dup"), Candidate("r2", "crop", 0, "b0")]
    a.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in rows_a))
    b.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in rows_b))
    merged, stats = merge_candidates([a, b, a])
    assert [c.text for c in merged] == ["a0", "a1", "a2", "b0"]
    assert stats.duplicates == 4 and stats.candidates == 4 and stats.files == 3
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SPRError, match="empty.jsonl holds no candidates"):
        merge_candidates([empty])


def test_spr_merge_and_pair_accept_shard_files(synthetic_scenes, tmp_path, capsys):
    regions_file = tmp_path / "regions.jsonl"
    coco = load_coco(synthetic_scenes)
    regions = list(sample_regions(coco, synthetic_scenes.parent / "images", RegionConfig()))
    regions_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in regions))
    full = tmp_path / "all.jsonl"
    write_candidates(regions_file, full)
    lines = full.read_text().splitlines(keepends=True)
    shard_files = []
    for i in range(2):  # split the candidates by their region's shard, with one duplicated line
        p = tmp_path / f"c.shard-{i}.jsonl"
        p.write_text("".join(line for line in lines if shard_of(json.loads(line)["region_id"], 2) == i) + lines[0])
        shard_files.append(p)
    merged = tmp_path / "merged.jsonl"
    assert main(["merge", "--candidates", *map(str, shard_files), "--out", str(merged)]) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"] == 2  # lines[0] was added to both files
    assert sorted(c.key for c in read_candidates(merged)) == sorted(c.key for c in read_candidates(full))
    pairs = tmp_path / "pairs.jsonl"
    assert main(["pair", "--regions", str(regions_file), "--candidates", *map(str, shard_files), "--out", str(pairs)]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"] == len(lines)
    assert main(["merge", "--candidates", str(merged), "--out", str(merged)]) == 2
    assert "is one of the inputs" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_runs_one_shard_per_process(synthetic_scenes, tiny_qwen2vl, tmp_path):
    """`accelerate launch --multi_gpu` on this CPU machine: two processes over gloo, each takes its own
    shard from PartialState and writes its own file; on a GPU node the same command puts one GPU per process."""
    regions_file = tmp_path / "regions.jsonl"
    coco = load_coco(synthetic_scenes)
    regions = list(sample_regions(coco, synthetic_scenes.parent / "images", RegionConfig()))
    regions_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in regions))
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        "-m", "spr_plugin.cli", "generate", "--regions", str(regions_file), "--out", str(tmp_path / "c.jsonl"),
        "--model", str(tiny_qwen2vl), "--device", "auto", "--variants", "box_text", "--num-samples", "2",
        "--max-new-tokens", "4", "--no-progress", "--images", str(synthetic_scenes.parent / "images"),
    ]  # fmt: skip
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["shard"] for s in summaries) == ["0/2", "1/2"]
    files = sorted(tmp_path.glob("c.shard-*-of-00002.jsonl"))
    assert [f.name for f in files] == ["c.shard-00000-of-00002.jsonl", "c.shard-00001-of-00002.jsonl"]
    merged, stats = merge_candidates(files)
    assert stats.duplicates == 0
    keys = Counter(c.key for c in merged)
    assert set(keys) == {(r.region_id, "box_text", s) for r in regions for s in range(2)}
    for i, f in enumerate(files):  # each process generated exactly its own shard
        assert {c.region_id for c in read_candidates(f)} == {r.region_id for r in select_shard(regions, ShardSpec(i, 2))}
