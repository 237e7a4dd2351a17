"""Writing the dataset folder (#18 items 1-2, register from item 7): spr deletes and replaces only what it wrote.

Every case builds its own pictures and pairs file in the given folder and runs ``spr export`` (or ``spr register``)
in process. Handled means: a one-line error or a counted skip, no file of the user's changed or removed, nothing
written through a symlink, and a dataset whose every record shows its own picture.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from hostile_cases import HostileCase
from spr_plugin.cli import main
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.manifest import record_format
from spr_plugin.core.records import (
    AnnotatedObject,
    Box,
    Candidate,
    LocalizationScore,
    PreferencePair,
    Region,
    ScoredCandidate,
    SemanticScore,
)

CLS = "writes"
NAME = "ds"
COMPANIONS = (f"{NAME}.pairs.jsonl", f"{NAME}.spr.json", f"{NAME}_chosen.spr.json", f"{NAME}.jsonl", f"{NAME}_chosen.jsonl")
PRECIOUS = b"the user's own bytes\n"


def spr(*args: object) -> tuple[int, str]:
    """``spr ARGS`` in this process: exit code and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def one_line(result: tuple[int, str], *fragments: str) -> str:
    code, err = result
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def picture(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def pair(region_id: str, image_id: int, image: Path, root: Path) -> PreferencePair:
    """A pair about one object of ``image`` (scores made up: the export does not look at them)."""
    obj = AnnotatedObject(1, "square", Box(8, 8, 40, 30))
    region = Region(region_id, image_id, str(image), 64, 48, obj.box, (obj,), 1, str(root))

    def side(text: str, refined: bool, score: float) -> ScoredCandidate:
        loc = LocalizationScore(score, "soft_f1", 1, 1, ())
        return ScoredCandidate(Candidate(region_id, "box_text", 0, text), refined, score, SemanticScore(score, {}, "text"), loc)

    return PreferencePair(region, side("a square at the top left", True, 0.9), side("a circle", False, 0.1))


def pairs_file(tmp: Path, pairs: list[PreferencePair], name: str = "pairs.jsonl") -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs))
    record_format(path, "pairs", "qwen2_vl", ImageFrame().to_dict())  # as spr pair records it
    return path


def scene(tmp: Path, n: int = 3) -> tuple[Path, Path, Path]:
    """``n`` distinct pictures under ``tmp/photos``, their pairs file, and the dataset folder ``tmp/data``."""
    root = tmp / "photos"
    pairs = [pair(f"{i}_0", i, picture(root / f"img{i}.png", (40 * i % 256, 90, 200)), root) for i in range(n)]
    return pairs_file(tmp, pairs), tmp / "data", root


def export(pairs: Path, data: Path, *extra: object) -> tuple[int, str]:
    """``spr export`` of a pairs file whose pictures lie under ``photos/`` next to it (the only folder it may read)."""
    return spr("export", "--pairs", pairs, "--dataset-dir", data, "--name", NAME, "--images", pairs.parent / "photos", *extra)


def ok(result: tuple[int, str]) -> str:
    assert result[0] == 0, result[1]
    return result[1]


def records(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / f"{NAME}.jsonl").read_text().splitlines()]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


# ---------------------------------------------------------------- symlinks that leave the dataset dir


def symlinked_images_dir(overwrite: bool):
    def run(tmp: Path) -> None:
        pairs, data, _ = scene(tmp)
        user = tmp / "user_folder"
        user.mkdir()
        (user / "holiday.jpg").write_bytes(PRECIOUS)
        (user / "0_img0.png").write_bytes(PRECIOUS)  # a name an old export would have used
        (data / NAME).mkdir(parents=True)
        (data / NAME / "images").symlink_to(user, target_is_directory=True)
        one_line(export(pairs, data, *(["--overwrite"] if overwrite else [])), "symlink")
        assert tree(user) == {"holiday.jpg": PRECIOUS, "0_img0.png": PRECIOUS}
        assert not (data / f"{NAME}.jsonl").exists()

    return run


