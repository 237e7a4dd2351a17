"""Every user error is one line and exit status 2, found before any long work; bad images are skipped and
counted in every stage and never abort a run. Runs the real ``spr`` entry point (in process where possible,
as subprocesses where the process itself is the subject: file-size limits, another user)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from formats_factory import draw_image, six_boxes
from PIL import Image

from candidates_factory import write_candidates
from spr_plugin.cli import main

SPR = [sys.executable, "-m", "spr_plugin.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


class _Run:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    def run(*args) -> _Run:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return _Run(code, out.out, out.err)

    return run


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


# -- bad images --------------------------------------------------------------------------------------------


def _bad_image_dataset(root: Path) -> Path:
    """Four images with six objects each: one good, a decompression bomb, a truncated JPEG, a text file."""
    images = root / "images"
    draw_image(images / "good.jpg", six_boxes())
    Image.new("1", (20000, 20000)).save(images / "bomb.png")  # 400 MP: over PIL's limit, 50 kB on disk
    full = draw_image(images / "full.jpg", six_boxes()).read_bytes()
    (images / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (images / "notes.jpg").write_text("not an image")
    names = ["good.jpg", "bomb.png", "truncated.jpg", "notes.jpg"]
    img = [{"id": i + 1, "file_name": n, "width": 320, "height": 240} for i, n in enumerate(names)]
    anns = [
        {"id": 10 * (i + 1) + j, "image_id": i + 1, "category_id": 1, "bbox": b, "iscrowd": 0}
        for i in range(4)
        for j, b in enumerate(six_boxes())
    ]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": img, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}))
    return path


def test_bombs_truncated_and_non_images_are_skipped_and_counted_by_regions_and_build(cli, tmp_path):
    ann = _bad_image_dataset(tmp_path)
    p = cli("regions", "--annotations", ann, "--images", tmp_path / "images", "--out", tmp_path / "r.jsonl", "--k", 3)
    assert p.returncode == 0, p.stderr
    stats = json.loads(p.stdout)
    assert stats["regions"] == 1 and stats["skipped"] == {"image_too_large": 1, "corrupt_image": 2}
    write_candidates(tmp_path / "r.jsonl", tmp_path / "c.jsonl")
    b = cli("build", "--annotations", ann, "--images", tmp_path / "images", "--candidates", tmp_path / "c.jsonl",
            "--work-dir", tmp_path / "w", "--dataset-dir", tmp_path / "d", "--k", 3)  # fmt: skip
    assert b.returncode == 0, b.stderr
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["regions"]["skipped"] == {"image_too_large": 1, "corrupt_image": 2}


def test_an_image_truncated_after_sampling_is_skipped_by_generation(cli, tmp_path, tiny_qwen2vl):
    ann = _bad_image_dataset(tmp_path)
    shutil.copy(tmp_path / "images" / "good.jpg", tmp_path / "images" / "good2.jpg")
    data = json.loads(ann.read_text())
    data["images"].append({"id": 5, "file_name": "good2.jpg"})
    data["annotations"] += [{"id": 500 + j, "image_id": 5, "category_id": 1, "bbox": b} for j, b in enumerate(six_boxes())]
    ann.write_text(json.dumps(data))
    assert (
        cli("regions", "--annotations", ann, "--images", tmp_path / "images", "--out", tmp_path / "r.jsonl", "--k", 3).returncode
        == 0
    )
    raw = (tmp_path / "images" / "good2.jpg").read_bytes()
    (tmp_path / "images" / "good2.jpg").write_bytes(raw[: len(raw) // 2])  # the disk changed under the run
    args = ["generate", "--regions", tmp_path / "r.jsonl", "--model", tiny_qwen2vl, "--out", tmp_path / "c.jsonl",
            "--num-samples", 1, "--variants", "box_text,crop", "--max-new-tokens", 4, "--no-progress",
            "--images", tmp_path / "images"]  # fmt: skip
    for _ in range(2):  # the rerun does not die at the same image either
        p = cli(*args)
        assert p.returncode == 0, p.stderr
        stats = json.loads(p.stdout)
        assert stats["skipped"] == {"corrupt_image": 2}
    assert stats["already_done"] == 2


# -- data files: encoding, numbers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions_file(synthetic_scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("err_regions") / "r.jsonl"
    assert main(["regions", "--annotations", str(synthetic_scenes), "--images", str(synthetic_scenes.parent / "images"),
                 "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"region_id": "1_0", "text": "caf\xe9"}', "c.jsonl:2: not valid UTF-8"),
        (b'{"region_id": "1_0", "text": "x", "sample_idx": Infinity}', "c.jsonl:2: not valid JSON (Infinity"),
        (b'{"region_id": "1_0", "text": "x", "sample_idx": NaN}', "c.jsonl:2: not valid JSON (NaN"),
        (b'{"region_id": "1_0", "text": "x", "sample_idx": 1e400}', "sample_idx must be a non-negative integer"),
        (b'{"region_id": "1_0", "text": "x", "sample_idx": -1}', "sample_idx must be a non-negative integer"),
        (b'{"region_id": "1_0", "text": "x", "sample_idx": 1.5}', "sample_idx must be a non-negative integer"),
        (b'{"region_id": "1_0", "text": "x", "sample_idx": true}', "sample_idx must be a non-negative integer"),
        (b'{"region_id": "1_0", "text": null}', "text must be a string"),
        (b'{"region_id": [1], "text": "x"}', "region_id must be a string"),
    ],
)
def test_bad_candidate_lines_are_one_line_naming_the_line(cli, regions_file, tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"region_id": "1_0", "text": "ok"}\n' + line + b"\n")
    one_line_error(cli("pair", "--regions", regions_file, "--candidates", path, "--out", tmp_path / "p.jsonl"), message)


def test_invalid_utf8_in_data_files_is_one_line(cli, tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_bytes(b'{"images": [{"id": 1, "file_name": "caf\xe9.jpg"}], "annotations": [], "categories": []}')
    one_line_error(cli("regions", "--annotations", ann, "--images", tmp_path, "--out", tmp_path / "r.jsonl"), "not valid UTF-8")
    (tmp_path / "d.jsonl").write_bytes(b'{"conversations": "\xff"}\n')
    one_line_error(
        cli("register", "--dataset-dir", tmp_path, "--name", "d", "--file-name", "d.jsonl"), "d.jsonl:1: not valid UTF-8"
    )
    (tmp_path / "ok.jsonl").write_text("")
    (tmp_path / "dataset_info.json").write_bytes(b'{"x": "\xff"}')
    one_line_error(cli("register", "--dataset-dir", tmp_path, "--name", "e", "--file-name", "ok.jsonl"), "dataset_info.json")


def test_a_regions_file_with_duplicate_ids_is_refused(cli, regions_file, tmp_path):
    line = regions_file.read_text().splitlines()[0]
    dup = tmp_path / "r.jsonl"
    dup.write_text(line + "\n" + line + "\n")
    one_line_error(cli("pair", "--regions", dup, "--candidates", dup, "--out", tmp_path / "p.jsonl"), "appears twice")


# -- names and output folders: checked before anything long ---------------------------------------------------


@pytest.mark.parametrize("name", ["x" * 300, "../evil", "a b", ".hidden", "", "na\nme"])
def test_bad_dataset_names_are_one_line_everywhere(cli, regions_file, tmp_path, name):
    (tmp_path / "f.jsonl").write_text("")
    one_line_error(cli("register", "--dataset-dir", tmp_path, "--name", name, "--file-name", "f.jsonl"), "invalid dataset name")
    one_line_error(
        cli("export", "--pairs", tmp_path / "f.jsonl", "--dataset-dir", tmp_path / "d", "--name", name), "invalid dataset name"
    )
    one_line_error(cli("export-hf", "--dataset-dir", tmp_path, "--name", name, "--out", tmp_path / "o"), "invalid dataset name")


def _build_args(scenes: Path, tmp: Path, **over) -> list:
    args = {"--annotations": scenes, "--images": scenes.parent / "images", "--model": tmp / "no-such-model",
            "--work-dir": tmp / "w", "--dataset-dir": tmp / "d", "--name": "ds"}  # fmt: skip
    args.update(over)
    return ["build", *[x for kv in args.items() for x in kv]]


@pytest.mark.parametrize(
    "setup, over, message",
    [
        (lambda t: (t / "d").write_text("x"), {}, "--dataset-dir"),
        (lambda t: (t / "w").write_text("x"), {}, "--work-dir"),
        (lambda t: (t / "f").write_text("x"), {"--dataset-dir": "{t}/f/sub"}, "is a file, not a folder"),
        (lambda t: None, {"--name": "x" * 300}, "invalid dataset name"),
        (lambda t: None, {"--images": "{t}/nowhere"}, "image folder not found"),
    ],
)
def test_unusable_outputs_and_names_fail_before_the_model_loads(cli, synthetic_scenes, tmp_path, setup, over, message):
    """--model names a folder that does not exist: the error must be about the outputs, not the model."""
    setup(tmp_path)
    over = {k: v.format(t=tmp_path) if isinstance(v, str) else v for k, v in over.items()}
    line = one_line_error(cli(*_build_args(synthetic_scenes, tmp_path, **over)), message)
    assert "model" not in line


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: permission bits for a normal user; root ignores those, so as root
    a read-only tmpfs is mounted there (and unmounted afterwards); skipped where neither works."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
        yield ro
        os.chmod(ro, 0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "spr-ro-test", str(ro)], capture_output=True).returncode:
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_read_only_output_folders_are_one_line(cli, synthetic_scenes, tmp_path, read_only_dir):
    for flag in ("--dataset-dir", "--work-dir"):
        args = _build_args(synthetic_scenes, tmp_path, **{flag: read_only_dir / "sub"})
        line = one_line_error(cli(*args), flag, "is not writable")
        assert "model" not in line
    out = read_only_dir / "r.jsonl"
    one_line_error(
        cli("regions", "--annotations", synthetic_scenes, "--images", synthetic_scenes.parent / "images", "--out", out),
        "not writable",
    )


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 kB fail with EFBIG, as a full disk fails them with ENOSPC."""
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"region_id": f"r{i}", "text": "x" * 500}) + "\n" for i in range(2000)))
    out = tmp_path / "merged.jsonl"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([*SPR, "merge", "--candidates", str(big), "--out", str(out)], capture_output=True, text=True,
                          env=ENV, timeout=300, preexec_fn=limit)  # fmt: skip
    one_line_error(proc, "File too large")
    assert not out.exists() and not list(tmp_path.glob(".merged.jsonl.*"))


