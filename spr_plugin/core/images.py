"""Image files from other people's datasets: find them, check they decode, copy them safely.

Every stage that touches an image goes through here, so a bad file is met the same way everywhere:

* :func:`check_image` opens an image with PIL's decompression-bomb guard turned into an error (a 1 kB PNG
  can claim 100000x100000 pixels and take the machine's memory) and decodes it fully (``verify()`` alone
  does not notice a truncated JPEG, which then kills generation at the same image on every rerun). It
  returns the size or the reason the image is unusable, never raises, so callers skip and count it.
* :class:`ImageLocator` finds the file a json's ``file_name`` names under an image root, also in the
  layouts the official archives extract to (Objects365's json says ``images/v1/patch8/x.jpg``, the archive
  gives ``val/patch8/x.jpg``), and never outside the root.
* :func:`copy_verified` copies atomically (temp file + rename) and compares content, so a run killed during
  a copy never leaves a truncated image that a rerun would accept.
* One frame (docs/inputs.md): every size here is the *raw* stored frame LLaMA-Factory trains in (EXIF
  orientation is never applied); :func:`inspect_image` reads the tag so sampling can refuse annotations made in
  the rotated frame, and :func:`raw_frame_bytes` gives bytes no reader can rotate. :func:`region_image` is the
  check of every image a regions or pairs file names: under the command line's roots, at the declared size.
"""

from __future__ import annotations

import filecmp
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from spr_plugin.core.errors import SPRError
from spr_plugin.core.paths import ImageRoots, contained_path, new_file_mode
from spr_plugin.core.records import Box, Region

#: Reasons :func:`check_image` gives for an unusable image (keys of the skip counters in every summary).
MISSING, CORRUPT, TOO_LARGE = "missing_image", "corrupt_image", "image_too_large"

#: Image formats a model input may have; anything else (a text file, a PDF) is not an image for us.
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "MPO"})


#: Why an image whose pixels LLaMA-Factory's ``convert("RGB")`` would get wrong is skipped (16-bit PNGs, ``I``,
#: ``F``: every value above 255 clips, a 16-bit photo becomes an all-white model input).
UNSUPPORTED_MODE = "unsupported_image_mode"

#: Modes whose ``convert("RGB")`` (what LLaMA-Factory does to every training image) keeps the picture:
#: bilevel, grey, palette (with or without transparency), RGB(A), CMYK, YCbCr.
RGB_SAFE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})

_ORIENTATION = 0x0112  # EXIF Orientation; 5-8 swap width and height when a viewer applies them


@dataclass(frozen=True)
class ImageFacts:
    """What spr needs to know of an image file: its stored (raw) size, mode and EXIF orientation tag.

    ``width`` x ``height`` is the *raw* pixel frame: PIL's ``Image.open`` does not apply the EXIF
    orientation, and neither does LLaMA-Factory 0.9.5 (``mm_plugin._regularize_images``), so this is the
    frame a model trained with LLaMA-Factory sees and the frame every box of spr lives in (docs/inputs.md).
    """

    width: int
    height: int
    mode: str
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def rotated(self) -> bool:
        """A viewer that honours the EXIF tag shows this image with width and height swapped."""
        return self.orientation in (5, 6, 7, 8)


