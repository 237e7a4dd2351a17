"""One frame for real photos (docs/inputs.md, "Image frames"): what inspect_image reads, the declared-size rule
of region sampling, and the raw-frame bytes of parquet exports and server requests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from spr_plugin.core.images import (
    UNSUPPORTED_MODE,
    ImageFacts,
    check_image,
    inspect_image,
    raw_frame_bytes,
)
from spr_plugin.regions.sampling import DECLARED_SIZE_MISMATCH, EXIF_ROTATED_DECLARATION, frame_mismatch


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_inspect_image_reads_the_raw_size_mode_and_orientation(tmp_path):
    Image.new("RGB", (60, 30)).save(tmp_path / "p.jpg", exif=_exif(6))
    assert inspect_image(tmp_path / "p.jpg") == ImageFacts(60, 30, "RGB", 6)
    assert inspect_image(tmp_path / "p.jpg", decode=False).rotated
    Image.new("L", (5, 7)).save(tmp_path / "g.png")
    assert inspect_image(tmp_path / "g.png") == ImageFacts(5, 7, "L", 1)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_modes_rgb_conversion_would_clip_are_unusable(tmp_path, mode):
    data = np.full((8, 8), 40000, dtype=np.uint16 if mode == "I;16" else np.int32 if mode == "I" else np.float32)
    Image.fromarray(data, mode=None).convert(mode).save(tmp_path / "x.tif" if mode == "F" else tmp_path / "x.png")
    path = tmp_path / ("x.tif" if mode == "F" else "x.png")
    assert check_image(path) == UNSUPPORTED_MODE


@pytest.mark.parametrize(
    ("declared", "stored", "expected"),
    [
        ((200, 100), ImageFacts(200, 100, "RGB", 1), None),
        ((200.0, 100.0), ImageFacts(200, 100, "RGB", 6), None),  # declared raw: COCO's convention, kept
        ((None, None), ImageFacts(200, 100, "RGB", 1), None),  # no declaration: the stored size
        ((400, 200), ImageFacts(200, 100, "RGB", 1), DECLARED_SIZE_MISMATCH),
        ((100, 200), ImageFacts(200, 100, "RGB", 6), EXIF_ROTATED_DECLARATION),
        ((100, 200), ImageFacts(200, 100, "RGB", 1), DECLARED_SIZE_MISMATCH),  # swapped without a rotation tag
        ((100, 200), ImageFacts(200, 100, "RGB", 3), DECLARED_SIZE_MISMATCH),  # 180 degrees does not swap
        (("200", 100), ImageFacts(200, 100, "RGB", 1), DECLARED_SIZE_MISMATCH),
    ],
)
def test_declared_size_rule(declared, stored, expected):
    info = {} if declared == (None, None) else {"width": declared[0], "height": declared[1]}
    assert frame_mismatch(info, stored) == expected


def test_raw_frame_bytes_drop_only_an_orientation_tag(tmp_path):
    Image.new("RGB", (60, 30), "red").save(tmp_path / "plain.jpg")
    assert raw_frame_bytes(tmp_path / "plain.jpg") == (tmp_path / "plain.jpg").read_bytes()
    Image.new("CMYK", (60, 30)).save(tmp_path / "rot.jpg", exif=_exif(8))
    out = Image.open(io.BytesIO(raw_frame_bytes(tmp_path / "rot.jpg")))
    assert out.format == "PNG" and out.getexif().get(0x0112) is None
    assert ImageOps.exif_transpose(out).size == (60, 30)  # datasets' decoding keeps the raw frame
