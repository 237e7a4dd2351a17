"""Every user-facing error of the core feeds its bad input here and checks the message names the cause."""

import json
from dataclasses import replace

import pytest

from candidates_factory import write_candidates
from helpers import region
from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import JsonlAppender, read_jsonl
from spr_plugin.core.records import Candidate
from spr_plugin.demo.run import run_demo
from spr_plugin.families.profiles import get_box_format
from spr_plugin.families.prompts import build_prompt
from spr_plugin.generation.candidates import read_candidates
from spr_plugin.generation.transformers_backend import TransformersGenerator
from spr_plugin.llamafactory.export import ExportConfig, export_dataset
from spr_plugin.llamafactory.train import run_train
from spr_plugin.pipeline import build_dataset
from spr_plugin.regions.sampling import RegionConfig
from spr_plugin.settings import BuildConfig, DemoConfig, GenerationConfig, PairingConfig


def test_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"region_id": "a", "text": "x"}\nnot json\n{"region_id": "b", "text": "y"}\n')
    with pytest.raises(SPRError, match=r"c\.jsonl:2: not valid JSON"):
        list(read_jsonl(path, Candidate.from_dict))
    path.write_text('{"region_id": "a", "text": "x"}\n[1, 2]\n')
    with pytest.raises(SPRError, match=r"c\.jsonl:2: expected a JSON object"):
        list(read_jsonl(path, Candidate.from_dict))
    with pytest.raises(SPRError, match="candidate file not found"):
        read_candidates(tmp_path / "missing.jsonl")


def test_torn_last_line_of_a_killed_writer_is_skipped_and_repaired(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"region_id": "a", "text": "x"}\n{"region_id": "b", "te')
    assert [c.region_id for c in read_candidates(path)] == ["a"]
    with JsonlAppender(path) as sink:  # reopening for append cuts the torn line first
        sink.write({"region_id": "c", "text": "z"})
    assert [c.region_id for c in read_candidates(path)] == ["a", "c"]


def test_export_refuses_bad_names_modes_and_empty_input(tmp_path):
    with pytest.raises(SPRError, match="invalid dataset name"):
        ExportConfig(tmp_path, name="../evil")
    with pytest.raises(SPRError, match="unknown image mode"):
        ExportConfig(tmp_path, image_mode="symlink")
    with pytest.raises(SPRError, match="no preference pairs"):
        export_dataset([], ExportConfig(tmp_path), get_box_format("qwen2_vl"))


def test_generation_settings_and_missing_model(tmp_path):
    with pytest.raises(SPRError, match="temperature must be > 0"):
        GenerationConfig(model="m", temperature=0)
    with pytest.raises(SPRError, match="unknown prompt variants"):
        GenerationConfig(model="m", variants=("box_text", "poem"))
    with pytest.raises(SPRError, match="cannot load the generator model"):
        TransformersGenerator(GenerationConfig(model=str(tmp_path / "no-model")))
    with pytest.raises(SPRError, match="unknown prompt variant 'poem'"):
        build_prompt("poem", region(), get_box_format("qwen2_vl"))


def test_missing_recipe(tmp_path):
    with pytest.raises(SPRError, match="training recipe not found"):
        run_train(tmp_path / "nope.yaml", log_path=tmp_path / "log")
    with pytest.raises(SPRError, match="training recipe not found"):
        run_demo(DemoConfig(out_dir=tmp_path, recipe=tmp_path / "nope.yaml"))


def _build_config(tmp_path, scenes, **kw):
    return BuildConfig(
        annotations=scenes,
        image_root=scenes.parent / "images",
        work_dir=tmp_path / "work",
        dataset_dir=tmp_path / "data",
        name="spr_err",
        **kw,
    )


def test_build_with_no_usable_region(tmp_path, synthetic_scenes):
    cands = tmp_path / "c.jsonl"
    cands.write_text('{"region_id": "1_0", "text": "x"}\n')
    cfg = _build_config(tmp_path, synthetic_scenes, regions=RegionConfig(k=50), candidates_file=cands)
    with pytest.raises(SPRError, match="no query region could be sampled.*too_few_objects"):
        build_dataset(cfg)
    assert not (tmp_path / "data").exists()


def test_build_where_no_pair_survives_writes_no_dataset(tmp_path, synthetic_scenes):
    cfg = _build_config(tmp_path, synthetic_scenes, candidates_file=tmp_path / "c.jsonl", pairing=PairingConfig(min_margin=5.0))
    from spr_plugin.pipeline import build_regions

    build_regions(cfg)
    write_candidates(tmp_path / "work" / "regions.jsonl", tmp_path / "c.jsonl")
    with pytest.raises(SPRError, match="no preference pair survived.*low_margin"):
        build_dataset(cfg)
    assert not (tmp_path / "data" / "spr_err.jsonl").exists()
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["pairs"]["pairs"] == 0 and summary["pairs"]["pairs_skipped"]["low_margin"] > 0


def test_existing_dataset_file_is_not_overwritten(tmp_path, synthetic_scenes):
    data = tmp_path / "data"
    data.mkdir()
    (data / "spr_err.jsonl").write_text("precious\n")
    cfg = _build_config(tmp_path, synthetic_scenes, candidates_file=tmp_path / "c.jsonl")
    with pytest.raises(SPRError, match="already exists and spr did not write it"):
        build_dataset(cfg)
    assert (data / "spr_err.jsonl").read_text() == "precious\n"
    with pytest.raises(SPRError, match="already exists and spr did not write it"):  # --overwrite replaces only spr's files
        build_dataset(replace(cfg, overwrite=True))
    assert (data / "spr_err.jsonl").read_text() == "precious\n"


def test_an_input_that_is_a_folder_fifo_or_dangling_link_is_said_as_it_is(tmp_path):
    """Not "not found" (it is there), and never a read that blocks on a FIFO."""
    import os

    from spr_plugin.core.jsonl import read_json

    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name, kind in (("folder", "a folder"), ("fifo", "a FIFO or device"), ("dangling", "a link to nothing")):
        with pytest.raises(SPRError, match=f"annotation file .*{name} is {kind}, not a regular file"):
            read_json(tmp_path / name, "annotation file")
        with pytest.raises(SPRError, match=f"pair file .*{name} is {kind}, not a regular file"):
            list(read_jsonl(tmp_path / name, dict, what="pair"))
    with pytest.raises(SPRError, match="pair file not found"):
        list(read_jsonl(tmp_path / "missing.jsonl", dict, what="pair"))