def inspect_image(path: str | os.PathLike, *, decode: bool = True) -> ImageFacts | str:
    """The image's :class:`ImageFacts`, or why it cannot be used: :data:`MISSING`, :data:`CORRUPT` (not an
    image, truncated, undecodable), :data:`TOO_LARGE` (over PIL's decompression-bomb limit) or
    :data:`UNSUPPORTED_MODE` (its pixels would not survive LLaMA-Factory's RGB conversion).

    ``decode`` decodes the pixels (JPEGs at 1/8 scale via ``draft``, which still reads every byte), so a
    truncated file is caught here and not in the middle of a generation batch; without it only the header
    is read (size, mode, orientation: cheap enough for every image of a large regions file).
    """
    path = Path(path)
    if not path.is_file():
        return MISSING
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format not in IMAGE_FORMATS:
                    return CORRUPT
                size, mode = im.size, im.mode
                orientation = _orientation(im)
                if decode:
                    if im.format in ("JPEG", "MPO"):
                        im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                    im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return TOO_LARGE
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError):
        return CORRUPT
    if size[0] < 1 or size[1] < 1:
        return CORRUPT
    if mode not in RGB_SAFE_MODES:
        return UNSUPPORTED_MODE
    return ImageFacts(int(size[0]), int(size[1]), mode, orientation)


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # a broken EXIF block is no orientation (PIL raises many types here)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def check_image(path: str | os.PathLike, *, decode: bool = True) -> tuple[int, int] | str:
    """The image's raw ``(width, height)``, or why it cannot be used (see :func:`inspect_image`)."""
    facts = inspect_image(path, decode=decode)
    return facts if isinstance(facts, str) else facts.size


@lru_cache(maxsize=65536)
def _checked(path: str, mtime_ns: int, size: int) -> tuple[int, int] | str:
    return check_image(path)


def check_image_cached(path: str | os.PathLike) -> tuple[int, int] | str:
    """:func:`check_image`, decoded once per file version (keyed by path, mtime and size)."""
    try:
        st = os.stat(path)
    except OSError:
        return MISSING
    return _checked(str(path), st.st_mtime_ns, st.st_size)


