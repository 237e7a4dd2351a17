"""``spr eval rec``: referring expression comprehension accuracy of a grounding model.

For every expression the model is asked (greedy decoding) for the box of the described object; the
first box of its answer, parsed with the model's box format (:mod:`spr_plugin.families.box_formats`), is the
prediction. REC scores are notoriously prompt-sensitive, so the prompt template is part of the
report and can be changed with ``--prompt``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.images import check_image_cached
from spr_plugin.core.records import Box
from spr_plugin.core.sanitize import sanitize_phrase
from spr_plugin.core.sharegpt import IMAGE_TOKEN
from spr_plugin.evaluation.config import RecConfig
from spr_plugin.evaluation.metrics import RecSummary, box_iou, rec_summary
from spr_plugin.evaluation.rec_data import RecItem
from spr_plugin.evaluation.runner import decoding_settings, run_resumable
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import get_box_format, get_profile
from spr_plugin.families.prompts import Prompt
from spr_plugin.generation.model_runner import ModelRunner


def default_prompt(box_format: str) -> str:
    """The REC prompt of the box format's model family (:attr:`FamilyProfile.rec_prompt`)."""
    try:
        return get_profile(box_format).rec_prompt
    except ConfigError:
        raise ConfigError(f"no default REC prompt for box format {box_format!r}; pass --prompt") from None


def rec_prompt(expression: str, template: str) -> str:
    """User turn (LLaMA-Factory placeholder form): the image, then the question. The expression is sanitised
    again here (a special token in it would add an image placeholder or a chat turn to the prompt)."""
    return IMAGE_TOKEN + template.replace("{expression}", sanitize_phrase(expression, 1000)[0])


def first_box(answer: str, box_format: BoxFormat, width: int, height: int) -> Box | None:
    """The answer's first valid box in original pixels, or None if it has none (counted as wrong)."""
    for phrase in box_format.parse(answer, width, height).phrases:
        if phrase.box is not None:
            return phrase.box
    return None


def image_size(path: str) -> tuple[int, int]:
    """Size of an item's image (checked before evaluation by :func:`usable_items`)."""
    size = check_image_cached(path)
    if isinstance(size, str):
        raise SPRError(f"cannot use image {path}: {size.replace('_', ' ')}")
    return size


def usable_items(items: list[RecItem]) -> tuple[list[RecItem], Counter]:
    """The items whose image can be shown to the model, checked before any model is loaded.

    A missing image is the user's error (a wrong ``--images``): one line naming where it was expected. An
    image that is there but unusable (truncated, not an image, a decompression bomb) skips its items, counted
    in the report, so one bad file does not end a long evaluation.
    """
    images = list(dict.fromkeys(it.image for it in items))
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise SPRError(
            f"{len(missing)} of {len(images)} images not found, e.g. {missing[0]}; --images must be the folder the "
            "file's image names start from (RefCOCO: COCO train2014)"
        )
    bad = {p: r for p in images if isinstance(r := check_image_cached(p), str)}
    skipped: Counter = Counter(bad[it.image] for it in items if it.image in bad)
    return [it for it in items if it.image not in bad], skipped


@dataclass
class RecReport:
    """What ``spr eval rec`` writes as JSON: the metrics plus everything needed to reproduce them."""

    model: str
    annotations: str
    box_format: str
    prompt: str
    convention: str
    summary: RecSummary
    reused: int = 0
    decoding: dict[str, Any] = field(default_factory=dict)
    #: Items left out because their image is unusable (by reason), and what loading the files counted.
    skipped_items: dict[str, int] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary.to_dict()
        d["threshold_rule"] = f"correct iff IoU {self.convention} threshold; unparseable answers count as IoU 0 (wrong)"
        return d


def score_answer(item: RecItem, answer: str, box_format: BoxFormat) -> dict[str, Any]:
    width, height = image_size(item.image)
    pred = first_box(answer, box_format, width, height)
    return {
        "expression": item.expression,
        "answer": answer,
        "pred": None if pred is None else [round(v, 2) for v in pred.as_list()],
        "gt": item.box.as_list(),
        "iou": None if pred is None else round(box_iou(pred, item.box), 6),
    }


def evaluate_rec(
    items: list[RecItem],
    loaded: ModelRunner,
    config: RecConfig,
    results_path: str | os.PathLike,
    *,
    annotations: str = "",
    progress: bool = True,
) -> RecReport:
    """Evaluate (resuming from ``results_path``) and summarise; per-item records stay in ``results_path``."""
    fmt = get_box_format(config.box_format, ImageFrame(config.image_max_pixels, config.image_min_pixels))
    template = config.template
    results, reused = run_resumable(
        [it.item_id for it in items],
        lambda i: Prompt("rec", rec_prompt(items[i].expression, template), (items[i].image,)),
        lambda i, answer: score_answer(items[i], answer, fmt),
        loaded,
        results_path,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        progress=progress,
        image_max_pixels=config.image_max_pixels,
        image_min_pixels=config.image_min_pixels,
        desc="eval rec",
    )
    summary = rec_summary([r["iou"] for r in results], config.thresholds, config.convention)
    return RecReport(
        model=loaded.name,
        annotations=annotations,
        box_format=config.box_format,
        prompt=template,
        convention=config.convention,
        summary=summary,
        reused=reused,
        decoding=decoding_settings(config),
    )
