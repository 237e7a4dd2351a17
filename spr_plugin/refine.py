"""Refinement: snap a description's well-localized boxes to the annotations and drop the rest.

SPR refines candidates before choosing the preferred one: boxes that match an annotated object with
IoU > 0.5 are replaced by that object's box, and boxes that match nothing (hallucinated, duplicate,
or unparseable) lose their grounding while the phrase text stays, so the text still reads naturally.
This widens the localization gap between chosen and rejected without inventing new content.

Matching is one-to-one (Hungarian) whatever metric scores the candidates: with a many-to-one match
two duplicate boxes would both snap to the same object and the chosen text would teach duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .box_formats import BoxFormat
from .localization import DEFAULT_IOU_THRESHOLD, iou_matrix, match_hungarian
from .records import Box, Candidate, Region


@dataclass(frozen=True)
class RefineResult:
    candidate: Candidate
    snapped: int
    dropped: int

    @property
    def changed(self) -> bool:
        return bool(self.snapped or self.dropped)


def refine_candidate(
    candidate: Candidate, region: Region, box_format: BoxFormat, threshold: float = DEFAULT_IOU_THRESHOLD
) -> RefineResult:
    """The refined candidate (same key, new text) and how many boxes were snapped and dropped."""
    w, h = region.width, region.height
    parse = box_format.parse(candidate.text, w, h)
    # Indices of phrases that carry a valid box, in the order of ``parse.boxes``.
    boxed = [i for i, p in enumerate(parse.phrases) if p.box is not None]
    gt = [o.box for o in region.objects]
    matches = match_hungarian(iou_matrix(gt, parse.boxes), threshold)
    snapped_to: dict[int, Box] = {boxed[m.pred_index]: gt[m.gt_index] for m in matches}
    # Unparseable boxes (box None but a box was written) are dropped too: the span holds box text.
    edits: dict[int, Box | None] = {}
    for i, phrase in enumerate(parse.phrases):
        if i in snapped_to:
            edits[i] = snapped_to[i]
        elif phrase.box is not None or _has_box_text(candidate.text, phrase.span):
            edits[i] = None
    text = box_format.clean(box_format.rewrite(candidate.text, parse, edits, w, h), w, h)
    snapped = sum(1 for i, b in snapped_to.items() if parse.phrases[i].box != b)
    dropped = sum(1 for b in edits.values() if b is None)
    return RefineResult(replace(candidate, text=text), snapped, dropped)


def _has_box_text(text: str, span: tuple[int, int]) -> bool:
    part = text[span[0] : span[1]]
    return "<|box_start|>" in part or "bbox_2d" in part
