"""One profile per model family: everything spr-plugin knows about how a family writes and reads.

A profile names the family's box syntax and coordinate frame (a :class:`~spr_plugin.families.box_formats.BoxFormat`
class), the object reference the prompts write, the default REC prompt, LLaMA-Factory's chat template for the
family and the special tokens of its grounding vocabulary (kept in answers that use them, scrubbed from text
shown to people). A new family is one more profile here plus its box syntax in ``box_formats.py``; nothing
else in the package spells a model token.

    get_profile(name)            the profile of a ``--box-format`` value
    profile_of(box_format)       the profile a BoxFormat instance belongs to
    get_box_format(name, frame)  the family's box syntax in a run's image frame
    KNOWN_GROUNDING_TOKENS       every profile's grounding tokens (what a sanitiser may leave in an answer)
"""

from __future__ import annotations

from dataclasses import dataclass

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.options import BOX_FORMATS
from spr_plugin.families.box_formats import (
    BOX_END,
    BOX_START,
    REF_END,
    REF_START,
    BoxFormat,
    GLM4VFormat,
    InternVLFormat,
    Qwen2VLFormat,
    Qwen3VLFormat,
    Qwen25VLFormat,
    Qwen25VLJsonFormat,
    ResizeSpec,
)

#: Qwen's grounding tokens, in the order of its vocabulary.
QWEN_GROUNDING_TOKENS: tuple[str, ...] = (REF_START, REF_END, BOX_START, BOX_END)
#: InternVL's grounding tokens (added tokens of its tokenizer, next to ``<img>``, ``</img>``, ``<IMG_CONTEXT>``).
INTERNVL_GROUNDING_TOKENS: tuple[str, ...] = (
    InternVLFormat.ref_start,
    InternVLFormat.ref_end,
    InternVLFormat.box_start,
    InternVLFormat.box_end,
)
#: GLM-4.1V / 4.5V's box markers (special tokens of its tokenizer); it has no reference markers.
GLM4V_GROUNDING_TOKENS: tuple[str, ...] = (GLM4VFormat.box_start, GLM4VFormat.box_end)

#: The SPR request (``{box}`` = the query region in the family's syntax): what the DPO records ask and the
#: ``box_text`` / ``crop`` / ``refs`` generation variants build on.
DESCRIBE_PROMPT = "Describe the region {box} in detail. Ground every object you mention with a bounding box."


@dataclass(frozen=True)
class FamilyProfile:
    """A model family as spr-plugin sees it (one per ``--box-format`` value)."""

    #: The ``--box-format`` value.
    name: str
    #: Box syntax and coordinate frame.
    format_class: type[BoxFormat]
    #: LLaMA-Factory's ``template:`` for the family.
    template: str
    #: The default REC prompt, with ``{expression}``.
    rec_prompt: str
    #: The family's grounding vocabulary (the tokens its tokenizer has for references and boxes).
    grounding_tokens: tuple[str, ...]
    #: Whether an answer in this syntax is written with those tokens (and so keeps them through the sanitiser).
    answer_uses_tokens: bool
    #: How a prompt refers to an object by name: ``(start, end)`` around the name.
    reference_marks: tuple[str, str] = (REF_START, REF_END)
    #: The chat template's end-of-turn token (scrubbed from text shown to people).
    end_of_turn: str = "<|im_end|>"
    #: The SPR request in the family's style, with ``{box}``.
    describe_prompt: str = DESCRIBE_PROMPT
    #: Other LLaMA-Factory templates that train the family with the same plugin and answer syntax
    #: (``spr check-recipe`` accepts them too).
    other_templates: tuple[str, ...] = ()
    #: The HF processor class of the family's checkpoints (how a loaded model tells which family it is).
    processor_class: str = "Qwen2VLProcessor"
    #: Whether LLaMA-Factory's plugin for the family is the Qwen2-VL plugin or a subclass: its pre-resize then adds
    #: the 28-pixel minimum side and the aspect-ratio cap (:func:`spr_plugin.core.frame.lf_resize_steps`).
    qwen_resize_rules: bool = True
    #: Whether the family's LLaMA-Factory plugin reads the ``crop_to_patches`` key (InternVL's tiling); spr samples
    #: in its default (off: the image processor's configured tiling), so ``spr check-recipe`` refuses it on.
    reads_crop_to_patches: bool = False

    def box_format(self, frame: ImageFrame | None = None, **kwargs: object) -> BoxFormat:
        """The family's box syntax; ``frame`` is the run's LLaMA-Factory pre-resize (pixel formats write in it)."""
        if frame is not None and issubclass(self.format_class, Qwen25VLFormat) and "resize" not in kwargs:
            kwargs["resize"] = ResizeSpec(pre_max_pixels=frame.image_max_pixels, pre_min_pixels=frame.image_min_pixels)
        return self.format_class(**kwargs)  # type: ignore[arg-type]

    @property
    def templates(self) -> tuple[str, ...]:
        """Every LLaMA-Factory template that trains this family on SPR data, the default first."""
        return (self.template, *self.other_templates)

    @property
    def kept_tokens(self) -> tuple[str, ...]:
        """The tokens an answer in this family's syntax may keep: its own grounding tokens, if it writes them."""
        return self.grounding_tokens if self.answer_uses_tokens else ()

    @property
    def scrubbed_tokens(self) -> tuple[str, ...]:
        """Tokens removed from an answer before people read it."""
        return (*self.grounding_tokens, self.end_of_turn)

    def reference(self, name: str) -> str:
        """An object named in a prompt (the ``refs`` prompt variant, the REC prompt)."""
        start, end = self.reference_marks
        return f"{start}{name}{end}"


