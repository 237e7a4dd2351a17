"""Files from elsewhere (issue #18, item 5): a regions, pairs or dataset file names its own images and image
root, so a received file must not make any command read, copy, embed, render or send an image outside the
folders the user named on the command line (docs/inputs.md, "Image roots"); every value in such files is
validated with one line; spr never writes the non-JSON ``Infinity``; an output is never its own input."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image

from hostile_cases import HostileCase
from hostile_cases._inputs import K, coco, picture, sampled, spr, write_jsonl, write_pairs
from spr_plugin.core.manifest import record_format

CLS = "files from elsewhere"


def _secret(tmp: Path) -> Path:
    """A real, decodable image outside the image root: what a hostile file would like to exfiltrate."""
    outside = tmp / "outside"
    outside.mkdir()
    Image.new("RGB", (200, 100), (1, 2, 3)).save(outside / "secret.jpg")
    return outside / "secret.jpg"


def _evil_region(tmp: Path) -> tuple[Path, dict, Path]:
    """(image root, a region naming the secret image and recording the secret's folder as its root, secret)."""
    root, _, region = sampled(tmp)
    secret = _secret(tmp)
    return root, {**region, "image_path": str(secret), "image_root": str(secret.parent)}, secret


def _side(region: dict, refined: bool, score: float) -> dict:
    return {
        "candidate": {"region_id": region["region_id"], "variant": "box_text", "sample_idx": 0, "text": "three blocks"},
        "refined": refined,
        "score": score,
        "semantic": {"score": score, "scorer": "text"},
        "localization": {"score": score, "metric": "f1", "n_gt": 3, "n_pred": 0, "matches": []},
        "parse_dropped": {},
    }


def _pair(region: dict) -> dict:
    return {"region": region, "chosen": _side(region, True, 0.9), "rejected": _side(region, False, 0.1), "margin": 0.8}


def _nothing_in(folder: Path) -> None:
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")], list(
        folder.rglob("*")
    )


def generate_outside(tmp: Path) -> None:
    """``spr generate`` refuses before any request: the image would be sent to a server."""
    root, evil, _ = _evil_region(tmp)
    regions = write_jsonl(tmp / "evil.jsonl", [evil])
    base = ["generate", "--regions", regions, "--out", tmp / "c.jsonl", "--backend", "openai"]
    server = ["--base-url", "http://127.0.0.1:9/v1", "--served-model", "m", "--max-retries", "0"]
    spr(*base, *server, "--images", root).one_line_error("points outside", str(root))
    spr(*base, *server).one_line_error("no --images given", f"pass --images {evil['image_root']} if you trust this file")
    assert not (tmp / "c.jsonl").exists()


def pair_outside(tmp: Path) -> None:
    """``spr pair`` with a scorer that reads images (CLIP) refuses before loading it."""
    root, evil, _ = _evil_region(tmp)
    regions = write_jsonl(tmp / "evil.jsonl", [evil])
    cands = write_jsonl(tmp / "c.jsonl", [{"region_id": evil["region_id"], "text": "a block"}])
    argv = ["pair", "--regions", regions, "--candidates", cands, "--out", tmp / "p.jsonl", "--semantic", "clip"]
    spr(*argv, "--clip-model", tmp / "no-clip", "--images", root).one_line_error("points outside")
    assert not (tmp / "p.jsonl").exists()


def export_outside(tmp: Path) -> None:
    """``spr export`` copies nothing from outside, whatever root the pairs file records."""
    root, evil, _ = _evil_region(tmp)
    pairs = write_pairs(tmp / "evil.jsonl", [_pair(evil)])
    spr("export", "--pairs", pairs, "--dataset-dir", tmp / "data", "--images", root).one_line_error("points outside")
    spr("export", "--pairs", pairs, "--dataset-dir", tmp / "data").one_line_error("no --images given")
    _nothing_in(tmp / "data")


def export_grpo_outside(tmp: Path) -> None:
    """``spr export-grpo`` embeds nothing from outside."""
    root, evil, _ = _evil_region(tmp)
    regions = write_jsonl(tmp / "evil.jsonl", [evil])
    spr("export-grpo", "--regions", regions, "--out", tmp / "g.parquet", "--images", root).one_line_error("points outside")
    spr("export-grpo", "--regions", regions, "--out", tmp / "g.parquet").one_line_error("no --images given")
    assert not (tmp / "g.parquet").exists()


