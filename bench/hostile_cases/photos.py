"""Frames of real photos (issue #18, item 3): an annotation file whose declared size is not the stored image's
(a half-size copy, a declaration in the EXIF-rotated frame), 16-bit PNGs, palette / CMYK / bilevel images, and
the bytes a server receives. The rule (docs/inputs.md, "Image frames"): boxes live in the raw stored frame,
the one LLaMA-Factory 0.9.5 trains in (it never applies EXIF orientation); what disagrees is skipped and
counted, and every reader downstream gets that frame."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hostile_cases import HostileCase
from hostile_cases._inputs import K, coco, exif_orientation, picture, spr

CLS = "photo frames"


def _regions(tmp: Path, images: dict[str, tuple[int, int]], *extra: object):
    """``spr regions`` on ``images`` (declared sizes) plus one good image, so the run succeeds and counts."""
    root = tmp / "images"
    root.mkdir(exist_ok=True)
    picture().save(root / "good.jpg")
    ann = coco(tmp, {"good.jpg": (200, 100), **images})
    out = tmp / "regions.jsonl"
    res = spr("regions", "--annotations", ann, "--images", root, "--out", out, *K, *extra)
    summary = res.summary()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return root, summary, rows


def half_size_declaration(tmp: Path) -> None:
    """Declared 400x200 (boxes for that frame) but the stored file is 200x100: skipped, counted, named."""
    root = tmp / "images"
    root.mkdir()
    picture(size=(200, 100)).save(root / "half.jpg")
    _, summary, rows = _regions(tmp, {"half.jpg": (400, 200)})
    assert summary["skipped"].get("declared_size_mismatch") == 1, summary
    assert "half.jpg" in summary["skipped_examples"]["declared_size_mismatch"]
    assert "400x200" in summary["skipped_examples"]["declared_size_mismatch"]
    assert [Path(r["image_path"]).name for r in rows] == ["good.jpg"]


def exif_rotated_declaration(tmp: Path) -> None:
    """Stored 200x100 with EXIF orientation 6, declared 100x200 (as a viewer shows it): the boxes are in a frame
    the model never sees, so the image is skipped and counted as such."""
    root = tmp / "images"
    root.mkdir()
    picture().save(root / "phone.jpg", exif=exif_orientation(6))
    _, summary, rows = _regions(tmp, {"phone.jpg": (100, 200)})
    assert summary["skipped"].get("exif_rotated_declaration") == 1, summary
    assert "phone.jpg" in summary["skipped_examples"]["exif_rotated_declaration"]
    assert all(Path(r["image_path"]).name != "phone.jpg" for r in rows)


def exif_raw_declaration_is_kept_in_the_raw_frame(tmp: Path) -> None:
    """The same photo declared at its stored size (COCO's convention) is used, in the raw frame."""
    root = tmp / "images"
    root.mkdir()
    picture().save(root / "phone.jpg", exif=exif_orientation(6))
    _, summary, rows = _regions(tmp, {"phone.jpg": (200, 100)})
    assert not summary["skipped"], summary
    (row,) = [r for r in rows if Path(r["image_path"]).name == "phone.jpg"]
    assert (row["width"], row["height"]) == (200, 100)


def sixteen_bit_png(tmp: Path) -> None:
    """A 16-bit PNG would become an all-white model input (LLaMA-Factory's convert("RGB") clips it): skipped."""
    root = tmp / "images"
    root.mkdir()
    Image.fromarray(np.linspace(0, 65535, 200 * 100).reshape(100, 200).astype(np.uint16)).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode.startswith("I")
    _, summary, rows = _regions(tmp, {"deep.png": (200, 100)})
    assert summary["skipped"].get("unsupported_image_mode") == 1, summary
    assert all(Path(r["image_path"]).name != "deep.png" for r in rows)


def _model_input(path: Path) -> np.ndarray:
    from spr_plugin.generation.transformers_backend import load_model_input

    return np.asarray(load_model_input(str(path), 768 * 768, 32 * 32))


def other_modes_convert_to_the_picture(tmp: Path) -> None:
    """Palette with transparency, grey + alpha, CMYK and bilevel images are sampled and reach the model as the
    picture (left half differs from right half, nothing all-white)."""
    root = tmp / "images"
    root.mkdir()
    pal = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.info["transparency"] = 0
    pal.save(root / "pal.png", transparency=0)
    picture("LA").save(root / "la.png")
    picture("CMYK").save(root / "cmyk.jpg")
    picture("1").save(root / "bw.png")
    names = ["pal.png", "la.png", "cmyk.jpg", "bw.png"]
    _, summary, rows = _regions(tmp, dict.fromkeys(names, (200, 100)))
    assert not summary["skipped"], summary
    assert sorted(Path(r["image_path"]).name for r in rows) == sorted(["good.jpg", *names])
    for name in names:
        pixels = _model_input(root / name)
        assert pixels.shape == (100, 200, 3), (name, pixels.shape)
        assert pixels.min() < 250, f"{name} became all white"
        left, right = pixels[:, :90].mean(axis=(0, 1)), pixels[:, 110:].mean(axis=(0, 1))
        assert np.abs(left - right).max() > 10 or name == "bw.png", (name, left, right)


def _decoded(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    return Image.open(io.BytesIO(base64.b64decode(data)))


def server_bytes_are_in_the_raw_frame(tmp: Path) -> None:
    """An EXIF-rotated photo reaches the server in the raw frame whether or not it is pre-resized: no orientation
    tag survives, so a server that honours EXIF sees what LLaMA-Factory trains on."""
    from spr_plugin.generation.server_backend import _file_data_url

    small, big = tmp / "small.jpg", tmp / "big.jpg"
    picture(size=(200, 100)).save(small, exif=exif_orientation(6))
    picture(size=(1600, 800)).save(big, exif=exif_orientation(6))
    for path, frame in ((small, (200, 100)), (big, None)):
        sent = _decoded(_file_data_url(str(path), 768 * 768, 32 * 32))
        assert sent.getexif().get(0x0112) in (None, 1), path
        shown = ImageOps.exif_transpose(sent)  # what an EXIF-honouring server would decode
        assert shown.width > shown.height, (path, shown.size)  # landscape, like the raw frame
        if frame is not None:
            assert shown.size == frame
    plain = tmp / "plain.jpg"
    picture().save(plain)
    assert _file_data_url(str(plain), 768 * 768, 32 * 32).endswith(base64.b64encode(plain.read_bytes()).decode())


def server_gets_rgba_as_llamafactory_converts_it(tmp: Path) -> None:
    """A transparent PNG is converted like LLaMA-Factory does (PIL drops the alpha) before it is sent, not left to
    a server that would composite it on white."""
    from spr_plugin.core.frame import lf_preprocess_image
    from spr_plugin.generation.server_backend import _file_data_url

    path = tmp / "rgba.png"
    im = picture("RGBA")
    im.putalpha(0)
    im.save(path)
    sent = _decoded(_file_data_url(str(path), 768 * 768, 32 * 32))
    assert sent.mode == "RGB"
    with Image.open(path) as src:
        assert np.array_equal(np.asarray(sent), np.asarray(lf_preprocess_image(src, 768 * 768, 32 * 32)))


def parquet_images_keep_the_raw_frame(tmp: Path) -> None:
    """``spr export-grpo`` embeds an EXIF-rotated photo so that datasets (which applies EXIF orientation on
    decoding) hands TRL the raw frame the region's boxes are in."""
    import datasets

    root = tmp / "images"
    root.mkdir()
    picture().save(root / "phone.jpg", exif=exif_orientation(6))
    ann = coco(tmp, {"phone.jpg": (200, 100)})
    spr("regions", "--annotations", ann, "--images", root, "--out", tmp / "r.jsonl", *K).summary()
    res = spr("export-grpo", "--regions", tmp / "r.jsonl", "--out", tmp / "g.parquet", "--images", root)
    assert res.code == 0, res.err
    row = datasets.load_dataset("parquet", data_files=str(tmp / "g.parquet"), split="train", cache_dir=str(tmp / "c"))[0]
    assert row["images"][0].size == (200, 100)


def regions_file_with_another_size(tmp: Path) -> None:
    """A regions file whose declared size is not the image's (sampled from a half-size copy) is refused in one
    line before any image reaches a model or a dataset."""
    from hostile_cases._inputs import sampled, write_jsonl

    root, _, region = sampled(tmp)
    bad = write_jsonl(tmp / "half.jsonl", [{**region, "width": 100, "height": 50, "box": [0, 0, 50, 40]}])
    res = spr("export-grpo", "--regions", bad, "--out", tmp / "g.parquet", "--images", root)
    res.one_line_error("is 200x100 but the region declares 100x50")
    assert not (tmp / "g.parquet").exists()


CASES = [
    HostileCase(CLS, "half-size declaration skipped", half_size_declaration),
    HostileCase(CLS, "EXIF-rotated declaration skipped", exif_rotated_declaration),
    HostileCase(CLS, "EXIF photo declared raw kept raw", exif_raw_declaration_is_kept_in_the_raw_frame),
    HostileCase(CLS, "16-bit PNG skipped", sixteen_bit_png),
    HostileCase(CLS, "palette/LA/CMYK/1 convert", other_modes_convert_to_the_picture),
    HostileCase(CLS, "server bytes raw frame", server_bytes_are_in_the_raw_frame),
    HostileCase(CLS, "server RGBA as LLaMA-Factory", server_gets_rgba_as_llamafactory_converts_it),
    HostileCase(CLS, "parquet keeps raw frame", parquet_images_keep_the_raw_frame),
    HostileCase(CLS, "regions file of another size", regions_file_with_another_size),
]