_QWEN_REC = f"Output the bounding box of {REF_START}{{expression}}{REF_END} in the image."
#: Qwen's documented JSON grounding request (Qwen2.5-VL and Qwen3-VL cookbooks, Qwen3-VL's evaluation prompt).
_QWEN_JSON_REC = (
    'Locate every object that matches the description "{expression}" in the image. Report bbox coordinates in JSON format.'
)
_IVL_REF, _IVL_REF_END = INTERNVL_GROUNDING_TOKENS[:2]

PROFILES: dict[str, FamilyProfile] = {
    p.name: p
    for p in (
        FamilyProfile("qwen2_vl", Qwen2VLFormat, "qwen2_vl", _QWEN_REC, QWEN_GROUNDING_TOKENS, answer_uses_tokens=True),
        FamilyProfile("qwen2_5_vl", Qwen25VLFormat, "qwen2_vl", _QWEN_REC, QWEN_GROUNDING_TOKENS, answer_uses_tokens=True),
        # Qwen2.5-VL's JSON form is asked for JSON (Qwen's own documented grounding request).
        FamilyProfile(
            "qwen2_5_vl_json", Qwen25VLJsonFormat, "qwen2_vl", _QWEN_JSON_REC, QWEN_GROUNDING_TOKENS, answer_uses_tokens=False
        ),
        # Qwen3-VL / Qwen3.5: JSON on a relative 0-1000 grid; no reference tokens in its answers, so a prompt names
        # an object in quotes. The thinking template (qwen3_vl) trains the same syntax.
        FamilyProfile(
            "qwen3_vl",
            Qwen3VLFormat,
            "qwen3_vl_nothink",
            _QWEN_JSON_REC,
            QWEN_GROUNDING_TOKENS,
            answer_uses_tokens=False,
            reference_marks=('"', '"'),
            describe_prompt="Describe the region {box} in detail, then report the bbox coordinates of every object "
            "you mention in JSON format.",
            other_templates=("qwen3_vl", "qwen3_5_nothink", "qwen3_5"),
            processor_class="Qwen3VLProcessor",
        ),
        # InternVL 2 / 2.5 / 3: <ref>/<box> tags on a 0-1000 grid; its own grounding request (model card).
        FamilyProfile(
            "internvl",
            InternVLFormat,
            "intern_vl",
            "Please provide the bounding box coordinate of the region this sentence describes: "
            f"{_IVL_REF}{{expression}}{_IVL_REF_END}",
            INTERNVL_GROUNDING_TOKENS,
            answer_uses_tokens=True,
            reference_marks=(_IVL_REF, _IVL_REF_END),
            describe_prompt="Please describe the region {box} in detail. Ground every object you mention with a bounding box.",
            reads_crop_to_patches=True,
            processor_class="InternVLProcessor",
            qwen_resize_rules=False,
        ),
        # GLM-4.1V / 4.5V: bare boxes in its box markers on a 0-1000 grid; objects are named in quotes.
        FamilyProfile(
            "glm4v",
            GLM4VFormat,
            "glm4v",
            'Please find "{expression}" in the image and output its bounding box.',
            GLM4V_GROUNDING_TOKENS,
            answer_uses_tokens=True,
            reference_marks=('"', '"'),
            end_of_turn="<|endoftext|>",
            describe_prompt="Describe the region {box} in detail. Give the bounding box of every object you mention.",
            other_templates=("glm4_5v",),
            processor_class="Glm4vProcessor",
        ),
    )
}
assert tuple(PROFILES) == BOX_FORMATS, "spr_plugin.core.options.BOX_FORMATS lists the profiles (the CLI choices)"

#: Every profile's grounding tokens, in order: what a sanitiser leaves in text it does not know the family of.
KNOWN_GROUNDING_TOKENS: tuple[str, ...] = tuple(dict.fromkeys(t for p in PROFILES.values() for t in p.grounding_tokens))


def qwen_resize_rules(processor: object) -> bool:
    """Whether LLaMA-Factory pre-resizes images for this processor's family with the Qwen2-VL plugin's extra steps
    (every family but InternVL; an unknown processor keeps the Qwen2-VL rules, spr's default family)."""
    name = type(processor).__name__
    return next((p.qwen_resize_rules for p in PROFILES.values() if p.processor_class == name), True)


def available_formats() -> list[str]:
    return sorted(PROFILES)


def get_profile(name: str) -> FamilyProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown box format {name!r}; choose one of {', '.join(available_formats())}") from None


def profile_of(box_format: BoxFormat) -> FamilyProfile:
    return get_profile(box_format.name)


def get_box_format(name: str, frame: ImageFrame | None = None, **kwargs: object) -> BoxFormat:
    """Look a format up by name (``qwen2_vl``, ``qwen2_5_vl``, ``qwen2_5_vl_json``, ``qwen3_vl``, ``internvl``, ``glm4v``).

    ``frame`` is the run's LLaMA-Factory pre-resize: Qwen2.5-VL formats parse and write pixels of the image
    *after* it, so a run with non-default ``image_max_pixels`` must pass its frame here.
    """
    return get_profile(name).box_format(frame, **kwargs)
