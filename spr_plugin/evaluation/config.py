"""Settings of ``spr eval rec`` and ``spr eval region``, defined once: dataclass fields carrying their help
text, from which the command line's flags are generated (:func:`spr_plugin.settings.add_flags`).

Kept light (no torch, numpy or model-family import at module level) because the CLI builds its parser from
these classes, and ``spr --help`` / ``spr register`` must not pay for a model stack.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.frame import FramedConfig, ImageFrame
from spr_plugin.core.options import BOX_FORMATS, DEFAULT_BOX_FORMAT
from spr_plugin.evaluation.metrics import CONVENTIONS, DEFAULT_THRESHOLDS
from spr_plugin.settings import check_numbers, setting

_BOX_FORMAT_HELP = " | ".join(BOX_FORMATS) + " (how the model writes boxes)"
#: LLaMA-Factory's pre-resize, as in the training YAML (None = none): Qwen2.5-VL answers in pixels of the resized
#: input, so evaluation must show the model the frame it was trained in. Flags: --image-max/min-pixels (the frame
#: is resolved against --recipe / --dataset-dir first, see ``evaluation.cli.check_eval_frame``).
_FRAME_HELP = "LLaMA-Factory's pre-resize, as in the training YAML; flags: --image-max-pixels / --image-min-pixels"


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``--thresholds 0.5,0.75``: comma-separated IoU thresholds (their range is checked by the config)."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None


def _check_format(box_format: str) -> None:
    from spr_plugin.families.profiles import get_box_format  # the model-family stack, only when a config is built

    get_box_format(box_format)  # fail early on an unknown format (the frame checked itself: ImageFrame)


@dataclass(frozen=True)
class RecConfig(FramedConfig):
    """How ``spr eval rec`` asks and scores referring expressions."""

    box_format: str = setting(DEFAULT_BOX_FORMAT, _BOX_FORMAT_HELP)
    prompt: str | None = setting(None, "prompt template with {expression} (default depends on --box-format)")
    convention: str = setting(">=", "correct iff IoU >= t (Qwen-VL, Ferret) or > t (Groma, VLM-R1)", choices=list(CONVENTIONS))
    thresholds: tuple[float, ...] = setting(DEFAULT_THRESHOLDS, "comma-separated IoU thresholds", type=parse_thresholds)
    batch_size: int = setting(8, "prompts per generate() call")
    max_new_tokens: int = setting(64, "longest answer generated")
    frame: ImageFrame = setting(ImageFrame(), _FRAME_HELP, cli=False)

    def __post_init__(self) -> None:
        from spr_plugin.core.sanitize import remove_tokens
        from spr_plugin.families.profiles import KNOWN_GROUNDING_TOKENS

        check_numbers(self)
        _check_format(self.box_format)
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"unknown threshold convention {self.convention!r}; choose one of {', '.join(CONVENTIONS)}")
        if self.prompt is not None and "{expression}" not in self.prompt:
            raise ConfigError("the REC prompt template must contain {expression}")
        if self.prompt is not None and remove_tokens(self.prompt, KNOWN_GROUNDING_TOKENS)[1]:
            raise ConfigError(
                "the REC prompt template must not hold <image>, chat or other special tokens (the image goes first)"
            )
        if not self.thresholds or any(not 0 < t <= 1 for t in self.thresholds):
            raise ConfigError(f"IoU thresholds must lie in (0, 1], got {self.thresholds}")
        if min(self.batch_size, self.max_new_tokens) < 1:
            raise ConfigError("batch_size and max_new_tokens must be >= 1")

    @property
    def template(self) -> str:
        from spr_plugin.evaluation.rec import default_prompt

        return self.prompt if self.prompt is not None else default_prompt(self.box_format)


@dataclass(frozen=True)
class RegionEvalConfig(FramedConfig):
    """How ``spr eval region`` asks for and scores grounded region descriptions."""

    box_format: str = setting(DEFAULT_BOX_FORMAT, _BOX_FORMAT_HELP)
    iou_threshold: float = setting(0.5, "a box matches an object iff IoU > this")
    batch_size: int = setting(8, "prompts per generate() call")
    max_new_tokens: int = setting(160, "longest answer generated")
    frame: ImageFrame = setting(ImageFrame(), _FRAME_HELP, cli=False)

    def __post_init__(self) -> None:
        check_numbers(self)
        _check_format(self.box_format)
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ConfigError(f"IoU threshold must lie in [0, 1), got {self.iou_threshold}")
        if min(self.batch_size, self.max_new_tokens) < 1:
            raise ConfigError("batch_size and max_new_tokens must be >= 1")
