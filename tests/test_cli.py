"""The `spr` command: the stage chain, and one clear line for each bad input with no traceback and nothing
existing touched. In process (``main(argv)``, :func:`helpers.run_spr`), plus subprocess smoke tests of the
real entry points (``python -m spr_plugin.cli`` and the ``spr`` console script)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from candidates_factory import write_candidates
from helpers import run_spr as spr
from spr_plugin.demo.scenes import render_scenes

SPR = [sys.executable, "-m", "spr_plugin.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def spr_process(*args, cwd=None):
    return subprocess.run([*SPR, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    for frag in fragments:
        assert frag in errors[0], errors[0]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_scenes")
    return render_scenes(root, n_images=4, seed=5)


@pytest.fixture(scope="module")
def staged(scenes, tmp_path_factory):
    """regions -> (test candidates) -> pair -> export, each stage through the CLI."""
    work = tmp_path_factory.mktemp("cli_work")
    p = spr("regions", "--annotations", scenes, "--images", scenes.parent / "images", "--out", work / "regions.jsonl")
    assert p.returncode == 0, p.stderr
    write_candidates(work / "regions.jsonl", work / "candidates.jsonl")
    p = spr("pair", "--regions", work / "regions.jsonl", "--candidates", work / "candidates.jsonl", "--out", work / "pairs.jsonl")
    assert p.returncode == 0, p.stderr
    return work


def _root(staged: Path) -> str:
    """The image folder the staged regions were sampled from: ``--images`` of every later stage reading images."""
    return json.loads((staged / "regions.jsonl").read_text().splitlines()[0])["image_root"]


def test_stage_by_stage_chain(staged, tmp_path):
    first = json.loads((staged / "pairs.jsonl").read_text().splitlines()[0])
    assert first["chosen"]["refined"] is True and first["rejected"]["refined"] is False
    data = tmp_path / "data"
    p = spr("export", "--pairs", staged / "pairs.jsonl", "--dataset-dir", data, "--name", "spr_cli", "--images", _root(staged))
    assert p.returncode == 0, p.stderr
    n_pairs = len((staged / "pairs.jsonl").read_text().splitlines())
    assert len((data / "spr_cli.jsonl").read_text().splitlines()) == n_pairs
    assert json.loads((data / "dataset_info.json").read_text())["spr_cli"]["ranking"] is True


def test_chosen_is_the_refined_close_description(staged):
    for line in (staged / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        assert pair["chosen"]["candidate"]["sample_idx"] == 0  # the close boxes, snapped
        assert pair["rejected"]["candidate"]["sample_idx"] in (1, 2)
        assert "pink elephant<|object_ref_end|>" not in pair["chosen"]["candidate"]["text"]
        assert pair["chosen"]["localization"]["score"] > 0.99


def test_help_lists_every_stage():
    p = spr_process("--help")  # smoke test of `python -m spr_plugin.cli`
    assert p.returncode == 0
    for cmd in ("regions", "generate", "pair", "export", "register", "build", "demo"):
        assert cmd in p.stdout


def test_missing_annotation_file(tmp_path):
    p = spr(
        "build",
        "--annotations",
        tmp_path / "nope.json",
        "--images",
        tmp_path,
        "--candidates",
        tmp_path / "c.jsonl",
        "--dataset-dir",
        tmp_path / "data",
        "--work-dir",
        tmp_path / "w",
    )
    assert_user_error(p, "annotation file not found", "nope.json")


def test_malformed_annotation_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    # Smoke test of the installed `spr` console script: a user error through a real process is one line, exit 2.
    spr_script = Path(sys.executable).with_name("spr")
    cmd = [str(spr_script) if spr_script.exists() else "spr", "regions", "--annotations", str(bad), "--images", str(tmp_path)]
    p = subprocess.run([*cmd, "--out", str(tmp_path / "r.jsonl")], capture_output=True, text=True, env=ENV, timeout=300)
    assert_user_error(p, "bad.json", "not valid JSON")


def test_empty_candidate_file(staged, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    p = spr("pair", "--regions", staged / "regions.jsonl", "--candidates", empty, "--out", tmp_path / "p.jsonl")
    assert_user_error(p, "empty.jsonl", "holds no candidates")


def test_bad_candidate_line_names_file_and_line(staged, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"region_id": "1_0", "text": "ok"}\n{"region_id": "1_0"}\n')
    p = spr("pair", "--regions", staged / "regions.jsonl", "--candidates", bad, "--out", tmp_path / "p.jsonl")
    assert_user_error(p, "bad.jsonl:2", "not a valid candidate")


def test_unparseable_model_output_is_counted_not_fatal(staged, tmp_path):
    regions = [json.loads(line) for line in (staged / "regions.jsonl").read_text().splitlines()]
    cands = tmp_path / "garbage.jsonl"
    with cands.open("w") as f:
        for r in regions:
            for i, t in enumerate(["<|box_start|>(1,2),(x", "}{<|object_ref_start|>", "<|box_start|>(5,5),(1,1)<|box_end|>"]):
                f.write(json.dumps({"region_id": r["region_id"], "sample_idx": i, "text": t}) + "\n")
    p = spr("pair", "--regions", staged / "regions.jsonl", "--candidates", cands, "--out", tmp_path / "p.jsonl")
    assert "Traceback" not in p.stderr
    stats = json.loads(p.stdout)
    assert stats["boxes_dropped_by_parser"] == {"truncated": len(regions), "reversed": len(regions)}


def test_name_clash_leaves_existing_dataset_untouched(staged, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    info = {"spr_cli": {"file_name": "users_own.json"}, "other": {"file_name": "o.json"}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    argv = ["export", "--pairs", staged / "pairs.jsonl", "--dataset-dir", data, "--name", "spr_cli", "--images", _root(staged)]
    assert_user_error(spr(*argv), "already registered", "never replaces an entry it did not write")
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    p = spr(*argv, "--overwrite")
    assert_user_error(p, "already registered", "not even with --overwrite")  # the user's entry, for their own file
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_missing_image_at_export_skips_and_names_the_pair(staged, tmp_path):
    pairs = [json.loads(line) for line in (staged / "pairs.jsonl").read_text().splitlines()]
    pairs[0]["region"]["image_path"] = str(Path(pairs[0]["region"]["image_root"]) / "gone.jpg")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    shutil.copy(staged / "pairs.jsonl.manifest.json", tmp_path / "pairs.jsonl.manifest.json")  # its format record
    p = spr("export", "--pairs", tmp_path / "pairs.jsonl", "--dataset-dir", tmp_path / "data", "--images", _root(staged))
    assert p.returncode == 0 and "skipped 1 pairs" in p.stderr and "gone.jpg (missing image)" in p.stderr, p.stderr
    assert len((tmp_path / "data" / "spr_qwen2vl.jsonl").read_text().splitlines()) == len(pairs) - 1
    (tmp_path / "one.jsonl").write_text(json.dumps(pairs[0]) + "\n")  # nothing left: one line, nothing written
    shutil.copy(staged / "pairs.jsonl.manifest.json", tmp_path / "one.jsonl.manifest.json")
    assert_user_error(
        spr("export", "--pairs", tmp_path / "one.jsonl", "--dataset-dir", tmp_path / "d2", "--images", _root(staged)), "gone.jpg"
    )
    assert not (tmp_path / "d2" / "spr_qwen2vl.jsonl").exists()


@pytest.mark.parametrize(
    "flags, message", [(["--lam", "2"], "lambda must lie in [0, 1]"), (["--box-format", "qwen9"], "unknown box format")]
)
def test_bad_settings_are_clear_errors(staged, tmp_path, flags, message):
    regions, candidates = staged / "regions.jsonl", staged / "candidates.jsonl"
    p = spr("pair", "--regions", regions, "--candidates", candidates, "--out", tmp_path / "p.jsonl", *flags)
    assert_user_error(p, message)


def test_build_without_candidate_source(scenes, tmp_path):
    p = spr("build", "--annotations", scenes, "--images", scenes.parent / "images", "--dataset-dir", tmp_path / "d")
    assert_user_error(p, "--candidates", "--model")


def test_the_parser_imports_no_heavy_library():
    """`spr --help` and `spr register` build the whole parser: its flags come from the settings' fields, and none
    of that may import torch, transformers, numpy or scipy (8 concurrent `spr register` must stay quick)."""
    code = (
        "import sys; from spr_plugin.cli import build_parser; build_parser(); "
        "print(sorted({'torch', 'transformers', 'numpy', 'scipy'} & set(sys.modules)))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_flags_come_from_the_settings_fields():
    """Every command-line field of the configs is a flag with the field's default and help text."""
    import dataclasses

    from spr_plugin.cli import build_parser
    from spr_plugin.settings import PairingConfig, RegionConfig, ScoringConfig

    build = next(a for a in build_parser()._subparsers._group_actions[0].choices["build"]._actions if a.dest == "lam")
    assert build.default == ScoringConfig().lam and "semantic score" in build.help
    parser = build_parser()
    args = parser.parse_args(["build", "--annotations", "a.json", "--images", "img"])
    for cls in (RegionConfig, ScoringConfig, PairingConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") and f.name != "box_format":  # box_format: None = as the candidates record it
                assert getattr(args, f.name) == f.default, f.name
                assert f.metadata["help"], f.name


def test_output_piped_into_a_reader_that_leaves_is_no_traceback(tmp_path):
    """`spr recipes | head`: the reader may close the pipe before spr writes (here `true`, which never reads, so
    every write meets a closed pipe); spr ends quietly, as Unix tools do."""
    proc = subprocess.run(
        f"{sys.executable} -m spr_plugin.cli recipes | true; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout.strip() == "0" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