def show_outside(tmp: Path) -> None:
    """``spr show`` renders nothing from outside (its PNGs may be shared)."""
    root, evil, _ = _evil_region(tmp)
    pairs = write_pairs(tmp / "evil.jsonl", [_pair(evil)])
    spr("show", "--pairs", pairs, "--out", tmp / "view", "--images", root).one_line_error("points outside")
    assert not list((tmp / "view").glob("*.png")) if (tmp / "view").exists() else True


def show_copy_outside(tmp: Path) -> None:
    """``spr show`` looks for an export's copy only where an export puts it (``<name>/images/`` beside
    ``<name>.pairs.jsonl``): a received pairs file whose ``dataset_image`` names a picture beside it, or another
    folder, renders nothing (no ``--images`` given); nor does a dataset folder whose ``<name>.pairs.jsonl`` links out."""
    _, _, region = sampled(tmp)
    received = tmp / "downloads"
    received.mkdir()
    picture().save(received / "secret.jpg")
    (received / "other" / "images").mkdir(parents=True)
    picture().save(received / "other" / "images" / "secret.jpg")
    gone = {**region, "image_path": str(tmp / "gone.jpg"), "image_root": ""}
    cases = (("p.jsonl", "secret.jpg"), ("ds.pairs.jsonl", "secret.jpg"), ("ds.pairs.jsonl", "other/images/secret.jpg"))
    for name, copy in cases:
        pairs = write_pairs(received / name, [{**_pair(gone), "dataset_image": copy}])
        spr("show", "--pairs", pairs, "--out", tmp / "view").one_line_error("no --images given")
        assert not (tmp / "view").exists()
    data = tmp / "data"  # a dataset folder whose pairs file links out of it: its texts are not rendered
    data.mkdir()
    (data / "ds.pairs.jsonl").symlink_to(received / "ds.pairs.jsonl")
    spr("show", "--dataset-dir", data, "--name", "ds", "--out", tmp / "view").one_line_error("is a link to")
    assert not (tmp / "view").exists()


def eval_region_outside(tmp: Path) -> None:
    """``spr eval region --regions`` refuses before loading the model."""
    root, evil, _ = _evil_region(tmp)
    regions = write_jsonl(tmp / "evil.jsonl", [evil])
    argv = ["eval", "region", "--regions", regions, "--model", tmp / "no-model", "--out", tmp / "r.json"]
    spr(*argv, "--images", root).one_line_error("points outside")
    assert not (tmp / "r.json").exists()


def export_hf_outside(tmp: Path) -> None:
    """``spr export-hf`` on a received dataset folder: an absolute path outside, or a symlink inside the folder
    that leads out of it, is refused (the parquet would carry the user's picture); so is a data file that is a link
    out of the folder (it would carry the user's texts)."""
    secret = _secret(tmp)
    data = tmp / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "x.jpg").symlink_to(secret)
    record = {"conversations": [{"from": "human", "value": "<image>Describe."}], "chosen": {"from": "gpt", "value": "a"},
              "rejected": {"from": "gpt", "value": "b"}}  # fmt: skip
    columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images"}
    entry = {"file_name": "d.jsonl", "formatting": "sharegpt", "ranking": True, "columns": columns}
    (data / "dataset_info.json").write_text(json.dumps({"d": entry}))
    for image, fragment in ((str(secret), "lies outside"), ("images/x.jpg", "is a link to")):
        write_jsonl(data / "d.jsonl", [{**record, "images": [image]}])
        argv = ["export-hf", "--dataset-dir", data, "--name", "d", "--out", tmp / "hf", "--box-format", "qwen2_vl"]
        spr(*argv, "--image-max-pixels", "589824", "--image-min-pixels", "1024").one_line_error(fragment)
    assert not (tmp / "hf" / "d.parquet").exists()
    private = write_jsonl(tmp / "private.jsonl", [{**record, "chosen": {"from": "gpt", "value": "my diary"}, "images": []}])
    (data / "d.jsonl").unlink()
    (data / "d.jsonl").symlink_to(private)  # the data file itself a link out: its texts would be published
    argv = ["export-hf", "--dataset-dir", data, "--name", "d", "--out", tmp / "hf", "--box-format", "qwen2_vl"]
    spr(*argv, "--image-max-pixels", "589824", "--image-min-pixels", "1024").one_line_error("is a link to")
    assert not (tmp / "hf" / "d.parquet").exists()