def symlinked_dataset_folder(tmp: Path) -> None:
    pairs, data, _ = scene(tmp)
    user = tmp / "user_folder"
    (user / "images").mkdir(parents=True)
    (user / "images" / "mine.jpg").write_bytes(PRECIOUS)
    data.mkdir()
    (data / NAME).symlink_to(user, target_is_directory=True)
    one_line(export(pairs, data, "--overwrite"), "symlink")
    assert tree(user) == {"images/mine.jpg": PRECIOUS}


def symlinked_companion(companion: str, overwrite: bool):
    def run(tmp: Path) -> None:
        pairs, data, _ = scene(tmp)
        outside = tmp / "elsewhere" / "keep.txt"
        outside.parent.mkdir()
        outside.write_bytes(PRECIOUS)
        data.mkdir()
        (data / companion).symlink_to(outside)
        one_line(export(pairs, data, *(["--overwrite"] if overwrite else [])), "symlink", companion)
        assert outside.read_bytes() == PRECIOUS and (data / companion).is_symlink()
        assert not (data / f"{NAME}.jsonl").exists() or companion == f"{NAME}.jsonl"
        assert not (data / NAME).exists() and not (data / "dataset_info.json").exists()  # checked before the first write

    return run


def symlinked_lock_file(lock: str):
    def run(tmp: Path) -> None:
        pairs, data, _ = scene(tmp)
        outside = tmp / "elsewhere.txt"
        outside.write_bytes(PRECIOUS)
        data.mkdir()
        (data / lock).symlink_to(outside)  # opening a lock file truncates it
        one_line(export(pairs, data, "--overwrite"), "symlink")
        assert outside.read_bytes() == PRECIOUS

    return run


def symlinked_file_record(tmp: Path) -> None:
    pairs, data, _ = scene(tmp)
    outside = tmp / "elsewhere.json"
    outside.write_bytes(PRECIOUS)
    data.mkdir()
    (data / f"{NAME}.spr-files.json").symlink_to(outside)
    one_line(export(pairs, data, "--overwrite"), "symlink")
    assert outside.read_bytes() == PRECIOUS


def symlinked_dataset_info(overwrite: bool):
    """A ``dataset_info.json`` that is a symlink (to a file shared by other data folders, or anything else): its
    target is the user's; spr refuses before the first write instead of writing through it."""

    def run(tmp: Path) -> None:
        pairs, data, _ = scene(tmp)
        outside = tmp / "elsewhere" / "dataset_info.json"
        outside.parent.mkdir()
        outside.write_bytes(b'{"users": {"file_name": "u.json"}}')
        data.mkdir()
        (data / "dataset_info.json").symlink_to(outside)
        one_line(export(pairs, data, *(["--overwrite"] if overwrite else [])), "dataset_info.json", "symlink")
        assert outside.read_bytes() == b'{"users": {"file_name": "u.json"}}' and (data / "dataset_info.json").is_symlink()
        assert not (data / f"{NAME}.jsonl").exists() and not (data / NAME).exists()

    return run


def users_dataset_info_text_kept(tmp: Path) -> None:
    """The user's ``dataset_info.json`` (their own entries, their formatting, a repeated key, a NaN their LLaMA-Factory
    reads) keeps its bytes; spr's entries are inserted, and replaced in place by ``--overwrite``."""
    pairs, data, root = scene(tmp)
    data.mkdir()
    users = '{"mine": {"file_name": "m.json", "x": NaN}, "mine": {"file_name": "m2.json"}}'
    (data / "dataset_info.json").write_text(users)
    ok(export(pairs, data))
    first = (data / "dataset_info.json").read_text()
    assert first.startswith(users[:-1] + ", ") and NAME in json.loads(first), first
    other = pairs_file(tmp, [pair("9_0", 9, picture(root / "other.png", (1, 2, 3)), root)], "other.jsonl")
    ok(export(other, data, "--overwrite"))
    assert (data / "dataset_info.json").read_text() == first  # the same entries: not even rewritten