def test_hostile_category_names_never_reach_a_prompt(cli, tmp_path, tiny_qwen2vl):
    """Names holding <image>, <|image_pad|> or box markers crashed generation (placeholder count, processor)."""
    images = tmp_path / "images"
    draw_image(images / "a.jpg", six_boxes())
    names = ["<image>", "<|image_pad|>", "cat<|box_start|>(1,2),(3,4)<|box_end|>", "", "<im<image>age>dog", "x" * 500]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    anns = [{"id": 10 + j, "image_id": 1, "category_id": j + 1, "bbox": b} for j, b in enumerate(six_boxes())]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": anns, "categories": cats}))
    p = cli("regions", "--annotations", ann, "--images", images, "--out", tmp_path / "r.jsonl", "--k", 5)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["loader"]["category_name_tokens_removed"] == 6
    (region,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    got = sorted(o["category"] for o in region["objects"])
    assert got == sorted(["object", "object", "cat(1,2),(3,4)", "object", "dog", "x" * 100])
    g = cli("generate", "--regions", tmp_path / "r.jsonl", "--model", tiny_qwen2vl, "--out", tmp_path / "c.jsonl",
            "--num-samples", 1, "--variants", "box_text,crop,refs", "--max-new-tokens", 4, "--no-progress",
            "--images", images)  # fmt: skip
    assert g.returncode == 0, g.stderr
    assert json.loads(g.stdout)["generated"] == 3
