"""Image paths and copies: a pairs or regions file cannot copy files from outside its image root into a
dataset, copies are atomic and verified, --overwrite replaces images, exports of one name are serialised,
and dataset_info.json keeps its mode and symlink target. Real files, real subprocesses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from candidates_factory import write_candidates
from spr_plugin.cli import main
from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.jsonl import atomic_write_text
from spr_plugin.core.manifest import record_format
from spr_plugin.inspect.hf_export import export_hf
from spr_plugin.llamafactory.registry import ranking_entry, register_dataset

SPR = [sys.executable, "-m", "spr_plugin.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def spr(*args, **kw):
    return subprocess.run([*SPR, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, **kw)


class _Run:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def cli(capsys):
    """The ``spr`` entry point in process (the same code path as the console script, without a new interpreter)."""

    def run(*args) -> _Run:
        code = main([str(a) for a in args])
        return _Run(code, capsys.readouterr().err)

    return run


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pairs_file(synthetic_scenes, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("export_pairs")
    images = synthetic_scenes.parent / "images"
    assert main(["regions", "--annotations", str(synthetic_scenes), "--images", str(images), "--out", str(work / "r.jsonl")]) == 0
    write_candidates(work / "r.jsonl", work / "c.jsonl")
    assert (
        main(
            [
                "pair",
                "--regions",
                str(work / "r.jsonl"),
                "--candidates",
                str(work / "c.jsonl"),
                "--out",
                str(work / "pairs.jsonl"),
            ]
        )
        == 0
    )
    return work / "pairs.jsonl"


def _pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _images(pairs_file: Path) -> list[str]:
    """``--images`` naming the folder the pairs were sampled from: the only folder an export may read."""
    return ["--images", _pairs(pairs_file)[0]["region"]["image_root"]]


def _write(path: Path, pairs: list[dict]) -> Path:
    """Edited pairs with the record `spr pair` writes next to them (these cases are about images, not formats)."""
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    record_format(path, "pairs", "qwen2_vl", ImageFrame().to_dict())
    return path


@pytest.mark.parametrize("target", ["/etc/shadow", "/etc/passwd", "{tmp}/secret.png", "{root}/../secret.png"])
def test_a_pairs_file_cannot_export_files_outside_its_image_root(cli, pairs_file, tmp_path, target):
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")  # even a real image outside the root is refused
    pairs = _pairs(pairs_file)
    pairs[0]["region"]["image_path"] = target.format(tmp=tmp_path, root=pairs[0]["region"]["image_root"])
    bad = _write(tmp_path / "evil.jsonl", pairs)
    one_line_error(cli("export", "--pairs", bad, "--dataset-dir", tmp_path / "data"), "points outside", "refusing")
    root = pairs[0]["region"]["image_root"]
    one_line_error(cli("export", "--pairs", bad, "--dataset-dir", tmp_path / "data", "--images", root), "points outside")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_a_pairs_file_naming_root_slash_cannot_export_anything(cli, pairs_file, tmp_path):
    pairs = _pairs(pairs_file)
    pairs[0]["region"]["image_root"] = "/"
    pairs[0]["region"]["image_path"] = "/etc/passwd"
    bad = _write(tmp_path / "evil.jsonl", pairs)
    # the root a file records is never trusted (docs/inputs.md): without --images nothing is read
    one_line_error(cli("export", "--pairs", bad, "--dataset-dir", tmp_path / "data"), "/etc/passwd", "points outside")
    # a root the user names that holds a non-image: that pair is skipped, counted and named (#18: one bad image
    # does not abort an export), and nothing of it is exported
    run = cli("export", "--pairs", bad, "--dataset-dir", tmp_path / "data", "--images", "/etc", *_images(pairs_file))
    assert run.returncode == 0 and "skipped 1 pairs" in run.stderr and "/etc/passwd (corrupt image)" in run.stderr, run.stderr
    secret = Path("/etc/passwd").read_bytes()
    assert all(f.read_bytes() != secret for f in (tmp_path / "data").rglob("*") if f.is_file())
    assert "/etc/passwd" not in (tmp_path / "data" / "spr_qwen2vl.jsonl").read_text()
    # --images pins the root whatever the file says
    one_line_error(cli("export", "--pairs", bad, "--dataset-dir", tmp_path / "d2", "--images", tmp_path), "points outside")
    assert not (tmp_path / "d2" / "spr_qwen2vl.jsonl").exists()


def test_pairs_need_images_whatever_root_they_record(cli, pairs_file, tmp_path):
    pairs = _pairs(pairs_file)
    hint = f"pass --images {pairs[0]['region']['image_root']} if you trust this file"
    one_line_error(cli("export", "--pairs", pairs_file, "--dataset-dir", tmp_path / "d0"), "no --images given", hint)
    for p in pairs:
        del p["region"]["image_root"]
    old = _write(tmp_path / "old.jsonl", pairs)
    one_line_error(cli("export", "--pairs", old, "--dataset-dir", tmp_path / "d1"), "points outside", "--images")
    root = Path(_pairs(pairs_file)[0]["region"]["image_root"])
    ok = cli("export", "--pairs", old, "--dataset-dir", tmp_path / "d2", "--images", root)
    assert ok.returncode == 0, ok.stderr


def test_overwrite_replaces_and_removes_only_what_spr_wrote(cli, pairs_file, tmp_path):
    data = tmp_path / "data"
    assert cli("export", "--pairs", pairs_file, "--dataset-dir", data, "--name", "ds", *_images(pairs_file)).returncode == 0
    folder = data / "ds" / "images"
    copies = sorted(folder.iterdir())
    assert len(copies) > 1
    mine, users_tmp, spr_tmp = folder / "999_old.jpg", folder / ".leftover.jpg.abc.tmp", folder / ".spr-abcd1234.tmp"
    mine.write_bytes(b"the user's own file")
    users_tmp.write_bytes(b"the user's too")
    spr_tmp.write_bytes(b"half")  # what a killed copy leaves behind
    victim = copies[0]
    original = victim.read_bytes()
    victim.write_bytes(original[:100])  # changed since spr wrote it: no longer spr's
    one_line_error(
        cli("export", "--pairs", pairs_file, "--dataset-dir", data, "--name", "ds", "--overwrite", *_images(pairs_file)),
        str(victim),
    )
    assert victim.read_bytes() == original[:100] and spr_tmp.exists()  # a refused export changes nothing
    victim.write_bytes(original)
    # fewer pairs: the images only the dropped pairs used are spr's stale files and go; the user's stay
    pairs = _pairs(pairs_file)
    fewer = _write(tmp_path / "fewer.jsonl", [p for p in pairs if p["region"]["image_path"] == pairs[0]["region"]["image_path"]])
    p = cli("export", "--pairs", fewer, "--dataset-dir", data, "--name", "ds", "--overwrite", *_images(pairs_file))
    assert p.returncode == 0, p.stderr
    assert mine.read_bytes() == b"the user's own file" and users_tmp.exists() and not spr_tmp.exists()
    named = {json.loads(line)["images"][0] for line in (data / "ds.jsonl").read_text().splitlines()}
    left = {f"ds/images/{f.name}" for f in folder.iterdir()} - {f"ds/images/{mine.name}", f"ds/images/{users_tmp.name}"}
    # the victim was written back by the user (spr's bytes, but no longer the file spr wrote): kept, not removed
    rewritten = f"ds/images/{victim.name}"
    assert left - {rewritten} == named - {rewritten} and rewritten in left
    assert len(named) == 1


@pytest.mark.slow
def test_concurrent_exports_of_one_name_never_both_succeed(pairs_file, tmp_path):
    data = tmp_path / "data"
    procs = [
        subprocess.Popen(
            [*SPR, "export", "--pairs", str(pairs_file), "--dataset-dir", str(data), "--name", "race", *_images(pairs_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )  # fmt: skip
        for _ in range(3)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2], results
    assert all("already exists" in err for code, err in results if code == 2)
    assert len((data / "race.jsonl").read_text().splitlines()) == len(_pairs(pairs_file))


def test_dataset_info_keeps_its_mode_and_a_symlinked_one_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    real = shared / "dataset_info.json"
    users = json.dumps({"users_own": {"file_name": "mine.json"}})
    real.write_text(users)
    os.chmod(real, 0o664)
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").symlink_to(real)
    (data / "a.jsonl").write_text("")
    with pytest.raises(SPRError, match="is a symlink"):  # its target is the user's file: never written through
        register_dataset(data, "a", ranking_entry("a.jsonl"))
    assert (data / "dataset_info.json").is_symlink() and real.read_text() == users
    (shared / "a.jsonl").write_text("")
    register_dataset(shared, "a", ranking_entry("a.jsonl"))  # the folder holding the real file works
    assert set(json.loads(real.read_text())) == {"users_own", "a"}
    assert stat.S_IMODE(real.stat().st_mode) == 0o664
    atomic_write_text(tmp_path / "new.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


USERS_INFO = {
    "one line": '{"mine": {"file_name": "m.json"}, "other": {"file_name": "o.json", "columns": {"prompt": "q"}}}',
    "four spaces, NaN, repeated key": (
        '{\n    "mine": {"file_name": "m.json", "x": NaN},\n    "mine": {"file_name": "m2.json"}\n}\n'
    ),
    "tabs, non-ASCII": '{\n\t"donn\u00e9es": {\n\t\t"file_name": "d.json"\n\t}\n}',
    "empty": "{}",
}


@pytest.mark.parametrize("text", USERS_INFO.values(), ids=USERS_INFO.keys())
def test_registering_keeps_the_users_dataset_info_text(tmp_path, text):
    """The user's entries keep their bytes (formatting, a repeated key, a NaN LLaMA-Factory reads); spr's entry is
    inserted, and replaced in place with --overwrite."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(text)
    (data / "a.jsonl").write_text("")
    register_dataset(data, "a", ranking_entry("a.jsonl"))
    after = (data / "dataset_info.json").read_text()
    body = text.rstrip().removesuffix("}").rstrip()
    assert after.startswith(body), after
    users = json.loads(text)
    assert json.loads(after) == {**users, "a": ranking_entry("a.jsonl")} or "NaN" in text
    (data / "b.jsonl").write_text("")
    register_dataset(data, "a", ranking_entry("b.jsonl"), overwrite=True)
    again = (data / "dataset_info.json").read_text()
    assert again == after.replace('"a.jsonl"', '"b.jsonl"'), again