def symlink_escape(tmp: Path) -> None:
    """A symlink inside the named root that leads out of it is refused; ``root/link/../x`` is read as ``root/x``
    (what the containment check approved), never as the OS would follow it (``target/../x``)."""
    root, _, region = sampled(tmp)
    secret = _secret(tmp)
    (secret.parent / "sub").mkdir()
    (root / "link").symlink_to(secret.parent / "sub", target_is_directory=True)
    (root / "direct").symlink_to(secret)
    for path, fragment in ((root / "direct", "is a link to"), (f"{root}/link/../secret.jpg", "missing image")):
        pairs = write_pairs(tmp / "evil.jsonl", [_pair({**region, "image_path": str(path)})])
        spr("export", "--pairs", pairs, "--dataset-dir", tmp / "data", "--images", root).one_line_error(fragment)
    _nothing_in(tmp / "data")


def _private_meta(tmp: Path) -> Path:
    """A ``<name>.spr.json`` outside every folder named on the command line (its template is a secret to leak)."""
    private = tmp / "private"
    private.mkdir()
    meta = {"frame": {"image_max_pixels": 1024, "image_min_pixels": 32}, "template": "SECRET", "box_format": "qwen2_vl"}
    (private / "x.spr.json").write_text(json.dumps(meta))
    return private


def check_recipe_outside(tmp: Path) -> None:
    """``spr check-recipe``: a recipe's ``dataset_dir`` outside the working directory, a ``dataset`` name with ``..``,
    and a ``<name>.spr.json`` linking out of ``--dataset-dir`` are refused, nothing of them read (quoted)."""
    import os

    private = _private_meta(tmp)
    data = tmp / "work" / "data"
    data.mkdir(parents=True)
    (data / "y.spr.json").symlink_to(private / "x.spr.json")
    head = "model_name_or_path: m\nstage: dpo\ntemplate: qwen2_vl\nimage_max_pixels: 1024\nimage_min_pixels: 32\n"
    cwd = os.getcwd()
    os.chdir(tmp / "work")
    try:
        cases = [
            (f"dataset: x\ndataset_dir: {private}\n", [], "outside the working directory"),
            ("dataset: x\ndataset_dir: ../private\n", [], "outside the working directory"),
            ("dataset: ../../private/x\n", ["--dataset-dir", data], "points outside"),
            ("dataset: y\n", ["--dataset-dir", data], "is a link to"),
        ]
        for i, (body, extra, fragment) in enumerate(cases):
            recipe = tmp / "work" / f"r{i}.yaml"
            recipe.write_text(head + body)
            line = spr("check-recipe", recipe, *extra).one_line_error(fragment)
            assert "SECRET" not in line, line
        trusted = spr("check-recipe", tmp / "work" / "r0.yaml", "--dataset-dir", private)  # the user names it: read
        assert "SECRET" in trusted.one_line_error("template mismatch")
    finally:
        os.chdir(cwd)


def webui_outside(tmp: Path) -> None:
    """``spr webui`` on a received data folder: an entry's ``file_name`` outside it (absolute, ``..``, a link out),
    an entry name with ``..`` or a linked ``<name>.spr.json`` refuse before the workspace is made or LlamaBoard
    starts (it would preview and train on the file)."""
    private = _private_meta(tmp)
    (private / "notes.jsonl").write_text("{}\n")
    data = tmp / "data"
    data.mkdir()
    (data / "ok.jsonl").write_text("{}\n")
    (data / "link.jsonl").symlink_to(private / "notes.jsonl")
    (data / "y.spr.json").symlink_to(private / "x.spr.json")
    cases = [
        ({"a": {"file_name": str(private / "notes.jsonl")}}, "points outside"),
        ({"a": {"file_name": "../private/notes.jsonl"}}, "points outside"),
        ({"a": {"file_name": "link.jsonl"}}, "is a link to"),
        ({"../private/x": {"file_name": "ok.jsonl"}}, "points outside"),
        ({"y": {"file_name": "ok.jsonl"}}, "is a link to"),
    ]
    for info, fragment in cases:
        (data / "dataset_info.json").write_text(json.dumps(info))
        spr("webui", "--dataset-dir", data, "--workspace", tmp / "ws", "--port", "9").one_line_error(fragment)
        assert not (tmp / "ws").exists()