def forged_file_record(tmp: Path) -> None:
    """A ``<name>.spr-files.json`` (received with the folder, or forged) listing the user's own picture and companion
    file with their exact sizes and SHA-256s: ``--overwrite`` neither replaces nor removes them."""
    from spr_plugin.core.owned import Stamp

    pairs, data, _ = scene(tmp)
    mine = picture(data / NAME / "images" / "holiday.png", (5, 6, 7))
    (data / f"{NAME}.pairs.jsonl").write_bytes(PRECIOUS)
    claims = {rel: Stamp.of_file(data / rel).to_dict() for rel in (f"{NAME}/images/holiday.png", f"{NAME}.pairs.jsonl")}
    for key in ("files", "pending"):
        record = {"spr_files": 1, "complete": key == "files", "files": {}, "pending": {}, key: claims}
        (data / f"{NAME}.spr-files.json").write_text(json.dumps(record))
        one_line(export(pairs, data, "--overwrite"), "spr did not write it", f"{NAME}.pairs.jsonl")
        assert (data / f"{NAME}.pairs.jsonl").read_bytes() == PRECIOUS and mine.is_file()
    (data / f"{NAME}.pairs.jsonl").unlink()  # the user moves their companion away: the export runs, their picture stays
    ok(export(pairs, data, "--overwrite"))
    assert mine.is_file() and len(records(data)) == 3


def fifo_where_a_file_is_read(rel: str):
    """A FIFO where the export reads a file (its record, ``dataset_info.json``): one line, never a read that blocks."""

    def run(tmp: Path) -> None:
        pairs, data, _ = scene(tmp)
        data.mkdir()
        os.mkfifo(data / rel)
        one_line(export(pairs, data, "--overwrite"), "not a regular file")
        assert not (data / f"{NAME}.jsonl").exists()

    return run


def hard_linked_images_overwritten(tmp: Path) -> None:
    """``--image-mode link`` hard-links the user's photos into the dataset; ``--overwrite`` with fewer pairs removes
    only the dataset's stale links, never the user's photos (nor their content)."""
    pairs, data, root = scene(tmp)
    before = tree(root)
    ok(export(pairs, data, "--image-mode", "link"))
    assert all(p.stat().st_nlink == 2 for p in root.iterdir())
    one = pairs_file(tmp, [pair("0_0", 0, root / "img0.png", root)], "one.jsonl")
    ok(export(one, data, "--image-mode", "link", "--overwrite"))
    assert tree(root) == before and len(list((data / NAME / "images").iterdir())) == 1


def show_out_folder_of_the_users(tmp: Path) -> None:
    """``spr show --out`` into a folder holding the user's ``index.html`` (or a symlink named so, or their own
    ``pair_000.png``): refused before anything is written, never replaced or written through; a second ``spr show``
    into its own folder replaces its own files."""
    pairs, _, root = scene(tmp)
    outside = tmp / "keep.html"
    outside.write_bytes(PRECIOUS)
    view = tmp / "view"
    view.mkdir()
    show = ("show", "--pairs", pairs, "--out", view, "--images", root)
    for name, make in (("index.html", lambda p: p.symlink_to(outside)), ("pair_000.png", lambda p: p.write_bytes(PRECIOUS))):
        make(view / name)
        assert "symlink" in one_line(spr(*show), name) or name != "index.html"
        assert outside.read_bytes() == PRECIOUS and tree(view) == ({"pair_000.png": PRECIOUS} if name != "index.html" else {})
        (view / name).unlink()
    ok(spr(*show))
    ok(spr(*show))
    assert outside.read_bytes() == PRECIOUS and (view / "index.html").read_bytes().startswith(b"<!doctype html>")


