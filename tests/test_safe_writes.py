"""Spr deletes and replaces only what it wrote (#18): path checks, the file record, content-named images, short
temp names, and export states the hostile suite (bench/hostile_cases/writes.py) does not reach. Real files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from hostile_cases.writes import NAME, PRECIOUS, export, ok, pair, pairs_file, picture, records, scene, spr  # noqa: E402

from spr_plugin.core.errors import SPRError  # noqa: E402
from spr_plugin.core.images import content_file_name, copy_verified  # noqa: E402
from spr_plugin.core.jsonl import atomic_write_text  # noqa: E402
from spr_plugin.core.owned import OwnedFiles, Stamp, is_temp_name, write_bytes  # noqa: E402
from spr_plugin.core.paths import check_write_path  # noqa: E402
from spr_plugin.families.profiles import get_box_format  # noqa: E402
from spr_plugin.llamafactory.export import ExportConfig, check_can_export, export_dataset, write_companion  # noqa: E402


def test_check_write_path_refuses_links_files_and_long_names_below_the_root(tmp_path):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    root = tmp_path / "root_link"
    root.symlink_to(real, target_is_directory=True)  # the folder the user named may itself be a link
    assert check_write_path(root, "sub/x.txt") == root / "sub" / "x.txt"
    (real / "out").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SPRError, match="symlink"):
        check_write_path(root, "out/x.txt")
    (real / "f").write_text("x")
    with pytest.raises(SPRError, match="not a folder"):
        check_write_path(root, "f/x.txt")
    with pytest.raises(SPRError, match="not a folder"):
        check_write_path(root, "f", folder=True)
    with pytest.raises(SPRError, match="folder where a file goes"):
        check_write_path(root, "sub")
    with pytest.raises(SPRError, match="longer than 255 bytes"):
        check_write_path(root, "é" * 128)
    with pytest.raises(SPRError, match="points outside"):
        check_write_path(root, "../x")


@pytest.mark.parametrize("name", ["img.jpg", "x" * 240 + ".png", "é" * 120 + ".jpeg", "noext" * 50, "a." + "b" * 240])
def test_content_file_names_fit_and_keep_the_extension(name):
    digest = "0123456789abcdef" * 4
    out = content_file_name(Path("/p") / name, digest)
    assert out.startswith("0123456789abcdef_") and len(out.encode()) <= 200
    if len(name.encode()) < 180:
        assert out == f"0123456789abcdef_{name}"
    elif Path(name).suffix and len(Path(name).suffix) <= 16:
        assert out.endswith(Path(name).suffix)


def test_temp_names_are_short_for_the_longest_legal_names(tmp_path):
    long_name = "y" * 250 + ".png"
    source = picture(tmp_path / "src.png", (1, 2, 3))
    assert copy_verified(source, tmp_path / "dest" / long_name)
    assert (tmp_path / "dest" / long_name).read_bytes() == source.read_bytes()
    atomic_write_text(tmp_path / long_name, "work dir file")  # the atomic writer of every other stage too
    write_bytes(tmp_path, "z" * 255, b"ok")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert is_temp_name(".spr-abcd_123.tmp") and not is_temp_name(".spr-abcd.tmp") and not is_temp_name("x.spr-abcd1234.tmp")


def test_the_record_owns_a_file_only_while_it_is_the_file_spr_wrote(tmp_path):
    record = OwnedFiles.load(tmp_path, "r.json")
    assert not record.exists
    record.begin({"a.txt": Stamp.of_bytes(b"spr's"), "b.txt": Stamp.of_bytes(b"later"), "card.md": None})
    record.wrote("a.txt", write_bytes(tmp_path, "a.txt", b"spr's"))  # written, and its identity recorded
    (tmp_path / "b.txt").write_bytes(b"later")  # the planned bytes, put there by someone else
    assert record.owns("a.txt") and not record.owns("b.txt") and not record.owns("card.md")
    again = OwnedFiles.load(tmp_path, "r.json")  # as an interrupted run left it
    assert again.owns("a.txt") and not again.owns("b.txt") and not again.complete
    again.begin({"c.txt": Stamp.of_bytes(b"c")})  # a second interruption forgets nothing spr wrote
    assert again.owns("a.txt") and OwnedFiles.load(tmp_path, "r.json").owns("a.txt")
    (tmp_path / "a.txt").write_bytes(b"the user changed it")
    assert not OwnedFiles.load(tmp_path, "r.json").owns("a.txt")
    (tmp_path / "r.json").write_text(
        '{"spr_files": 1, "files": {"a": {"size": -1, "sha256": "x"}}, "pending": {}, "complete": true}'
    )
    with pytest.raises(SPRError, match="not a file record"):
        OwnedFiles.load(tmp_path, "r.json")


def test_a_forged_record_naming_the_users_file_by_its_content_does_not_make_it_sprs(tmp_path):
    """A record received with a folder (or written by hand) can list a user's file with its exact size and SHA-256,
    and even an identity: only the identity of the very file spr wrote (inode, ctime) makes it spr's."""
    (tmp_path / "mine.txt").write_bytes(PRECIOUS)
    spr_file = write_bytes(tmp_path, "spr.txt", b"x")
    stamp = Stamp.of_bytes(PRECIOUS).to_dict()
    other = OwnedFiles(tmp_path, "other.json")
    other.begin({"spr.txt": spr_file})
    other.wrote("spr.txt", spr_file)
    borrowed = other.pending["spr.txt"].to_dict()  # the identity of another file
    for forged in (stamp, {**stamp, "inode": borrowed["inode"], "ctime_ns": borrowed["ctime_ns"]}):
        for key in ("files", "pending"):
            record = {"spr_files": 1, "files": {}, "pending": {}, "complete": key == "files", key: {"mine.txt": forged}}
            (tmp_path / "r.json").write_text(json.dumps(record))
            loaded = OwnedFiles.load(tmp_path, "r.json")
            assert not loaded.owns("mine.txt")
            loaded.begin({})
            assert not loaded.owns("mine.txt")  # an unproven pending entry is not taken over either
    (tmp_path / "r.json").unlink()
    os.mkfifo(tmp_path / "r.json")  # would block a read forever
    with pytest.raises(SPRError, match="not a regular file"):
        OwnedFiles.load(tmp_path, "r.json")


