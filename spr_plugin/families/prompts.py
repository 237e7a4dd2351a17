"""Prompt variants for candidate generation, and the prompt stored in the DPO dataset.

SPR prompts the model several ways so candidates differ: the region box written in the text, the
cropped region given as a second image, and object references taken from the annotations. The DPO
dataset always uses the plain ``box_text`` prompt with the full image, the request users make at
inference time, so the preference is learned for the question the model will actually be asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.images import crop_region
from spr_plugin.core.options import VARIANTS
from spr_plugin.core.records import Region
from spr_plugin.core.sanitize import sanitize_phrase
from spr_plugin.core.sharegpt import IMAGE_TOKEN
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import DESCRIBE_PROMPT, get_profile, profile_of


def _name(text: str) -> str:
    """A category name as it may appear in a prompt (names of regions files from elsewhere are not trusted)."""
    return sanitize_phrase(text)[0] or "object"


#: The user turn of every training record (DPO, chosen-only SFT, GRPO prompts) of the Qwen2 families: ``{box}`` is the
#: query region written in the dataset's box format. Recorded in the parquets of ``spr export-hf`` / ``spr export-grpo``.
#: Other families ask in their own style: :func:`prompt_template`.
PROMPT_TEMPLATE = IMAGE_TOKEN + DESCRIBE_PROMPT


def prompt_template(box_format: BoxFormat | str) -> str:
    """The training user turn of a box format's family, with ``{box}``."""
    profile = get_profile(box_format) if isinstance(box_format, str) else profile_of(box_format)
    return IMAGE_TOKEN + profile.describe_prompt


@dataclass(frozen=True)
class Prompt:
    """A user turn: text with one ``<image>`` placeholder per image, and the images in order."""

    variant: str
    text: str
    images: tuple[Image.Image | str, ...]


def training_prompt(region: Region, box_format: BoxFormat) -> str:
    """The user turn of every DPO record (LLaMA-Factory placeholder form)."""
    return prompt_template(box_format).format(box=box_format.render_box(region.box, region.width, region.height))


def build_prompt(variant: str, region: Region, box_format: BoxFormat) -> Prompt:
    """A generation prompt of the given variant; images are paths or PIL crops."""
    box = box_format.render_box(region.box, region.width, region.height)
    ask = profile_of(box_format).describe_prompt.format(box=box)
    if variant == "box_text":
        return Prompt(variant, IMAGE_TOKEN + ask, (region.image_path,))
    if variant == "crop":
        with Image.open(region.image_path) as im:
            crop = crop_region(im.convert("RGB"), region.box)
        text = (
            f"{IMAGE_TOKEN}This is the full image. {IMAGE_TOKEN}This is the region {box} cropped from it. "
            f"{ask} Use coordinates of the full image."
        )
        return Prompt(variant, text, (region.image_path, crop))
    if variant == "refs":
        refs = ", ".join(profile_of(box_format).reference(_name(c)) for c in region.categories)
        return Prompt(variant, f"{IMAGE_TOKEN}{ask} The region contains: {refs}.", (region.image_path,))
    raise ConfigError(f"unknown prompt variant {variant!r}; choose from {', '.join(VARIANTS)}")
