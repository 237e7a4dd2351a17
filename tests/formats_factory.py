"""Small datasets written exactly in the layouts their authors publish, for the format tests.

Each writer follows the format's published description (see /work/shared/notes/formats.md and the authors'
loaders: lvis-api / detectron2 for LVIS, the Objects365 archives, lichengunc/refer, MDETR's
``refexp_coco_format.py``, Qwen-VL's ``evaluate_grounding.py``, lmms-eval's RefCOCO tasks); nothing here is
shaped to suit the plugin. Images are real (PIL-drawn) so every stage can open them.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

from PIL import Image, ImageDraw

W, H = 320, 240


def draw_image(path: Path, boxes: list[list[float]], size: tuple[int, int] = (W, H), fmt: str = "JPEG") -> Path:
    """An image with one coloured rectangle per (x, y, w, h) box, so a model has something to see."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, (235, 235, 235))
    d = ImageDraw.Draw(im)
    for i, (x, y, w, h) in enumerate(boxes):
        d.rectangle([x, y, x + w, y + h], fill=((60 * i) % 255, (90 + 40 * i) % 255, (200 - 30 * i) % 255))
    im.save(path, fmt)
    return path


def six_boxes(offset: int = 0) -> list[list[float]]:
    """Six separated 40x40 objects inside a 320x240 image."""
    return [[10.5 + 100 * (j % 3) + offset, 20.25 + 110 * (j // 3), 40.0, 40.0] for j in range(6)]


# -- LVIS v1 -----------------------------------------------------------------------------------------------

LVIS_CATEGORIES = [
    {"id": 1, "name": "aerosol_can", "synset": "aerosol.n.02", "synonyms": ["aerosol_can", "spray_can"], "def": "a dispenser",
     "frequency": "c", "image_count": 1, "instance_count": 1},
    {"id": 3, "name": "bat_(animal)", "synset": "bat.n.01", "synonyms": ["bat_(animal)"], "def": "nocturnal mouselike mammal",
     "frequency": "r", "image_count": 1, "instance_count": 1},
    {"id": 7, "name": "Band_Aid", "synset": "band_aid.n.01", "synonyms": ["Band_Aid"], "def": "an adhesive bandage",
     "frequency": "r", "image_count": 1, "instance_count": 1},
    {"id": 9, "name": "banana", "synset": "banana.n.02", "synonyms": ["banana"], "def": "elongated crescent-shaped yellow fruit",
     "frequency": "f", "image_count": 1, "instance_count": 1},
]  # fmt: skip


def write_lvis(root: Path) -> tuple[Path, Path]:
    """``lvis_v1_val.json`` and a COCO image folder (``train2017/``, ``val2017/``); LVIS val uses both.

    Images carry ``coco_url`` and no ``file_name``; annotations have no ``iscrowd``; image 397133 lists
    banana as not exhaustively labelled and Band_Aid as verified absent.
    """
    coco = root / "coco"
    images, anns = [], []
    for k, (img_id, split) in enumerate([(397133, "val2017"), (155379, "train2017")]):
        boxes = six_boxes(offset=k * 3)
        draw_image(coco / split / f"{img_id:012d}.jpg", boxes)
        images.append({
            "id": img_id, "width": W, "height": H, "license": 1, "flickr_url": f"http://farm.example/{img_id}.jpg",
            "coco_url": f"http://images.cocodataset.org/{split}/{img_id:012d}.jpg", "date_captured": "2013-11-14 17:02:52",
            "neg_category_ids": [7] if k == 0 else [], "not_exhaustive_category_ids": [9] if k == 0 else [],
        })  # fmt: skip
        for j, box in enumerate(boxes):
            x, y, w, h = box
            anns.append({
                "id": 1000 * (k + 1) + j, "image_id": img_id, "category_id": [1, 3, 1, 3, 1, 3][j], "bbox": box,
                "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })  # fmt: skip
    ann_file = root / "lvis_v1_val.json"
    ann_file.write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": LVIS_CATEGORIES})
    )
    return ann_file, coco


# -- Objects365 --------------------------------------------------------------------------------------------


def write_objects365(root: Path, version: str = "v2", archive_layout: bool = True) -> tuple[Path, Path]:
    """``zhiyuan_objv2_val.json``-style annotations with ``images/v2/patch8/...`` file names.

    ``archive_layout``: images extracted as the official archive does (``val/patch8/...``), not where the json
    says. Image 1's boxes overshoot the right border by 3 px (float boxes); image 2 holds an ``isfake`` and an
    ``isreflected`` object.
    """
    base = root / "objects365"
    images, anns = [], []
    cats = [{"id": 1, "name": "Person"}, {"id": 2, "name": "Cabinet/shelf"}, {"id": 3, "name": "Handbag/Satchel"}]
    next_id = 1
    for img_id in (1, 2):
        name = f"objects365_{version}_{img_id:08d}.jpg"
        rel = f"images/{version}/patch8/{name}"
        disk = base / ("val/patch8" if archive_layout else f"images/{version}/patch8") / name
        boxes = six_boxes()
        if img_id == 1:
            boxes[2] = [W - 40.0, 20.25, 43.0, 40.0]  # x2 = W + 3
        draw_image(disk, [b[:2] + [min(b[2], W - b[0]), b[3]] for b in boxes])
        images.append({"id": img_id, "file_name": rel, "height": H, "width": W, "license": 5, "url": ""})
        for j, box in enumerate(boxes):
            ann = {
                "id": next_id,
                "image_id": img_id,
                "category_id": 1 + j % 3,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
            if version == "v2":
                ann["isfake"] = 1 if (img_id == 2 and j == 1) else 0
                ann["isreflected"] = 1 if (img_id == 2 and j == 4) else 0
            anns.append(ann)
            next_id += 1
    ann_file = root / f"zhiyuan_obj{version}_val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats, "licenses": []}))
    return ann_file, base


# -- refer toolkit: refcoco/refs(unc).p + instances.json ----------------------------------------------------


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle writes it: ``str`` values are byte strings (SHORT_BINSTRING /
    BINSTRING), as in the refer toolkit's published ``refs(*).p`` files."""
    out = bytearray(b"\x80\x02")

    def emit(o) -> None:
        if isinstance(o, bool) or o is None:
            out.extend({True: b"\x88", False: b"\x89", None: b"N"}[o])
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            raw = o.encode("utf-8")
            out.extend((b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw)
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


REFCOCO_SENTENCES = {
    0: ["man in red", "left guy"],
    1: ["bananas on the right", "yellow fruit <image> right"],  # a media placeholder inside an expression
    2: ["woman <|image_pad|> with bag"],
    3: ["the box <|box_start|>(1,2),(3,4)<|box_end|> top"],
}


def write_refer(root: Path) -> tuple[Path, Path]:
    """``refcoco/refs(unc).p`` + ``refcoco/instances.json`` and COCO ``train2014/`` images.

    Refs of splits train, val and testA; file_name ``COCO_train2014_%012d_<ann_id>.jpg`` as refer writes it.
    """
    data = root / "refer" / "data" / "refcoco"
    data.mkdir(parents=True)
    images_dir = root / "coco" / "train2014"
    images, anns, refs = [], [], []
    for k, img_id in enumerate((581857, 9)):
        boxes = six_boxes(offset=2 * k)
        fname = f"COCO_train2014_{img_id:012d}.jpg"
        draw_image(images_dir / fname, boxes)
        images.append({"id": img_id, "file_name": fname, "width": W, "height": H, "license": 1,
                       "coco_url": f"http://mscoco.org/images/{img_id}"})  # fmt: skip
        for j, box in enumerate(boxes):
            anns.append({"id": 100 * img_id + j, "image_id": img_id, "category_id": 1 + j, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0, "segmentation": [[box[0], box[1], box[0] + box[2], box[1],
                         box[0] + box[2], box[1] + box[3]]]})  # fmt: skip
    splits = ["train", "val", "val", "testA"]
    for r in range(4):
        img_id = (581857, 9)[r % 2]
        ann_id = 100 * img_id + r
        sents = [{"tokens": s.split(), "raw": s, "sent_id": 10 * r + i, "sent": s} for i, s in enumerate(REFCOCO_SENTENCES[r])]
        refs.append({"sent_ids": [s["sent_id"] for s in sents], "file_name": f"COCO_train2014_{img_id:012d}_{ann_id}.jpg",
                     "ann_id": ann_id, "ref_id": r, "image_id": img_id, "split": splits[r], "sentences": sents,
                     "category_id": 1 + r})  # fmt: skip
    (data / "refs(unc).p").write_bytes(py2_pickle(refs))
    cats = [{"supercategory": "thing", "id": i, "name": f"thing{i}"} for i in range(1, 7)]
    (data / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return data / "refs(unc).p", images_dir


def write_mdetr(root: Path, images_dir: Path) -> Path:
    """``finetune_refcoco_val.json`` as MDETR's ``refexp_coco_format.py`` writes it: one image entry per expression."""
    images, anns = [], []
    for i, (orig, ann_box, caption) in enumerate([
        (581857, six_boxes()[1], "the second box"),
        (581857, six_boxes()[4], "bottom middle thing"),
        (9, six_boxes(offset=2)[0], "top left <video> one"),
    ]):  # fmt: skip
        images.append({"file_name": f"COCO_train2014_{orig:012d}.jpg", "height": H, "width": W, "id": i, "original_id": orig,
                       "caption": caption, "dataset_name": "refcoco", "tokens_negative": [[0, 3]]})  # fmt: skip
        anns.append({"area": ann_box[2] * ann_box[3], "iscrowd": 0, "image_id": i, "category_id": 1, "id": i, "bbox": ann_box,
                     "original_id": 1000 + i, "tokens_positive": [[4, 7]]})  # fmt: skip
    path = root / "mdetr_annotations" / "finetune_refcoco_val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}))  # fmt: skip
    return path


def write_qwen_vl_jsonl(root: Path) -> Path:
    """``refcoco_val.jsonl`` as Qwen-VL's ``evaluate_grounding.py`` reads it: image, sent, bbox (x1, y1, x2, y2), size."""
    rows = []
    for img_id, box, sent in [
        (581857, six_boxes()[0], "top left box"),
        (9, six_boxes(offset=2)[5], "lower right <|im_end|> one"),
    ]:
        x, y, w, h = box
        rows.append({"image": f"train2014/COCO_train2014_{img_id:012d}.jpg", "sent": sent, "bbox": [x, y, x + w, y + h],
                     "height": H, "width": W})  # fmt: skip
    path = root / "data" / "refcoco" / "refcoco_val.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_lmms_parquet(root: Path) -> Path:
    """``data/val-00000-of-00001.parquet`` in lmms-lab/RefCOCO's schema: question_id, image (embedded), question,
    answer (list of expressions), segmentation, bbox (x, y, w, h), iscrowd, file_name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for k, (img_id, j) in enumerate([(581857, 2), (9, 3)]):
        buf = io.BytesIO()
        Image.new("RGB", (W, H), (200, 200, 200)).save(buf, "JPEG")
        box = six_boxes(offset=2 * (img_id == 9))[j]
        rows.append({
            "question_id": str(700 + k), "image": {"bytes": buf.getvalue(), "path": None},
            "question": "Please carefully observe the area circled in the image and come up with a caption for the area.",
            "answer": ["thing on the right", "grey <image> block"], "segmentation": [float(v) for v in box],
            "bbox": [float(v) for v in box], "iscrowd": 0, "file_name": f"COCO_train2014_{img_id:012d}.jpg",
        })  # fmt: skip
    schema = pa.schema([
        ("question_id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("question", pa.string()), ("answer", pa.list_(pa.string())), ("segmentation", pa.list_(pa.float32())),
        ("bbox", pa.list_(pa.float32())), ("iscrowd", pa.int8()), ("file_name", pa.string()),
    ])  # fmt: skip
    path = root / "lmms" / "data" / "val-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path