def test_a_hand_edited_record_cannot_point_outside_and_companions_stay_owned_until_rewritten(tmp_path):
    (tmp_path / "outside.txt").write_bytes(PRECIOUS)
    folder = tmp_path / "data"
    folder.mkdir()
    stamp = Stamp.of_bytes(PRECIOUS).to_dict()
    bad = {"spr_files": 1, "files": {"../outside.txt": stamp}, "pending": {}, "complete": True}
    (folder / "r.json").write_text(json.dumps(bad))
    with pytest.raises(SPRError, match="names a file outside"):
        OwnedFiles.load(folder, "r.json")
    record = OwnedFiles(folder, "r.json")
    card = Stamp.of_bytes(b"old card")
    record.begin({"card.md": card})
    record.wrote("card.md", write_bytes(folder, "card.md", b"old card"))
    record.finish({"card.md": card}, {})
    record.begin({"data.jsonl": Stamp.of_bytes(b"d"), "card.md": None})
    record.wrote("data.jsonl", write_bytes(folder, "data.jsonl", b"d"))
    record.finish({"data.jsonl": Stamp.of_bytes(b"d")}, {"card.md": None})
    assert OwnedFiles.load(folder, "r.json").owns("card.md")  # killed before the new card: the old one is still spr's


def test_export_records_every_file_it_wrote_with_its_content(tmp_path):
    pairs, data, _ = scene(tmp_path)
    ok(export(pairs, data))
    record = json.loads((data / f"{NAME}.spr-files.json").read_text())
    assert record["complete"] is True and record["pending"] == {}
    written = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()} - {
        "dataset_info.json",
        f"{NAME}.spr-files.json",
        f".{NAME}.export.lock",
        ".dataset_info.json.lock",
    }
    assert set(record["files"]) == written
    for rel, stamp in record["files"].items():
        recorded = Stamp.from_dict(stamp)
        assert Stamp.of_file(data / rel).same_content(recorded) and recorded.ident is not None  # the file spr wrote
    assert all(
        line["dataset_image"].startswith(f"{NAME}/images/") for line in map(json.loads, (data / f"{NAME}.pairs.jsonl").open())
    )


def test_an_export_killed_before_registration_is_finished_by_the_same_command(tmp_path):
    """The state a kill between the last write and the registration leaves: files written, record unfinished,
    no entry. The rerun (no --overwrite) recognises the files as its own and registers."""
    pairs, data, _ = scene(tmp_path)
    ok(export(pairs, data))
    path = data / f"{NAME}.spr-files.json"
    record = json.loads(path.read_text())
    record["pending"], record["files"], record["complete"] = record["files"], {}, False
    path.write_text(json.dumps(record))
    (data / "dataset_info.json").write_text("{}")
    (data / f"{NAME}.jsonl").unlink()  # not written yet
    before = {p: p.stat().st_mtime_ns for p in (data / NAME / "images").iterdir()}
    ok(export(pairs, data))
    assert NAME in json.loads((data / "dataset_info.json").read_text()) and len(records(data)) == 3
    assert {p: p.stat().st_mtime_ns for p in (data / NAME / "images").iterdir()} == before  # kept, not copied again


