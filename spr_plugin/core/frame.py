"""LLaMA-Factory's image pre-resize, in one place, for every path that shows an image to the model.

LLaMA-Factory resizes each training image *before* the HF processor sees it: the base plugin's
``_preprocess_image`` scales it down to ``image_max_pixels`` (default 768*768) or up to
``image_min_pixels`` (default 32*32) with ``int()`` truncation, and the Qwen2-VL plugin then raises
sides below 28 pixels and caps the aspect ratio (above 200 becomes 180). Only then does the
processor's ``smart_resize`` run. Qwen2.5-VL writes boxes in pixels of that final frame, so
generation and evaluation must apply the very same pre-resize, or the model sees a different frame
than the one it was trained in and than the one :class:`spr_plugin.families.box_formats.ResizeSpec` parses in.

Mirrors ``llamafactory/data/mm_plugin.py`` (``BasePlugin._preprocess_image`` and
``Qwen2VLPlugin._preprocess_image``) step by step: each step is a separate ``image.resize`` there,
and resizing in steps gives (slightly) different pixels than one resize to the final size.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

#: LLaMA-Factory's defaults for its ``image_max_pixels`` / ``image_min_pixels`` YAML keys.
DEFAULT_IMAGE_MAX_PIXELS = 768 * 768
DEFAULT_IMAGE_MIN_PIXELS = 32 * 32

#: A pixel-bound flag that was not given (``None`` already means "no pre-resize"): the value then comes from
#: what a build recorded (``spr export-hf``).
NOT_GIVEN: Any = object()

_MIN_SIDE = 28  # Qwen2-VL plugin: smart_resize needs sides of at least one 28-pixel patch
_MAX_RATIO = 200  # above this aspect ratio smart_resize raises ...
_CAPPED_RATIO = 180  # ... so the plugin squeezes the long side to this ratio


def lf_resize_steps(
    width: int, height: int, image_max_pixels: int | None, image_min_pixels: int | None, qwen_rules: bool = True
) -> list[tuple[int, int]]:
    """The (width, height) of every ``image.resize`` LLaMA-Factory's Qwen2-VL plugin does, in order.

    Empty when the image keeps its size. ``None`` for a pixel bound skips that step (no pre-resize).
    ``qwen_rules=False``: the base plugin's steps only (the pixel bounds), as InternVL's plugin resizes; the Qwen2-VL
    plugin and its subclasses (Qwen3-VL, GLM-4.xV) add the 28-pixel side and the aspect-ratio cap.
    """
    steps: list[tuple[int, int]] = []
    w, h = width, height
    if image_max_pixels is not None and w * h > image_max_pixels:
        f = math.sqrt(image_max_pixels / (w * h))
        w, h = int(w * f), int(h * f)
        steps.append((w, h))
    if image_min_pixels is not None and w * h < image_min_pixels:
        f = math.sqrt(image_min_pixels / (w * h))
        w, h = int(w * f), int(h * f)
        steps.append((w, h))
    if qwen_rules and min(w, h) < _MIN_SIDE:
        w, h = max(w, _MIN_SIDE), max(h, _MIN_SIDE)
        steps.append((w, h))
    if qwen_rules and w / h > _MAX_RATIO:
        w = h * _CAPPED_RATIO
        steps.append((w, h))
    elif qwen_rules and h / w > _MAX_RATIO:  # after the width cap h/w < 1, so LLaMA-Factory's second `if` is this `elif`
        h = w * _CAPPED_RATIO
        steps.append((w, h))
    # PIL returns a copy for a resize to the current size: such a step changes nothing, drop it.
    out: list[tuple[int, int]] = []
    for size in steps:
        if size != (out[-1] if out else (width, height)):
            out.append(size)
    return out


def lf_image_size(
    width: int, height: int, image_max_pixels: int | None, image_min_pixels: int | None, qwen_rules: bool = True
) -> tuple[int, int]:
    """(width, height) of an image after LLaMA-Factory's pre-resize, before the HF processor."""
    steps = lf_resize_steps(width, height, image_max_pixels, image_min_pixels, qwen_rules)
    return steps[-1] if steps else (width, height)


def lf_preprocess_image(
    image: Image.Image, image_max_pixels: int | None, image_min_pixels: int | None, qwen_rules: bool = True
) -> Image.Image:
    """``image`` as LLaMA-Factory hands it to the processor: resized step by step, then RGB.

    Resizes in the image's own mode before converting, like LLaMA-Factory (``image.resize((w, h))``
    with PIL's default filter). Returns ``image`` itself when nothing changes (size kept, already RGB).
    """
    for size in lf_resize_steps(image.width, image.height, image_max_pixels, image_min_pixels, qwen_rules):
        image = image.resize(size)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


