"""Box formats and image frames across stage files (issue #18.4): a candidates or pairs file read in another format
or frame than it was written in must be refused in one line, with nothing written.

Each case builds a small staged route (rendered scenes -> ``spr regions`` -> hand-made candidates recorded as
``spr generate`` records its own -> ``spr pair``) in its folder and then feeds the next stage a mismatch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

from hostile_cases import HostileCase

CLS = "formats"


def _spr(*args: object) -> tuple[int, str]:
    """``spr ARGS`` in process: (exit code, stderr)."""
    from spr_plugin.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def _refused(result: tuple[int, str], *fragments: str) -> None:
    code, err = result
    assert code == 2, f"exit {code}, expected a refusal: {err[-500:]}"
    assert "Traceback" not in err, err[-500:]
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err[-500:]
    for frag in fragments:
        assert frag in lines[0], lines[0]


def _stage(tmp: Path, *, box_format: str = "qwen2_vl", max_pixels: int = 12544) -> Path:
    """regions + candidates recorded in ``box_format`` / ``max_pixels`` (as `spr generate` would) + pairs."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from candidates_factory import write_candidates
    from spr_plugin.core.manifest import record_format
    from spr_plugin.demo.scenes import render_scenes

    scenes = render_scenes(tmp / "scenes", n_images=2, seed=4)
    code, err = _spr("regions", "--annotations", scenes, "--images", scenes.parent / "images", "--out", tmp / "r.jsonl")
    assert code == 0, err
    write_candidates(tmp / "r.jsonl", tmp / "c.jsonl")
    record_format(tmp / "c.jsonl", "candidates", box_format, {"image_max_pixels": max_pixels, "image_min_pixels": 1024})
    if box_format == "qwen2_vl":
        code, err = _spr("pair", "--regions", tmp / "r.jsonl", "--candidates", tmp / "c.jsonl", "--out", tmp / "p.jsonl")
        assert code == 0, err
    return tmp


def _nothing_exported(tmp: Path) -> None:
    data = tmp / "data"
    assert not data.exists() or not any(data.iterdir()), sorted(os.listdir(data))


def export_in_another_box_format(tmp: Path) -> None:
    _stage(tmp)
    result = _spr("export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data", "--box-format", "qwen2_5_vl")
    _refused(result, "scored in box format qwen2_vl", "--box-format says qwen2_5_vl")
    _nothing_exported(tmp)


def export_in_another_frame(tmp: Path) -> None:
    _stage(tmp)
    result = _spr("export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data", "--image-max-pixels", 589824)
    _refused(result, "image_max_pixels=589824", "image_max_pixels=12544")
    _nothing_exported(tmp)


def export_with_a_recipe_in_another_frame(tmp: Path) -> None:
    _stage(tmp)
    (tmp / "r.yaml").write_text("stage: dpo\ntemplate: qwen2_vl\ndataset: x\nimage_max_pixels: 262144\n")
    result = _spr("export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data", "--recipe", tmp / "r.yaml")
    _refused(result, "image_max_pixels=12544", "image_max_pixels=262144")
    _nothing_exported(tmp)


def export_of_pairs_without_a_record(tmp: Path) -> None:
    _stage(tmp)
    (tmp / "p.jsonl.manifest.json").unlink()  # what an older spr wrote
    _refused(_spr("export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data"), "records no box format", "--box-format")
    _nothing_exported(tmp)


def pair_candidates_of_another_format(tmp: Path) -> None:
    _stage(tmp, box_format="qwen2_5_vl")
    result = _spr("pair", "--regions", tmp / "r.jsonl", "--candidates", tmp / "c.jsonl", "--out", tmp / "p.jsonl",
                  "--box-format", "qwen2_vl")  # fmt: skip
    _refused(result, "candidates are in box format qwen2_5_vl", "--box-format says qwen2_vl")
    assert not (tmp / "p.jsonl").exists()


def pair_candidates_in_another_frame(tmp: Path) -> None:
    _stage(tmp)
    (tmp / "p.jsonl").unlink()
    result = _spr("pair", "--regions", tmp / "r.jsonl", "--candidates", tmp / "c.jsonl", "--out", tmp / "p.jsonl",
                  "--image-max-pixels", 589824)  # fmt: skip
    _refused(result, "image_max_pixels=589824", "image_max_pixels=12544")
    assert not (tmp / "p.jsonl").exists()


def pair_candidate_files_that_disagree(tmp: Path) -> None:
    from spr_plugin.core.manifest import record_format

    _stage(tmp)
    (tmp / "c2.jsonl").write_text((tmp / "c.jsonl").read_text())
    record_format(tmp / "c2.jsonl", "candidates", "qwen2_vl", {"image_max_pixels": 589824, "image_min_pixels": 1024})
    for command in ("pair", "merge"):
        args = ["--candidates", tmp / "c.jsonl", tmp / "c2.jsonl", "--out", tmp / f"{command}.jsonl"]
        _refused(_spr(command, *(["--regions", tmp / "r.jsonl"] if command == "pair" else []), *args), "candidate files disagree")
        assert not (tmp / f"{command}.jsonl").exists()


def build_with_candidates_of_another_format_or_frame(tmp: Path) -> None:
    _stage(tmp)
    base = ["build", "--annotations", tmp / "scenes" / "instances.json", "--images", tmp / "scenes" / "images",
            "--candidates", tmp / "c.jsonl", "--work-dir", tmp / "work", "--dataset-dir", tmp / "data"]  # fmt: skip
    _refused(_spr(*base, "--box-format", "qwen2_5_vl"), "candidates are in box format qwen2_vl")
    _refused(_spr(*base, "--image-max-pixels", 589824), "image_max_pixels=589824", "image_max_pixels=12544")
    assert not (tmp / "work").exists()
    _nothing_exported(tmp)
    code, err = _spr(*base)  # no flag: the candidates' own format and frame
    assert code == 0, err
    assert json.loads((tmp / "data" / "spr_qwen2vl.spr.json").read_text())["frame"]["image_max_pixels"] == 12544


