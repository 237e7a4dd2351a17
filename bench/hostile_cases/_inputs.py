"""Builders shared by the photo-frame and files-from-elsewhere cases: small real images, a COCO json that
declares their sizes, and the CLI run in process with its output captured (a one-line error is checked as
the user sees it)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from spr_plugin.cli import main

#: Three objects per image, in a 200 x 100 frame: with ``--k 2`` every usable image gives one region.
OBJECTS = [(10, 10, 40, 30), (60, 20, 40, 40), (120, 30, 50, 50)]
K = ["--k", "2"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_line_error(self, *fragments: str) -> str:
        """The single ``spr ...: error:`` line (exit status 2, no traceback) holding every fragment."""
        assert self.code == 2, f"exit {self.code}, stderr: {self.err[-500:]}"
        assert "Traceback" not in self.err, self.err[-800:]
        lines = [line for line in self.err.splitlines() if ": error: " in line]
        assert len(lines) == 1, self.err[-800:]
        for frag in fragments:
            assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"
        return lines[0]

    def summary(self) -> dict:
        assert self.code == 0, f"exit {self.code}: {self.err[-500:]}"
        return json.loads(self.out)


def spr(*argv: object) -> Result:
    """``spr ARGV`` in this process, stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def picture(mode: str = "RGB", size: tuple[int, int] = (200, 100)) -> Image.Image:
    """A picture with a left half and a right half of different colours (a frame error moves them)."""
    im = Image.new("RGB", size, (200, 40, 40))
    im.paste((40, 60, 200), (size[0] // 2, 0, size[0], size[1]))
    return im if mode == "RGB" else im.convert(mode)


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def coco(folder: Path, images: dict[str, tuple[int, int]], boxes=OBJECTS) -> Path:
    """``folder/ann.json`` declaring ``images`` (file name -> declared width, height), three objects each."""
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "block"}]}
    for i, (name, (w, h)) in enumerate(images.items(), start=1):
        data["images"].append({"id": i, "file_name": name, "width": w, "height": h})
        for j, box in enumerate(boxes):
            data["annotations"].append({"id": 10 * i + j, "image_id": i, "category_id": 1, "bbox": list(box), "area": 1.0})
    path = folder / "ann.json"
    path.write_text(json.dumps(data))
    return path


def sampled(tmp: Path, name: str = "ok.jpg") -> tuple[Path, Path, dict]:
    """An image root with one good image and the regions file ``spr regions`` made of it: (root, regions, region)."""
    root = tmp / "images"
    root.mkdir(exist_ok=True)
    picture().save(root / name)
    ann = coco(tmp, {name: (200, 100)})
    regions = tmp / "regions.jsonl"
    spr("regions", "--annotations", ann, "--images", root, "--out", regions, *K).summary()
    region = json.loads(regions.read_text().splitlines()[0])
    return root, regions, region


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_pairs(path: Path, records: list[dict]) -> Path:
    """A pairs file with the format record ``spr pair`` writes next to it (these cases are about images and values)."""
    from spr_plugin.core.manifest import record_format

    write_jsonl(path, records)
    record_format(path, "pairs", "qwen2_vl", {"image_max_pixels": 589824, "image_min_pixels": 1024})
    return path