#: The largest pixel bound: the area of the largest image a region may declare (1,000,000 pixels a side). A record
#: holding more (``1e29`` in a hand-edited sidecar) is refused: no image has it, and it overflows int64 downstream.
MAX_PIXELS = 10**12


def check_pixel_bounds(image_max_pixels: int | None, image_min_pixels: int | None) -> str | None:
    """Why the two bounds are unusable (for a ConfigError), or None if they are fine."""
    for name, value in (("image_max_pixels", image_max_pixels), ("image_min_pixels", image_min_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PIXELS):
            return f"{name} must be a positive integer of at most 10^12 or None (no pre-resize), got {value!r:.40}"
    if image_max_pixels is not None and image_min_pixels is not None and image_min_pixels > image_max_pixels:
        return f"image_min_pixels ({image_min_pixels}) must not exceed image_max_pixels ({image_max_pixels})"
    return None


@dataclass(frozen=True)
class ImageFrame:
    """The image frame a dataset lives in: LLaMA-Factory's pre-resize bounds (its YAML keys of the same names).

    Sampling, training and evaluation must all use the same frame, or Qwen2.5-VL's pixel boxes and every
    model's visual grid silently differ between the stages. A build records its frame next to the dataset
    (:mod:`spr_plugin.llamafactory.recipe_check`), and a training YAML or an evaluation can be checked against it.
    """

    image_max_pixels: int | None = DEFAULT_IMAGE_MAX_PIXELS
    image_min_pixels: int | None = DEFAULT_IMAGE_MIN_PIXELS

    def __post_init__(self) -> None:
        problem = check_pixel_bounds(self.image_max_pixels, self.image_min_pixels)
        if problem:
            from spr_plugin.core.errors import ConfigError

            raise ConfigError(problem)

    def to_dict(self) -> dict[str, int | None]:
        return {"image_max_pixels": self.image_max_pixels, "image_min_pixels": self.image_min_pixels}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageFrame:
        """Missing keys take LLaMA-Factory's defaults, as they do in a training YAML."""
        return cls(d.get("image_max_pixels", DEFAULT_IMAGE_MAX_PIXELS), d.get("image_min_pixels", DEFAULT_IMAGE_MIN_PIXELS))

    def differences(self, other: ImageFrame) -> list[tuple[str, int | None, int | None]]:
        """``(key, this value, other value)`` for every bound the two frames disagree on."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]


class FramedConfig:
    """Mixin of a config holding ``frame: ImageFrame``: its two bounds read as the config's own (what the generation
    and evaluation modules and their reports read). Read-only: a config is given its frame whole, as an ImageFrame."""

    frame: ImageFrame

    @property
    def image_max_pixels(self) -> int | None:
        return self.frame.image_max_pixels

    @property
    def image_min_pixels(self) -> int | None:
        return self.frame.image_min_pixels


def frame_from_args(a: argparse.Namespace) -> ImageFrame:
    """The frame given by ``--image-max-pixels`` / ``--image-min-pixels``."""
    return ImageFrame(a.image_max_pixels, a.image_min_pixels)


def _pixel_bound(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel count (e.g. {DEFAULT_IMAGE_MAX_PIXELS}) or 'none'") from None


def add_pre_resize_args(group: argparse._ActionsContainer, adopted_from: str | None = None) -> None:
    """``--image-max-pixels`` / ``--image-min-pixels`` for every command that shows images to the model.

    ``adopted_from`` names where the command takes the frame from when no flag is given (``"--recipe"``, "the
    pairs file's record"): the flags then default to ``NOT_GIVEN`` and the command resolves them
    (:func:`spr_plugin.llamafactory.recipe_check.adopt_frame`), else LLaMA-Factory's defaults apply.
    """
    default: Any = DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS
    where = ""
    if adopted_from is not None:
        default = NOT_GIVEN, NOT_GIVEN
        where = f"default: as {adopted_from} says, else "
    group.add_argument(
        "--image-max-pixels",
        type=_pixel_bound,
        default=default[0],
        help="LLaMA-Factory's pre-resize bound applied before the processor; must equal image_max_pixels of the "
        f"training YAML ({where}LLaMA-Factory's default {DEFAULT_IMAGE_MAX_PIXELS}; 'none' = no pre-resize)",
    )
    group.add_argument(
        "--image-min-pixels",
        type=_pixel_bound,
        default=default[1],
        help="LLaMA-Factory's pre-resize lower bound; must equal image_min_pixels of the training YAML "
        f"({where}LLaMA-Factory's default {DEFAULT_IMAGE_MIN_PIXELS}; 'none' = no pre-resize)",
    )