def odd_names(tmp: Path) -> None:
    """Image names a received file can hold: URLs, ``~``, backslashes, NUL, a 300-byte name and a 5,000-byte one, in
    a regions, pairs and REC file. Each is one line (before any model loads), names the file's value, and reads
    nothing outside ``--images`` (a URL or ``~`` is a missing file under the root, never fetched or expanded)."""
    root, _, region = sampled(tmp)
    secret = _secret(tmp)
    names = {
        "file url": f"file://{secret}",
        "http url": "http://127.0.0.1:9/secret.jpg",
        "tilde": "~/secret.jpg",
        "backslashes": "..\\outside\\secret.jpg",
        "NUL": "ok.jpg\x00.png",
        "300-byte name": f"{root}/{'y' * 300}.jpg",
        "5000-byte name": "x" * 5000 + ".jpg",
    }
    for label, name in names.items():
        bad = {**region, "image_path": name}
        regions = write_jsonl(tmp / "odd.jsonl", [bad])
        pairs = write_pairs(tmp / "odd_pairs.jsonl", [_pair(bad)])
        rec = write_jsonl(tmp / "odd_rec.jsonl", [{"id": 1, "image": name, "expression": "a block", "box": [1, 1, 9, 9]}])
        runs = {
            "export": spr("export", "--pairs", pairs, "--dataset-dir", tmp / "data", "--images", root),
            "export-grpo": spr("export-grpo", "--regions", regions, "--out", tmp / "g.parquet", "--images", root),
            "show": spr("show", "--pairs", pairs, "--out", tmp / "view", "--images", root),
            "eval rec": spr(
                "eval", "rec", "--annotations", rec, "--model", tmp / "no-model", "--out", tmp / "e.json", "--images", root
            ),
        }
        for command, res in runs.items():
            try:
                line = res.one_line_error()
            except AssertionError as exc:
                raise AssertionError(f"{label}, {command}: {exc}") from None
            assert "no-model" not in line and len(line) < 1100, f"{label}, {command}: {line[:300]}"
        assert not (tmp / "g.parquet").exists() and not (tmp / "e.json").exists()
        _nothing_in(tmp / "data")
        assert not list((tmp / "view").glob("*.png")) if (tmp / "view").exists() else True


BAD_VALUES = {
    "infinite box": ("box", [0, 0, 1e999, 50]),
    "zero-size box": ("box", [10, 10, 10, 50]),
    "reversed box": ("box", [90, 10, 20, 50]),
    "box of strings": ("box", ["0", "0", "9", "9"]),
    "image id 10^40": ("image_id", 10**40),
    "seed id 10^40": ("seed_ann_id", 10**40),
    "width as text": ("width", "200"),
    "region id object": ("region_id", {"id": 1}),
    "object box reversed": ("objects", "reversed"),
}


def hand_edited_values(tmp: Path) -> None:
    """Every hand-edited bad value of a regions or pairs file is one line naming file and line, in every
    command that reads it (no traceback, nothing written)."""
    root, _, region = sampled(tmp)
    for label, (key, value) in BAD_VALUES.items():
        if value == "reversed":
            bad = {**region, key: [{**region[key][0], "box": [50, 50, 10, 10]}, *region[key][1:]]}
        else:
            bad = {**region, key: value}
        regions = tmp / "bad.jsonl"
        regions.write_text(json.dumps(bad) + "\n")  # 1e999 is written as Infinity, read back as JSON 1e999 below
        if key == "box" and isinstance(value[2], float) and math.isinf(value[2]):
            regions.write_text(regions.read_text().replace("Infinity", "1e999"))
        pairs = tmp / "bad_pairs.jsonl"
        pairs.write_text(json.dumps(_pair(bad)).replace("Infinity", "1e999") + "\n")
        record_format(pairs, "pairs", "qwen2_vl", {"image_max_pixels": 589824, "image_min_pixels": 1024})
        cands = write_jsonl(tmp / "c.jsonl", [{"region_id": region["region_id"], "text": "a block"}])
        runs = [
            spr("generate", "--regions", regions, "--out", tmp / "c_out.jsonl", "--model", tmp / "m", "--images", root),
            spr("pair", "--regions", regions, "--candidates", cands, "--out", tmp / "p.jsonl"),
            spr("export", "--pairs", pairs, "--dataset-dir", tmp / "data", "--images", root),
            spr("export-grpo", "--regions", regions, "--out", tmp / "g.parquet", "--images", root),
            spr("show", "--pairs", pairs, "--out", tmp / "view", "--images", root),
        ]
        for res in runs:
            try:
                res.one_line_error(":1: not a valid")
            except AssertionError as exc:
                raise AssertionError(f"{label}: {exc}") from None
        assert not (tmp / "p.jsonl").exists() and not (tmp / "g.parquet").exists() and not (tmp / "c_out.jsonl").exists()
        _nothing_in(tmp / "data")