def require_image(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """The size of a usable image, else :class:`SPRError` naming the file and the reason."""
    result = check_image_cached(path)
    if isinstance(result, str):
        raise SPRError(f"{what} {path} is unusable ({result.replace('_', ' ')})")
    return result


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the OS refuses (longer than NAME_MAX: a name from a received file)."""
    try:
        return path.is_file()
    except OSError:
        return False


class ImageLocator:
    """Finds images under ``root`` by the ``file_name`` a json gives them.

    The json's own layout (``root/file_name``) is the default. Other layouts drop leading folders of the name
    (``images/v1/patch8/x.jpg`` -> ``patch8/x.jpg``) and look directly under ``root`` or under one of its
    sub-folders (``train/``, ``val/``, ``val2017/``): the layout official archives extract to. Which layout a
    dataset uses is decided once, by :meth:`learn`, from a sample of its names: the layout that finds most of
    them, the json's own on a tie, and never one that maps two names to one file. Afterwards each name is
    looked up in that layout and the json's own, one ``stat`` each. A per-image search would be wrong: for a
    missing ``seq3/0001.jpg`` it would happily return ``seq1/0001.jpg``. Names that leave ``root`` (``..``,
    absolute paths elsewhere) are never looked up.
    """

    def __init__(self, root: str | os.PathLike, max_subdirs: int = 64) -> None:
        self.root = Path(os.path.abspath(root))
        self.max_subdirs = max_subdirs
        self.layout: tuple[int, Path] = (0, self.root)  # (leading folders dropped, base folder)
        self._subdirs: list[Path] | None = None

    def subdirs(self) -> list[Path]:
        if self._subdirs is None:
            found: list[Path] = []
            try:
                with os.scandir(self.root) as it:
                    found = [Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir()]
            except OSError:
                pass
            self._subdirs = sorted(found)[: self.max_subdirs]
        return self._subdirs

    @staticmethod
    def _parts(file_name: str) -> tuple[str, ...]:
        return PurePosixPath(file_name.replace("\\", "/")).parts

    def _at(self, layout: tuple[int, Path], file_name: str) -> Path | None:
        drop, base = layout
        parts = self._parts(file_name)
        if os.path.isabs(file_name) or drop >= len(parts):
            return None
        return base.joinpath(*parts[drop:])

    def learn(self, file_names: list[str]) -> int:
        """Pick the layout that finds most of ``file_names`` (the json's own on a tie); returns how many it finds."""
        names = [n for n in file_names if isinstance(n, str) and n and self.contains(n)]
        layouts: list[tuple[int, Path]] = [(0, self.root)]
        depth = max((len(self._parts(n)) for n in names), default=0)
        for drop in range(depth):
            for base in (self.root, *self.subdirs()):
                if (drop, base) not in layouts:
                    layouts.append((drop, base))
        best, best_hits = (0, self.root), -1
        distinct = len(set(names))
        for layout in layouts:
            mapped = [self._at(layout, n) if not os.path.isabs(n) else Path(os.path.normpath(n)) for n in names]
            if len({p for p in mapped if p is not None}) < distinct:
                continue  # lossy: two different names would land on one file (seq1/0001.jpg, seq2/0001.jpg)
            hits = sum(p is not None and _is_file(p) for p in mapped)
            if hits > best_hits:
                best, best_hits = layout, hits
            if best_hits == len(names):
                break
        self.layout = best
        return max(best_hits, 0)

    def contains(self, file_name: str) -> bool:
        try:
            contained_path(self.root, file_name, "image file_name")
        except SPRError:
            return False
        return True

    def candidates(self, file_name: str) -> list[Path]:
        """Where :meth:`locate` looks for ``file_name``, in order: the learned layout, then the json's own."""
        direct = contained_path(self.root, file_name, "image file_name")  # raises for paths leaving the root
        learned = self._at(self.layout, file_name)
        return list(dict.fromkeys(p for p in (learned, direct) if p is not None))

    def locate(self, file_name: str) -> Path | None:
        """The image file for ``file_name``, or None. Raises :class:`SPRError` for a name that leaves the root."""
        for path in self.candidates(file_name):
            if _is_file(path):
                return path
        return None

    def expected(self, file_name: str) -> str:
        """Where ``file_name`` was looked for, for a one-line error."""
        return " or ".join(str(p) for p in self.candidates(file_name))


def copy_verified(source: str | os.PathLike, dest: str | os.PathLike, *, link: bool = False) -> bool:
    """Make ``dest`` a complete copy of ``source``; returns True if it had to be (re)written.

    An existing ``dest`` with the same content is kept; anything else (a truncated copy from a killed run,
    an older image of the same name) is replaced: callers decide first whether ``dest`` may be replaced
    (:mod:`spr_plugin.core.owned`). The copy goes to a temp file in ``dest``'s folder with a short name
    (``.spr-XXXXXXXX.tmp``: a legal 250-byte image name must not make the temp name too long) that is
    renamed over ``dest`` only once complete, so ``dest`` is never half-written; a symlink at ``dest`` is
    replaced by the file, never written through. ``link`` tries a hard link first (same disk, no extra space).
    """
    source, dest = Path(source), Path(dest)
    if dest.is_file() and not dest.is_symlink():
        try:
            if filecmp.cmp(source, dest, shallow=False):
                return False
        except OSError:
            pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".spr-", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        if link:
            os.unlink(tmp)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        else:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if not link:
            os.chmod(tmp, new_file_mode())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def content_file_name(source: str | os.PathLike, sha256: str, max_bytes: int = 200) -> str:
    """The dataset's name for an image: ``<first 16 hex digits of its SHA-256>_<its file name>``.

    Why: images are identified by content, never by image id + file name (``a/img.jpg`` and ``b/img.jpg`` of one
    image id are two pictures and get two files; one picture named twice gets one). The file name is shortened
    (whole characters, the extension kept) so the result stays within ``max_bytes`` bytes, well inside the
    255-byte limit of file names whatever the source's name length.
    """
    name = Path(source).name
    prefix = f"{sha256[:16]}_"
    budget = max_bytes - len(prefix)
    if len(name.encode("utf-8", "surrogateescape")) <= budget:
        return prefix + name
    suffix = Path(name).suffix
    if len(suffix.encode("utf-8", "surrogateescape")) > 16:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    while stem and len((stem + suffix).encode("utf-8", "surrogateescape")) > budget:
        stem = stem[:-1]
    return prefix + stem + suffix


def crop_rect(box: Box, width: int | None = None, height: int | None = None) -> tuple[int, int, int, int]:
    """The integer pixel rectangle of ``box``'s crop: left/top floored, right/bottom rounded, at least 1 x 1,
    inside a ``width`` x ``height`` image when given. The one rounding of every crop (the model's ``crop``
    prompt, CLIP's crop, the grounder's crop), so they all see the same pixels."""
    x1, y1 = max(0, int(box.x1)), max(0, int(box.y1))
    x2, y2 = max(x1 + 1, int(round(box.x2))), max(y1 + 1, int(round(box.y2)))
    if width is not None:
        x2 = min(width, x2)
    if height is not None:
        y2 = min(height, y2)
    return x1, y1, x2, y2


def crop_region(image: Image.Image, box: Box) -> Image.Image:
    """``image`` cropped to ``box`` (:func:`crop_rect`)."""
    return image.crop(crop_rect(box, *image.size))


def region_image(region: Region, roots: ImageRoots) -> Path:
    """The image file of a region read from a regions or pairs file, checked before anything reads it.

    The path must lie under the image folders named on the command line (:class:`ImageRoots`; the
    ``image_root`` the file records is only a hint in the message), and an existing image must have the size
    the region declares, in the raw frame its boxes live in: a regions file sampled from another version of
    the image (a half-size copy, a rotated export) would put every box on the wrong pixels. A missing file
    is returned as is, for the caller to skip and count. Raises :class:`SPRError` (one line) otherwise.
    """
    where = f"region {region.region_id}: image"
    hint = f"pass --images {region.image_root} if you trust this file" if region.image_root else "pass --images FOLDER"
    path = roots.resolve(region.image_path, where, hint)
    if path.is_file():
        facts = inspect_image(path, decode=False)
        if isinstance(facts, ImageFacts) and facts.size != (region.width, region.height):
            raise SPRError(
                f"{where} {path} is {facts.width}x{facts.height} but the region declares {region.width}x{region.height}; "
                "its boxes were made for another version of this image"
            )
    return path


def confine_regions(regions: Sequence[Region], roots: ImageRoots, *, progress: bool = False) -> list[Region]:
    """``regions`` with each ``image_path`` checked by :func:`region_image` (one header read per image) and
    replaced by the path that was checked, so later stages read exactly that file."""
    from tqdm import tqdm

    checked: dict[tuple[str, int, int], str] = {}
    out = []
    bar = tqdm(regions, desc="checking images", unit="region", disable=not progress or len(regions) < 1000)
    for region in bar:
        key = (region.image_path, region.width, region.height)
        if key not in checked:
            checked[key] = str(region_image(region, roots))
        path = checked[key]
        out.append(region if path == region.image_path else replace(region, image_path=path))
    return out


def raw_frame_bytes(path: str | os.PathLike) -> bytes:
    """The image's bytes as every reader sees them in the raw frame: the file itself, unless it carries an EXIF
    orientation tag, then its stored pixels re-encoded as PNG (lossless, same mode, no EXIF).

    Why: LLaMA-Factory and spr read the raw pixel frame, but ``datasets``' ``Image`` feature (TRL reading a
    parquet of ``spr export-hf`` / ``export-grpo``) and some servers apply the tag and would rotate the picture
    under boxes written for the raw frame.
    """
    with Image.open(path) as im:
        if _orientation(im) == 1:
            with open(path, "rb") as f:
                return f.read()
        im.load()
        pixels = im if im.mode in ("1", "L", "LA", "P", "RGB", "RGBA") else im.convert("RGB")  # PNG has no CMYK
        buf = io.BytesIO()
        pixels.save(buf, format="PNG")
        return buf.getvalue()


def has_orientation_tag(im: Image.Image) -> bool:
    """The image carries an EXIF orientation other than 1 (upright), which readers disagree on honouring."""
    return _orientation(im) != 1