def merge_carries_the_record(tmp: Path) -> None:
    _stage(tmp)
    code, err = _spr("merge", "--candidates", tmp / "c.jsonl", "--out", tmp / "m.jsonl")
    assert code == 0, err
    result = _spr("pair", "--regions", tmp / "r.jsonl", "--candidates", tmp / "m.jsonl", "--out", tmp / "p2.jsonl",
                  "--box-format", "qwen2_5_vl")  # fmt: skip
    _refused(result, "candidates are in box format qwen2_vl")


def a_sidecar_that_is_not_a_record(tmp: Path) -> None:
    _stage(tmp)
    garbage = b"my own notes, not spr's\n"
    (tmp / "p.jsonl.manifest.json").write_bytes(garbage)
    _refused(_spr("export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data"), "p.jsonl.manifest.json")
    before = (tmp / "p.jsonl").read_bytes()
    _refused(_spr("pair", "--regions", tmp / "r.jsonl", "--candidates", tmp / "c.jsonl", "--out", tmp / "p.jsonl"))
    assert (tmp / "p.jsonl.manifest.json").read_bytes() == garbage and (tmp / "p.jsonl").read_bytes() == before


def a_sidecar_symlink_to_a_user_file(tmp: Path) -> None:
    _stage(tmp)
    victim = tmp / "victim.json"
    victim.write_text(json.dumps({"version": 1, "stages": {}}))
    (tmp / "p.jsonl.manifest.json").unlink()
    (tmp / "p.jsonl.manifest.json").symlink_to(victim)
    before = victim.read_bytes()
    _refused(_spr("pair", "--regions", tmp / "r.jsonl", "--candidates", tmp / "c.jsonl", "--out", tmp / "p.jsonl"), "link")
    assert victim.read_bytes() == before


def a_hand_edited_record(tmp: Path) -> None:
    _stage(tmp)
    side = tmp / "p.jsonl.manifest.json"
    record = json.loads(side.read_text())
    edits = [("box_format", "qwen9", "unknown box format"), ("frame", {"image_max_pixels": -5}, "image_max")]
    for forged in (10**29, float("nan"), float("inf"), "12544", True, 1.5):  # huge, non-finite, wrong types
        edits.append(("frame", {"image_max_pixels": forged, "image_min_pixels": 1024}, "image_max_pixels must be"))
    for key, value, fragment in edits:
        edited = json.loads(json.dumps(record))
        edited["stages"]["pairs"][key] = value
        side.write_text(json.dumps(edited))
        _refused(_spr("export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data"), fragment)
        _nothing_exported(tmp)


def export_hf_in_another_box_format(tmp: Path) -> None:
    _stage(tmp)
    code, err = _spr(
        "export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data", "--name", "ds", "--images", tmp / "scenes" / "images"
    )
    assert code == 0, err
    result = _spr("export-hf", "--dataset-dir", tmp / "data", "--name", "ds", "--out", tmp / "hf", "--box-format", "qwen2_5_vl")
    _refused(result, "box_format=qwen2_vl", "qwen2_5_vl")
    result = _spr("export-hf", "--dataset-dir", tmp / "data", "--name", "ds", "--out", tmp / "hf", "--image-max-pixels", 589824)
    _refused(result, "image_max_pixels=12544", "589824")
    assert not (tmp / "hf").exists() or not any((tmp / "hf").iterdir())


def show_in_another_box_format(tmp: Path) -> None:
    _stage(tmp)
    result = _spr("show", "--pairs", tmp / "p.jsonl", "--out", tmp / "view", "--box-format", "qwen2_5_vl")
    _refused(result, "scored in box format qwen2_vl", "--box-format says qwen2_5_vl")
    assert not (tmp / "view").exists()
    code, err = _spr(
        "show", "--pairs", tmp / "p.jsonl", "--out", tmp / "view", "-n", 1, "--images", tmp / "scenes" / "images"
    )  # its own format: drawn
    assert code == 0, err


def reexport_of_a_dataset_pairs_file_keeps_its_record(tmp: Path) -> None:
    _stage(tmp)
    code, err = _spr(
        "export", "--pairs", tmp / "p.jsonl", "--dataset-dir", tmp / "data", "--name", "ds", "--images", tmp / "scenes" / "images"
    )
    assert code == 0, err
    again = ("export", "--pairs", tmp / "data" / "ds.pairs.jsonl", "--dataset-dir", tmp / "d2", "--name", "ds")
    _refused(_spr(*again, "--box-format", "qwen2_5_vl"), "scored in box format qwen2_vl", "ds.spr.json")
    code, err = _spr(*again, "--images", tmp / "scenes" / "images")
    assert code == 0, err
    assert json.loads((tmp / "d2" / "ds.spr.json").read_text())["frame"]["image_max_pixels"] == 12544


CASES = [
    HostileCase(CLS, fn.__name__, fn)
    for fn in (
        export_in_another_box_format,
        export_in_another_frame,
        export_with_a_recipe_in_another_frame,
        export_of_pairs_without_a_record,
        pair_candidates_of_another_format,
        pair_candidates_in_another_frame,
        pair_candidate_files_that_disagree,
        build_with_candidates_of_another_format_or_frame,
        merge_carries_the_record,
        a_sidecar_that_is_not_a_record,
        a_sidecar_symlink_to_a_user_file,
        a_hand_edited_record,
        export_hf_in_another_box_format,
        show_in_another_box_format,
        reexport_of_a_dataset_pairs_file_keeps_its_record,
    )
]