def infinity_never_written(tmp: Path) -> None:
    """``spr pair`` of a hand-edited regions file never writes ``Infinity``; no JSON writer of spr can."""
    from spr_plugin.core.errors import SPRError
    from spr_plugin.core.jsonl import atomic_write_jsonl, loads_strict

    root, regions, region = sampled(tmp)
    cands = write_jsonl(tmp / "c.jsonl", [{"region_id": region["region_id"], "text": "three blocks", "sample_idx": i}
                                          for i in range(2)])  # fmt: skip
    huge = json.dumps({**region, "box": [0, 0, 1e300, 1e300]}).replace("1e+300", "1e999")
    (tmp / "huge.jsonl").write_text(huge + "\n")
    spr("pair", "--regions", tmp / "huge.jsonl", "--candidates", cands, "--out", tmp / "p.jsonl").one_line_error("huge.jsonl:1")
    assert not (tmp / "p.jsonl").exists()
    try:
        atomic_write_jsonl(tmp / "x.jsonl", [{"margin": float("inf")}])
    except SPRError as exc:
        assert "margin" in str(exc)
    else:
        raise AssertionError("a non-finite number was written as JSON")
    assert not (tmp / "x.jsonl").exists()
    res = spr("pair", "--regions", regions, "--candidates", cands, "--out", tmp / "ok.jsonl", "--min-margin", "0")
    if (tmp / "ok.jsonl").exists():
        for line in (tmp / "ok.jsonl").read_text().splitlines():
            loads_strict(line)  # no NaN / Infinity literal
    assert "Infinity" not in res.out and "NaN" not in res.out


def out_is_input(tmp: Path) -> None:
    """``spr regions --out`` naming its own annotation file (or a link to it) is refused, the file untouched."""
    root = tmp / "images"
    root.mkdir()
    picture().save(root / "a.jpg")
    ann = coco(tmp, {"a.jpg": (200, 100)})
    before = ann.read_bytes()
    spr("regions", "--annotations", ann, "--images", root, "--out", ann, *K).one_line_error("is the input file")
    (tmp / "link.jsonl").symlink_to(ann)
    spr("regions", "--annotations", ann, "--images", root, "--out", tmp / "link.jsonl", *K).one_line_error("is the input file")
    assert ann.read_bytes() == before
    (tmp / "x").mkdir()
    _, regions, _ = sampled(tmp / "x")
    cands = write_jsonl(tmp / "c.jsonl", [])
    kept = regions.read_bytes()
    spr("pair", "--regions", regions, "--candidates", cands, "--out", regions).one_line_error("is the input file")
    assert regions.read_bytes() == kept


CASES = [
    HostileCase(CLS, "generate: image outside", generate_outside),
    HostileCase(CLS, "pair (CLIP): image outside", pair_outside),
    HostileCase(CLS, "export: image outside", export_outside),
    HostileCase(CLS, "export-grpo: image outside", export_grpo_outside),
    HostileCase(CLS, "show: image outside", show_outside),
    HostileCase(CLS, "show: a copy named beside a received pairs file", show_copy_outside),
    HostileCase(CLS, "eval region: image outside", eval_region_outside),
    HostileCase(CLS, "export-hf: outside and symlink", export_hf_outside),
    HostileCase(CLS, "symlink escapes", symlink_escape),
    HostileCase(CLS, "URLs, ~, backslashes, NUL, very long names", odd_names),
    HostileCase(CLS, "check-recipe: dataset_dir, names and links outside", check_recipe_outside),
    HostileCase(CLS, "webui: entries and links outside the data folder", webui_outside),
    HostileCase(CLS, "hand-edited values", hand_edited_values),
    HostileCase(CLS, "Infinity never written", infinity_never_written),
    HostileCase(CLS, "--out is the input", out_is_input),
]