def _dataset(tmp_path: Path, image: str) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    rec = {"conversations": [{"from": "human", "value": "<image>Describe."}], "chosen": {"from": "gpt", "value": "a"},
           "rejected": {"from": "gpt", "value": "b"}, "images": [image]}  # fmt: skip
    (data / "ds.jsonl").write_text(json.dumps(rec) + "\n")
    (data / "dataset_info.json").write_text(json.dumps({"ds": ranking_entry("ds.jsonl")}))
    return data


def test_export_hf_embeds_no_file_from_outside_the_dataset(cli, tmp_path):
    from spr_plugin.core.errors import SPRError

    data = _dataset(tmp_path, "/etc/passwd")
    with pytest.raises(SPRError, match="lies outside"):
        export_hf(data, "ds", tmp_path / "out")
    with pytest.raises(SPRError, match="points outside"):
        export_hf(data, "ds", tmp_path / "out", image_root=tmp_path)
    with pytest.raises(SPRError, match="unusable"):
        export_hf(data, "ds", tmp_path / "out", image_root="/etc")  # inside the given root, but not an image
    (data / "notes.txt").write_text("secret")
    _dataset(tmp_path, "notes.txt")
    one_line_error(cli("export-hf", "--dataset-dir", data, "--name", "ds", "--out", tmp_path / "out"), "unusable")
    Image.new("RGB", (16, 16), "red").save(tmp_path / "abs.png")
    _dataset(tmp_path, str(tmp_path / "abs.png"))
    assert export_hf(data, "ds", tmp_path / "out", image_root=tmp_path).rows == 1
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_export_grpo_embeds_only_images_under_the_root(cli, pairs_file, tmp_path):
    region = _pairs(pairs_file)[0]["region"]
    evil = {**region, "image_path": "/etc/passwd"}
    regions = tmp_path / "r.jsonl"
    regions.write_text(json.dumps(evil) + "\n")
    one_line_error(cli("export-grpo", "--regions", regions, "--out", tmp_path / "g.parquet"), "points outside")
    regions.write_text(json.dumps({**evil, "image_root": "/"}) + "\n")
    one_line_error(cli("export-grpo", "--regions", regions, "--out", tmp_path / "g.parquet"), "points outside")
    one_line_error(cli("export-grpo", "--regions", regions, "--out", tmp_path / "g.parquet", "--images", "/etc"), "unusable")
    assert not (tmp_path / "g.parquet").exists()
    regions.write_text(json.dumps(region) + "\n")
    ok = cli("export-grpo", "--regions", regions, "--out", tmp_path / "g.parquet", "--images", region["image_root"])
    assert ok.returncode == 0, ok.stderr
