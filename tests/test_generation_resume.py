"""Resume for real: `spr generate` killed with SIGKILL mid-run and started again ends with every
(region, variant, sample) key exactly once and keeps every line the killed run had finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from spr_plugin.core.errors import SPRError
from spr_plugin.core.options import VARIANTS
from spr_plugin.core.records import Region
from spr_plugin.families.profiles import get_box_format
from spr_plugin.generation.candidates import _exclusive, generate_candidates, read_candidates
from spr_plugin.generation.transformers_backend import TransformersGenerator
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions
from spr_plugin.settings import GenerationConfig

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
N_SAMPLES = 2


@pytest.fixture(scope="module")
def regions_file(synthetic_scenes, tmp_path_factory):
    coco = load_coco(synthetic_scenes)
    regions = list(sample_regions(coco, synthetic_scenes.parent / "images", RegionConfig(regions_per_image=1)))
    path = tmp_path_factory.mktemp("resume") / "regions.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in regions))
    return path


def _generate_cmd(regions_file, out, model):
    return [
        sys.executable, "-m", "spr_plugin.cli", "generate", "--regions", str(regions_file), "--out", str(out),
        "--model", str(model), "--num-samples", str(N_SAMPLES), "--max-new-tokens", "8", "--batch-size", "1",
        "--no-progress", "--images", json.loads(Path(regions_file).read_text().splitlines()[0])["image_root"],
    ]  # fmt: skip


def _lines(path):
    return path.read_text().splitlines(keepends=True) if path.exists() else []


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes_without_duplicates(regions_file, tiny_qwen2vl, tmp_path):
    out = tmp_path / "candidates.jsonl"
    proc = subprocess.Popen(
        _generate_cmd(regions_file, out, tiny_qwen2vl), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while len(_lines(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    regions = [Region.from_dict(json.loads(line)) for line in regions_file.read_text().splitlines()]
    expected = {(r.region_id, v, s) for r in regions for v in VARIANTS for s in range(N_SAMPLES)}
    killed = [line for line in _lines(out) if line.endswith("\n")]
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= len(killed) < len(expected), "the run must be killed mid-way for this test to mean anything"

    done = subprocess.run(_generate_cmd(regions_file, out, tiny_qwen2vl), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    final = _lines(out)
    assert final[: len(killed)] == killed  # nothing the killed run finished was lost or rewritten
    keys = Counter(c.key for c in read_candidates(out))
    assert set(keys) == expected and max(keys.values()) == 1
    assert stats["already_done"] == len(killed) and stats["generated"] == len(expected) - len(killed)


def test_torn_last_line_is_repaired_and_regenerated(regions_file, tiny_qwen2vl, tmp_path):
    regions = [Region.from_dict(json.loads(line)) for line in regions_file.read_text().splitlines()][:2]
    gen = TransformersGenerator(GenerationConfig(model=str(tiny_qwen2vl), num_samples=2, max_new_tokens=4))
    fmt = get_box_format("qwen2_vl")
    out = tmp_path / "c.jsonl"
    kw = dict(variants=("box_text",), num_samples=2, batch_size=2, temperature=0.9, progress=False)
    generate_candidates(regions, gen, fmt, out, **kw)
    lines = _lines(out)
    out.write_text("".join(lines[:-1]) + lines[-1][:15])  # a writer killed in the middle of its last line
    stats = generate_candidates(regions + regions, gen, fmt, out, **kw)  # listing regions twice changes nothing
    assert stats.generated == 1 and stats.already_done == 3
    keys = Counter(c.key for c in read_candidates(out))
    assert len(keys) == 4 and max(keys.values()) == 1
    assert out.read_text().endswith("\n")


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    out = tmp_path / "c.jsonl"
    with _exclusive(out):
        with pytest.raises(SPRError, match="another process is writing"):
            with _exclusive(out):
                pass
    with _exclusive(out):  # released again
        pass