def webui_workspace_link_of_the_users(tmp: Path) -> None:
    """``spr webui --workspace`` whose ``data`` is the user's own link (a LLaMA-Factory checkout's ``data`` pointing at
    their data): refused in one line, the link kept; a link spr made itself is re-pointed at the next dataset folder."""
    from spr_plugin.llamafactory.webui import prepare_workspace
    from spr_plugin.settings import WebUIConfig

    folders = []
    for name in ("data1", "data2"):
        folder = tmp / name
        folder.mkdir()
        (folder / "a.jsonl").write_text("{}\n")
        (folder / "dataset_info.json").write_text('{"a": {"file_name": "a.jsonl"}}')
        folders.append(folder)
    mine = tmp / "my_llamafactory_data"
    mine.mkdir()
    ws = tmp / "ws"
    ws.mkdir()
    (ws / "data").symlink_to(mine, target_is_directory=True)
    one_line(spr("webui", "--dataset-dir", folders[0], "--workspace", ws, "--port", "9"), "spr did not make")
    assert os.readlink(ws / "data") == str(mine)
    ours = tmp / "ws2"
    prepare_workspace(WebUIConfig(folders[0], workspace=ours))
    prepare_workspace(WebUIConfig(folders[1], workspace=ours))  # its own link: re-pointed
    assert (ours / "data").resolve() == folders[1].resolve()
    (ours / "data").unlink()
    (ours / "data").symlink_to(mine, target_is_directory=True)  # the user's now
    one_line(spr("webui", "--dataset-dir", folders[0], "--workspace", ours, "--port", "9"), "spr did not make")
    assert os.readlink(ours / "data") == str(mine)


def symlinked_outputs_of_other_commands(tmp: Path) -> None:
    """Every other file spr writes atomically or appends to (``spr regions --out``, ``spr pair --out``, a manifest, a
    summary) refuses a symlink in one line: writing its target would write a file spr did not write (a dangling link
    would even create one wherever it points), and replacing it would remove the user's link."""
    from hostile_cases._inputs import sampled, write_jsonl

    (tmp / "s").mkdir()
    _, regions, region = sampled(tmp / "s")
    root = regions.parent / "images"
    outside = tmp / "keep.jsonl"
    outside.write_bytes(PRECIOUS)
    cands = write_jsonl(tmp / "c.jsonl", [{"region_id": region["region_id"], "text": "a block", "sample_idx": 0}])
    ann = regions.parent / "ann.json"
    for target in (outside, tmp / "nowhere" / "x.jsonl"):
        for out, argv in (
            ("r.jsonl", ("regions", "--annotations", ann, "--images", root, "--k", "2")),
            ("p.jsonl", ("pair", "--regions", regions, "--candidates", cands)),
        ):
            link = tmp / out
            link.unlink(missing_ok=True)
            link.symlink_to(target)
            one_line(spr(*argv, "--out", link), "symlink")
            assert outside.read_bytes() == PRECIOUS and not (tmp / "nowhere").exists() and link.is_symlink()


def export_hf_over_the_users_parquet(tmp: Path) -> None:
    """``spr export-hf --out`` where ``<name>.parquet`` is the user's (or a symlink): one line, never replaced; its own
    parquet is replaced by a rerun."""
    pairs, data, _ = scene(tmp)
    ok(export(pairs, data))
    hf = tmp / "hf"
    hf.mkdir()
    argv = ("export-hf", "--dataset-dir", data, "--name", NAME, "--out", hf)
    (hf / f"{NAME}.parquet").write_bytes(PRECIOUS)
    one_line(spr(*argv), "spr did not write it")
    assert (hf / f"{NAME}.parquet").read_bytes() == PRECIOUS
    (hf / f"{NAME}.parquet").unlink()
    (hf / f"{NAME}.parquet").symlink_to(tmp / "keep.parquet")
    one_line(spr(*argv), "symlink")
    assert not (tmp / "keep.parquet").exists()
    (hf / f"{NAME}.parquet").unlink()
    ok(spr(*argv))
    ok(spr(*argv))
    assert (hf / f"{NAME}.parquet").read_bytes()[:4] == b"PAR1"


# ---------------------------------------------------------------- files of the user's in the dataset dir


def users_image_survives_overwrite(tmp: Path) -> None:
    pairs, data, _ = scene(tmp)
    ok(export(pairs, data))
    images = data / NAME / "images"
    (images / "mine.jpg").write_bytes(PRECIOUS)
    (images / "0_img0.png").write_bytes(PRECIOUS)  # an id_basename name, as older exports wrote them
    (images / ".notes.tmp").write_bytes(PRECIOUS)
    ok(export(pairs, data, "--overwrite"))
    assert (images / "mine.jpg").read_bytes() == PRECIOUS and (images / "0_img0.png").read_bytes() == PRECIOUS
    assert (images / ".notes.tmp").read_bytes() == PRECIOUS


