"""Referring-expression files as published: refer's refs(unc).p + instances.json, MDETR's refexp json,
Qwen-VL's grounding JSONL and lmms-eval's RefCOCO parquet, read by ``spr eval rec`` without conversion."""

from __future__ import annotations

import json
import os
import pickle

import pytest
from formats_factory import py2_pickle, six_boxes, write_lmms_parquet, write_mdetr, write_qwen_vl_jsonl, write_refer

from helpers import run_spr as spr
from spr_plugin.core.errors import SPRError
from spr_plugin.core.records import Box
from spr_plugin.evaluation.rec_data import load_rec, read_plain_pickle


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


def _corners(box):
    x, y, w, h = box
    return Box(x, y, x + w, y + h)


def test_refer_pickle_with_instances_json_beside_it(tmp_path):
    refs, train2014 = write_refer(tmp_path)
    data = load_rec(refs, train2014, split="val")
    # refs 1 and 2 are val; every sentence is one item, keyed ref_id _ sent_id
    assert [i.item_id for i in data.items] == ["1_10", "1_11", "2_20"]
    assert data.items[0].box == _corners(six_boxes(offset=2)[1])  # ann_id's instances.json box, x,y,w,h -> corners
    assert data.items[0].image == str(train2014 / "COCO_train2014_000000000009.jpg")
    # special tokens in expressions are removed (and counted), never passed into the prompt
    assert [i.expression for i in data.items][1:] == ["yellow fruit right", "woman with bag"]
    assert data.sanitized.removed["expressions"] == 2


def test_refer_images_found_from_the_coco_root_too(tmp_path):
    refs, train2014 = write_refer(tmp_path)
    data = load_rec(refs, train2014.parent, split="testA")  # --images coco/ (holding train2014/)
    assert [i.item_id for i in data.items] == ["3_30"] and os.path.isfile(data.items[0].image)


def test_split_is_required_when_a_file_holds_several(tmp_path):
    refs, train2014 = write_refer(tmp_path)
    with pytest.raises(SPRError, match="holds the splits testA, train, val; choose one with --split"):
        load_rec(refs, train2014)
    with pytest.raises(SPRError, match="has no split 'test'; it holds testA, train, val"):
        load_rec(refs, train2014, split="test")


def test_python2_byte_strings_are_decoded(tmp_path):
    """refs(unc).p was written by Python 2: its strings are byte strings, UTF-8 or Latin-1 encoded."""
    path = tmp_path / "refs.p"
    path.write_bytes(py2_pickle([{"sent": "caf\u00e9 left", "split": "val"}]))
    raw = path.read_bytes()
    assert b"U\x0acaf\xc3\xa9 left" in raw  # SHORT_BINSTRING of the UTF-8 bytes, as cPickle wrote them
    assert read_plain_pickle(path) == [{"sent": "caf\u00e9 left", "split": "val"}]
    path.write_bytes(raw.replace(b"U\x0acaf\xc3\xa9 left", b"U\x09caf\xe9 left"))  # Latin-1 bytes
    assert read_plain_pickle(path)[0]["sent"] == "caf\u00e9 left"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


PAYLOADS = [
    pickle.dumps([{"ref_id": 1, "x": _Evil()}], protocol=2),
    pickle.dumps(_Evil(), protocol=0),
    pickle.dumps({1, 2, 3}, protocol=2),  # a set needs builtins.set: not a plain container
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_unpickling_refuses_anything_but_plain_containers(tmp_path, payload, monkeypatch):
    refs, train2014 = write_refer(tmp_path)
    refs.write_bytes(payload)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SPRError, match="refused to unpickle.*only plain lists, dicts, strings and numbers"):
        load_rec(refs, train2014, split="val")
    assert not (tmp_path / "PWNED").exists()


def test_a_malicious_refs_pickle_is_one_line_from_the_cli(tmp_path):
    refs, train2014 = write_refer(tmp_path)
    refs.write_bytes(PAYLOADS[0])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = spr("eval", "rec", "--annotations", refs, "--images", train2014, "--split", "val",
               "--model", tmp_path / "no-model", "--out", tmp_path / "r.json", cwd=cwd)  # fmt: skip
    one_line_error(proc, "refused to unpickle", "only plain lists, dicts, strings and numbers")
    assert not (cwd / "PWNED").exists()


def test_refer_pickle_without_instances_json_names_the_expected_file(tmp_path):
    refs, train2014 = write_refer(tmp_path)
    (refs.parent / "instances.json").unlink()
    with pytest.raises(SPRError, match=r"needs the instances.json of its folder, expected at .*refcoco/instances.json"):
        load_rec(refs, train2014, split="val")


def test_mdetr_refexp_json(tmp_path):
    _, train2014 = write_refer(tmp_path)
    path = write_mdetr(tmp_path, train2014)
    data = load_rec(path, train2014)
    assert [(i.item_id, i.expression) for i in data.items] == [
        ("0", "the second box"),
        ("1", "bottom middle thing"),
        ("2", "top left one"),
    ]
    assert data.items[1].box == _corners(six_boxes()[4]) and data.formats == ["mdetr_refexp"]
    with pytest.raises(SPRError, match="one split"):
        load_rec(path, train2014, split="val")