def test_a_build_card_is_a_companion_checked_before_the_first_write(tmp_path):
    pairs_path, data, _ = scene(tmp_path)
    from spr_plugin.core.jsonl import read_jsonl
    from spr_plugin.core.records import PreferencePair

    pairs = list(read_jsonl(pairs_path, PreferencePair.from_dict))
    data.mkdir()
    outside = tmp_path / "notes.md"
    outside.write_bytes(PRECIOUS)
    (data / f"{NAME}.README.md").symlink_to(outside)
    config = ExportConfig(data, NAME, companions=(f"{NAME}.README.md",))
    with pytest.raises(SPRError, match="symlink"):
        check_can_export(config)
    (data / f"{NAME}.README.md").unlink()
    result = export_dataset(pairs, config, get_box_format("qwen2_vl"))
    assert result.records == 3 and len(result.pairs) == 3
    assert json.loads((data / f"{NAME}.spr-files.json").read_text())["complete"] is False  # the card is still to come
    write_companion(config, f"{NAME}.README.md", "# card\n")
    record = json.loads((data / f"{NAME}.spr-files.json").read_text())
    assert record["complete"] is True and f"{NAME}.README.md" in record["files"] and outside.read_bytes() == PRECIOUS


def test_show_finds_the_exported_copy_by_its_recorded_path(tmp_path):
    root = tmp_path / "photos"
    a, b = picture(root / "a" / "img.png", (255, 0, 0)), picture(root / "b" / "img.png", (0, 0, 255))
    data = tmp_path / "data"
    ok(export(pairs_file(tmp_path, [pair("7_0", 7, a, root), pair("7_1", 7, b, root)]), data))
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.unlink()
    b.unlink()  # the originals are gone; the dataset's copies remain
    code, err = spr("show", "--dataset-dir", data, "--name", NAME, "--out", tmp_path / "view")
    assert code == 0, err
    from spr_plugin.core.jsonl import read_jsonl
    from spr_plugin.inspect.viewer import _pair_and_copy, find_image
    from spr_plugin.settings import ShowConfig

    config = ShowConfig(None, data, NAME, tmp_path / "view")
    found = [find_image(p, config, copy) for p, copy in read_jsonl(data / f"{NAME}.pairs.jsonl", _pair_and_copy)]
    assert found[0] != found[1]
    assert found[0].read_bytes() == a_bytes and found[1].read_bytes() == b_bytes


def test_register_refuses_a_missing_file_in_one_line(tmp_path):
    code, err = spr("register", "--dataset-dir", tmp_path, "--name", "x", "--file-name", "sub/none.jsonl")
    assert code == 2 and "dataset file not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "there.jsonl").write_text("")
    assert spr("register", "--dataset-dir", tmp_path, "--name", "x", "--file-name", "there.jsonl")[0] == 0


def test_a_build_records_its_card_and_refuses_a_symlinked_one_before_any_work(tmp_path):
    from candidates_factory import write_candidates
    from helpers import run_spr
    from spr_plugin.demo.scenes import render_scenes

    scenes = render_scenes(tmp_path / "scenes", n_images=3, seed=5)
    images = scenes.parent / "images"
    assert run_spr("regions", "--annotations", scenes, "--images", images, "--out", tmp_path / "r.jsonl").returncode == 0
    write_candidates(tmp_path / "r.jsonl", tmp_path / "c.jsonl")
    data, work = tmp_path / "data", tmp_path / "work"
    cmd = ["build", "--annotations", scenes, "--images", images, "--candidates", tmp_path / "c.jsonl", "--min-margin", "0"]
    cmd += ["--work-dir", work, "--dataset-dir", data, "--name", NAME]
    data.mkdir()
    outside = tmp_path / "notes.md"
    outside.write_bytes(PRECIOUS)
    (data / f"{NAME}.README.md").symlink_to(outside)
    proc = run_spr(*cmd, "--overwrite")
    assert proc.returncode == 2 and "symlink" in proc.stderr and "Traceback" not in proc.stderr
    assert outside.read_bytes() == PRECIOUS and not (work / "regions.jsonl").exists()  # refused before sampling
    (data / f"{NAME}.README.md").unlink()
    assert run_spr(*cmd).returncode == 0
    record = json.loads((data / f"{NAME}.spr-files.json").read_text())
    assert record["complete"] is True and f"{NAME}.README.md" in record["files"]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["dataset"]["pairs_skipped"] == {}
    (data / NAME / "images" / "mine.jpg").write_bytes(PRECIOUS)
    assert run_spr(*cmd, "--overwrite").returncode == 0
    assert (data / NAME / "images" / "mine.jpg").read_bytes() == PRECIOUS


def test_a_parquet_gets_the_mode_a_new_file_gets(tmp_path):
    """``write_parquet`` (export-hf, export-grpo) renames a temp file into place: not with mkstemp's 0600."""
    import stat

    import datasets

    from spr_plugin.core.paths import new_file_mode
    from spr_plugin.inspect.hf_export import write_parquet

    write_parquet(datasets.Dataset.from_list([{"a": 1}]), tmp_path / "x.parquet")
    assert stat.S_IMODE((tmp_path / "x.parquet").stat().st_mode) == new_file_mode()