def overwrite_removes_only_stale_spr_files(tmp: Path) -> None:
    root = tmp / "photos"
    all_pairs = [pair(f"{i}_0", i, picture(root / f"img{i}.png", (60 * i, 10, 10)), root) for i in range(3)]
    data = tmp / "data"
    ok(export(pairs_file(tmp, all_pairs), data))
    images = data / NAME / "images"
    (images / "mine.jpg").write_bytes(PRECIOUS)
    ok(export(pairs_file(tmp, all_pairs[:1], "one.jsonl"), data, "--overwrite"))
    left = sorted(p.name for p in images.iterdir())
    assert len(left) == 2 and "mine.jpg" in left, left  # the one image still named, and the user's file
    assert records(data)[0]["images"] == [f"{NAME}/images/{next(n for n in left if n != 'mine.jpg')}"]


def changed_spr_image_is_not_replaced(tmp: Path) -> None:
    pairs, data, _ = scene(tmp)
    ok(export(pairs, data))
    image = data / records(data)[0]["images"][0]
    image.write_bytes(PRECIOUS)  # the user edited the copy: no longer what spr wrote
    one_line(export(pairs, data, "--overwrite"), str(image))
    assert image.read_bytes() == PRECIOUS


def users_companion(companion: str, overwrite: bool):
    """A user's file at a path the export writes is refused; --overwrite never makes it replaceable."""

    def run(tmp: Path) -> None:
        pairs, data, _ = scene(tmp)
        data.mkdir()
        (data / companion).write_bytes(PRECIOUS)
        one_line(export(pairs, data, *(["--overwrite"] if overwrite else [])), "already exists", companion)
        assert (data / companion).read_bytes() == PRECIOUS and not (data / NAME).exists()

    return run


def companion_written_by_spr_is_replaced(tmp: Path) -> None:
    """An unfinished export's companion is spr's: a new export replaces it without --overwrite."""
    pairs, data, root = scene(tmp)
    ok(export(pairs, data))
    record = json.loads((data / f"{NAME}.spr-files.json").read_text())
    record["pending"], record["complete"] = record["files"], False  # as an export killed before it finished leaves it
    (data / f"{NAME}.spr-files.json").write_text(json.dumps(record))
    other = pairs_file(tmp, [pair("9_0", 9, picture(root / "other.png", (1, 2, 3)), root)], "other.jsonl")
    ok(export(other, data))
    assert len(records(data)) == 1 and len(list((data / NAME / "images").iterdir())) == 1


def folder_where_a_file_goes(tmp: Path) -> None:
    pairs, data, _ = scene(tmp)
    (data / f"{NAME}.jsonl").mkdir(parents=True)
    (data / f"{NAME}.jsonl" / "inside.txt").write_bytes(PRECIOUS)
    one_line(export(pairs, data, "--overwrite"), "folder")
    assert (data / f"{NAME}.jsonl" / "inside.txt").read_bytes() == PRECIOUS


def malformed_file_record(tmp: Path) -> None:
    pairs, data, _ = scene(tmp)
    data.mkdir()
    (data / f"{NAME}.spr-files.json").write_bytes(PRECIOUS)
    one_line(export(pairs, data, "--overwrite"), "not a file record")
    assert (data / f"{NAME}.spr-files.json").read_bytes() == PRECIOUS


def finished_export_is_not_replaced_without_overwrite(tmp: Path) -> None:
    pairs, data, _ = scene(tmp)
    ok(export(pairs, data))
    before = tree(data)
    one_line(export(pairs, data), "already exists")
    assert tree(data) == before


# ---------------------------------------------------------------- interrupted exports