def test_qwen_vl_grounding_jsonl(tmp_path):
    _, train2014 = write_refer(tmp_path)
    path = write_qwen_vl_jsonl(tmp_path)
    data = load_rec(path, train2014.parent)  # image names are train2014/COCO_train2014_...jpg
    assert [i.expression for i in data.items] == ["top left box", "lower right one"]
    assert data.items[0].box == _corners(six_boxes()[0]) and os.path.isfile(data.items[1].image)
    assert data.formats == ["qwen_vl_jsonl"]


def test_lmms_eval_parquet_with_embedded_images(tmp_path):
    _, train2014 = write_refer(tmp_path)
    path = write_lmms_parquet(tmp_path)
    data = load_rec(path, media_dir=tmp_path / "media")
    assert [i.item_id for i in data.items] == ["700_0", "700_1", "701_0", "701_1"]
    assert data.items[1].expression == "grey block"  # "<image>" removed from lmms-eval's answer list
    assert all(i.image.startswith(str(tmp_path / "media")) and os.path.isfile(i.image) for i in data.items)
    # with --images holding the COCO files the rows name, those are used instead of extracting
    data = load_rec(path, train2014, media_dir=tmp_path / "media2")
    assert data.items[0].image == str(train2014 / "COCO_train2014_000000581857.jpg") and not (tmp_path / "media2").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe not utf-8 \x80", "not valid UTF-8"),
        (b'{"images": [1], "annotations": []}', "not a REC file"),
        (
            b'{"refs": [{"ref_id": 1, "ann_id": 5, "image_id": 1, "split": "val", "sentences": []}], "images": [], '
            b'"annotations": []}',
            "points at a missing annotation",
        ),
        (b"[1, 2]", "expected a COCO-style refs object"),
    ],
)
def test_malformed_rec_json_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SPRError, match=message):
        load_rec(path, tmp_path)


def test_eval_rec_runs_on_refer_files_through_the_cli(tiny_qwen2vl, tmp_path):
    refs, train2014 = write_refer(tmp_path)
    out = tmp_path / "rec.json"
    base = ["eval", "rec", "--annotations", refs, "--images", train2014, "--model", tiny_qwen2vl, "--out", out,
            "--max-new-tokens", 4, "--quiet"]  # fmt: skip
    one_line_error(spr(*base), "choose one with --split")  # train would be evaluated silently before
    proc = spr(*base, "--split", "val")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["n"] == 3 and report["data"]["formats"] == ["refer_pickle"]
    assert report["data"]["sanitized"]["tokens_removed"] == {"expressions": 2}
    answers = [json.loads(line) for line in out.with_suffix(".items.jsonl").read_text().splitlines()]
    assert all("<image>" not in a["expression"] and "<|image_pad|>" not in a["expression"] for a in answers)


def test_eval_rec_on_mdetr_qwen_vl_and_lmms_files(tiny_qwen2vl, tmp_path):
    _, train2014 = write_refer(tmp_path)
    files = {
        "mdetr": (write_mdetr(tmp_path, train2014), train2014),
        "qwen": (write_qwen_vl_jsonl(tmp_path), train2014.parent),
        "lmms": (write_lmms_parquet(tmp_path), None),
    }
    for name, (path, images) in files.items():
        out = tmp_path / f"{name}.json"
        args = ["eval", "rec", "--annotations", path, "--model", tiny_qwen2vl, "--out", out, "--max-new-tokens", 4, "--quiet"]
        proc = spr(*args, *(["--images", images] if images else []))
        assert proc.returncode == 0, (name, proc.stderr)
        assert json.loads(out.read_text())["summary"]["n"] == {"mdetr": 3, "qwen": 2, "lmms": 4}[name]


def test_missing_image_in_eval_rec_is_one_line_before_the_model_loads(tmp_path):
    refs, train2014 = write_refer(tmp_path)
    (train2014 / "COCO_train2014_000000000009.jpg").unlink()
    line = one_line_error(
        spr(
            "eval",
            "rec",
            "--annotations",
            refs,
            "--images",
            train2014,
            "--split",
            "val",
            "--model",
            tmp_path / "no-model",
            "--out",
            tmp_path / "r.json",
        ),  # fmt: skip
        "1 of 2 images not found",
    )
    assert "COCO_train2014_000000000009.jpg" in line and "cannot load" not in line


def test_expressions_with_media_tokens_in_a_plain_jsonl_do_not_crash_eval(tiny_qwen2vl, tmp_path):
    refs, train2014 = write_refer(tmp_path)
    path = tmp_path / "rec.jsonl"
    image = str(train2014 / "COCO_train2014_000000581857.jpg")
    exprs = ["<image>", "cat <|image_pad|><|vision_start|>", "<im<image>age> dog", "<|im_end|><|im_start|>user x"]
    rows = [{"id": i, "image": image, "expression": e, "box": [10, 20, 50, 60]} for i, e in enumerate(exprs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    proc = spr("eval", "rec", "--annotations", path, "--model", tiny_qwen2vl, "--out", out, "--max-new-tokens", 4, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["n"] == 3 and report["data"]["skipped"] == {"empty_expression": 1}