def interrupted_export_finished_by_rerun(tmp: Path) -> None:
    """``spr export`` killed (SIGKILL) after it started writing: the same command again completes the dataset."""
    root = tmp / "photos"
    n = 600
    pairs = [pair(f"{i}_0", i, picture(root / f"{i}.png", (i % 256, i // 256, 7)), root) for i in range(n)]
    path, data = pairs_file(tmp, pairs), tmp / "data"
    cmd = [sys.executable, "-m", "spr_plugin.cli", "export", "--pairs", str(path), "--dataset-dir", str(data), "--name", NAME]
    cmd += ["--images", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    record = data / f"{NAME}.spr-files.json"
    deadline = time.monotonic() + 120
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = data / "dataset_info.json"
    assert record.exists() and not (info.exists() and NAME in json.loads(info.read_text())), "the export was not interrupted"
    ok(export(path, data))  # the same command: recognises its partial output and completes it
    assert len(records(data)) == n and len(list((data / NAME / "images").iterdir())) == n
    assert NAME in json.loads(info.read_text()) and json.loads(record.read_text())["complete"] is True


# ---------------------------------------------------------------- names and images


def long_image_name(stem: str):
    def run(tmp: Path) -> None:
        root = tmp / "photos"
        name = stem + ".png"
        assert len(name.encode()) <= 255
        source = picture(root / name, (200, 10, 10))
        pairs, data = pairs_file(tmp, [pair("1_0", 1, source, root)]), tmp / "data"
        ok(export(pairs, data))
        (copy,) = (data / NAME / "images").iterdir()
        assert len(copy.name.encode()) <= 255 and copy.read_bytes() == source.read_bytes()
        assert records(data)[0]["images"] == [f"{NAME}/images/{copy.name}"]

    return run


def one_unusable_image_among_many(tmp: Path) -> None:
    root = tmp / "photos"
    pairs = [pair(f"{i}_0", i, picture(root / f"{i}.png", (i, 50, 50)), root) for i in range(60)]
    broken = root / "broken.jpg"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(broken)
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    pairs.insert(10, pair("bad_0", 1000, broken, root))
    pairs.insert(30, pair("gone_0", 1001, root / "deleted.png", root))
    data = tmp / "data"
    err = ok(export(pairs_file(tmp, pairs), data))
    assert len(records(data)) == 60
    assert "skipped 2 pairs" in err and "region bad_0" in err and "region gone_0" in err, err


def every_image_unusable(tmp: Path) -> None:
    root = tmp / "photos"
    root.mkdir()
    (root / "a.jpg").write_text("not a picture")
    data = tmp / "data"
    one_line(export(pairs_file(tmp, [pair("1_0", 1, root / "a.jpg", root)]), data), "no pair has a usable image")
    assert not (data / f"{NAME}.jsonl").exists()


def same_id_same_basename(tmp: Path) -> None:
    root = tmp / "photos"
    a = picture(root / "a" / "img.jpg", (255, 0, 0))
    b = picture(root / "b" / "img.jpg", (0, 0, 255))
    data = tmp / "data"
    ok(export(pairs_file(tmp, [pair("7_0", 7, a, root), pair("7_1", 7, b, root)]), data))
    first, second = (data / r["images"][0] for r in records(data))
    assert first != second and first.read_bytes() == a.read_bytes() and second.read_bytes() == b.read_bytes()


def parquet_temp_name_of_the_users(tmp: Path) -> None:
    """``spr export-grpo --out x.parquet`` once wrote ``.x.parquet.tmp`` and then deleted it: a file of that name is
    the user's, and survives."""
    root = tmp / "photos"
    region = pair("1_0", 1, picture(root / "img.png", (9, 9, 9)), root).region
    regions = tmp / "regions.jsonl"
    regions.write_text(json.dumps(region.to_dict()) + "\n")
    out = tmp / "out" / "prompts.parquet"
    out.parent.mkdir()
    (out.parent / ".prompts.parquet.tmp").write_bytes(PRECIOUS)
    ok(spr("export-grpo", "--regions", regions, "--out", out, "--images", root))
    assert (out.parent / ".prompts.parquet.tmp").read_bytes() == PRECIOUS and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [".prompts.parquet.tmp", "prompts.parquet"]


# ---------------------------------------------------------------- spr register


def register_missing_file(tmp: Path) -> None:
    one_line(spr("register", "--dataset-dir", tmp, "--name", "x", "--file-name", "missing.jsonl"), "not found", "missing.jsonl")
    assert not (tmp / "dataset_info.json").exists()


CASES: list[HostileCase] = [
    HostileCase(CLS, "symlinked <name>/images into a user folder", symlinked_images_dir(False)),
    HostileCase(CLS, "symlinked <name>/images into a user folder, --overwrite", symlinked_images_dir(True)),
    HostileCase(CLS, "symlinked <name> folder, --overwrite", symlinked_dataset_folder),
    *(HostileCase(CLS, f"symlinked {c} pointing outside", symlinked_companion(c, False)) for c in COMPANIONS),
    *(HostileCase(CLS, f"symlinked {c} pointing outside, --overwrite", symlinked_companion(c, True)) for c in COMPANIONS),
    HostileCase(CLS, "symlinked export lock file", symlinked_lock_file(f".{NAME}.export.lock")),
    HostileCase(CLS, "symlinked dataset_info lock file", symlinked_lock_file(".dataset_info.json.lock")),
    HostileCase(CLS, "symlinked file record", symlinked_file_record),
    HostileCase(CLS, "symlinked dataset_info.json", symlinked_dataset_info(False)),
    HostileCase(CLS, "symlinked dataset_info.json, --overwrite", symlinked_dataset_info(True)),
    HostileCase(CLS, "user's dataset_info.json text kept", users_dataset_info_text_kept),
    HostileCase(CLS, "file record forged to claim the user's files, --overwrite", forged_file_record),
    HostileCase(CLS, "FIFO as the file record", fifo_where_a_file_is_read(f"{NAME}.spr-files.json")),
    HostileCase(CLS, "FIFO as dataset_info.json", fifo_where_a_file_is_read("dataset_info.json")),
    HostileCase(CLS, "hard-linked images (--image-mode link), --overwrite", hard_linked_images_overwritten),
    HostileCase(CLS, "spr show --out holding the user's files or a symlink", show_out_folder_of_the_users),
    HostileCase(CLS, "spr export-hf --out holding the user's parquet or a symlink", export_hf_over_the_users_parquet),
    HostileCase(CLS, "symlinked --out of spr regions and spr pair (also dangling)", symlinked_outputs_of_other_commands),
    HostileCase(CLS, "spr webui --workspace whose data is the user's link", webui_workspace_link_of_the_users),
    HostileCase(CLS, "user's files in <name>/images, --overwrite", users_image_survives_overwrite),
    HostileCase(CLS, "--overwrite with fewer pairs removes only stale spr files", overwrite_removes_only_stale_spr_files),
    HostileCase(CLS, "copied image changed by the user, --overwrite", changed_spr_image_is_not_replaced),
    *(HostileCase(CLS, f"user's own {c}, no --overwrite", users_companion(c, False)) for c in COMPANIONS),
    *(HostileCase(CLS, f"user's own {c}, --overwrite", users_companion(c, True)) for c in COMPANIONS),
    HostileCase(CLS, "unfinished export's files replaced by a new export", companion_written_by_spr_is_replaced),
    HostileCase(CLS, "folder where <name>.jsonl goes", folder_where_a_file_goes),
    HostileCase(CLS, "malformed file record", malformed_file_record),
    HostileCase(CLS, "finished export, rerun without --overwrite", finished_export_is_not_replaced_without_overwrite),
    HostileCase(CLS, "export killed mid-way, finished by rerun", interrupted_export_finished_by_rerun),
    HostileCase(CLS, "244-character image name", long_image_name("x" * 240)),
    HostileCase(CLS, "244-byte image name of 2-byte characters", long_image_name("é" * 120)),
    HostileCase(CLS, "one unusable and one missing image among 60", one_unusable_image_among_many),
    HostileCase(CLS, "every image unusable", every_image_unusable),
    HostileCase(CLS, "two images with one image id and file name", same_id_same_basename),
    HostileCase(CLS, "user's .<out>.tmp next to spr export-grpo --out", parquet_temp_name_of_the_users),
    HostileCase(CLS, "spr register of a missing file", register_missing_file),
]
