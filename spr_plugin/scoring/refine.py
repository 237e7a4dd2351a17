"""Refinement: snap a description's well-localized boxes to the annotations, and decide what happens to the rest.

SPR refines candidates before choosing the preferred one: boxes that match an annotated object with
IoU > 0.5 (and, with label matching, whose phrase names that object) are replaced by that object's box.
This widens the localization gap between chosen and rejected. What happens to the phrases that matched
nothing is the *policy*, chosen per run and recorded in the dataset card:

* ``strip``: their boxes are removed and their words stay. The text reads naturally, but a chosen answer
  can end up mentioning objects without boxes, against the prompt's own "ground every object"; in the
  first effect study chosen answers held about 1 box against 2.6 in rejected ones, and DPO learned to
  write fewer boxes.
* ``correct``: a phrase whose label names an object of the region that no other phrase matched gets that
  object's box even when its own box missed (or it had none), so the chosen answer is fully and correctly
  grounded. Phrases naming nothing in the region are stripped as above.
* ``drop``: unmatched phrases are removed with their words (and one separating comma or conjunction).
* ``off``: no refinement (the ranking then picks the best *initial* description as chosen).

Matching is one-to-one (Hungarian) whatever metric scores the candidates, and it is the scorer's own
(:class:`spr_plugin.scoring.scorer.Assessment`), so one place decides which box matched: with a many-to-one
match two duplicate boxes would both snap to the same object and the chosen text would teach duplicates.
Malformed box text (cut off, garbage, out of range) is always removed, so chosen texts re-parse cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from spr_plugin.core.records import Box, Candidate, ParseResult, Region
from spr_plugin.families.box_formats import DROP, BoxFormat, Edit
from spr_plugin.scoring.labels import LabelMatcher
from spr_plugin.scoring.localization import DEFAULT_IOU_THRESHOLD, iou_matrix, phrase_matches
from spr_plugin.settings import check_policy


@dataclass(frozen=True)
class RefineResult:
    """The refined candidate (same key, new text) and what refinement did to it."""

    candidate: Candidate
    policy: str
    snapped: int = 0  # matched boxes moved onto their annotated box
    matched: int = 0  # boxes kept because they matched an object (snapped or already exact)
    corrected: int = 0  # phrases given the box of the object they name (``correct``)
    ungrounded: int = 0  # boxes removed, their words kept
    removed: int = 0  # phrases removed with their words (``drop``)
    labelled_matches: int = 0  # matched boxes that carry a phrase (bare boxes have none)
    agreeing_matches: int = 0  # ... whose phrase names the matched object's category

    @property
    def changed(self) -> bool:
        return bool(self.snapped or self.corrected or self.ungrounded or self.removed)

    @property
    def words_changed(self) -> bool:
        return self.removed > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "snapped": self.snapped,
            "matched": self.matched,
            "corrected": self.corrected,
            "ungrounded": self.ungrounded,
            "removed": self.removed,
            "labelled_matches": self.labelled_matches,
            "agreeing_matches": self.agreeing_matches,
        }


def refine(
    candidate: Candidate,
    region: Region,
    parse: ParseResult,
    agree: np.ndarray,
    matches: dict[int, int],
    box_format: BoxFormat,
    policy: str = "correct",
    neutral: frozenset[int] = frozenset(),
) -> RefineResult:
    """Refine one parsed candidate; ``agree``, ``matches`` and ``neutral`` as in :class:`spr_plugin.scoring.scorer.Assessment`.

    ``neutral`` phrases (boxes on objects the annotations are silent about, e.g. LVIS not-exhaustive categories)
    stay as written: a right box on an unlabelled object must not be taken out of the chosen answer.
    """
    check_policy(policy)
    if policy == "off":
        return RefineResult(candidate, policy)
    phrases = parse.phrases
    gt = [o.box for o in region.objects]
    edits: dict[int, Edit] = {i: gt[g] for i, g in matches.items()}
    corrected = _correct(parse, agree, matches, gt, neutral) if policy == "correct" else {}
    edits.update(corrected)
    for i, phrase in enumerate(phrases):
        if i in edits or i in neutral:
            continue
        if policy == "drop":
            edits[i] = DROP
        elif phrase.box is not None or phrase.malformed:
            edits[i] = None  # bare boxes vanish entirely (they have no words), others keep their words
    w, h = region.width, region.height
    text = box_format.clean(box_format.rewrite(candidate.text, parse, edits, w, h), w, h)
    labelled = [i for i in matches if phrases[i].label]
    return RefineResult(
        replace(candidate, text=text),
        policy,
        snapped=sum(1 for i, g in matches.items() if phrases[i].box != gt[g]),
        matched=len(matches),
        corrected=len(corrected),
        ungrounded=sum(1 for e in edits.values() if e is None),
        removed=len({phrases[i].span for i, e in edits.items() if e == DROP}),
        labelled_matches=len(labelled),
        agreeing_matches=sum(1 for i in labelled if agree[matches[i], i]),
    )


def _correct(
    parse: ParseResult, agree: np.ndarray, matches: dict[int, int], gt: list[Box], neutral: frozenset[int] = frozenset()
) -> dict[int, Box]:
    """Unmatched labelled phrases -> the box of an unclaimed object their label names, one to one.

    Among several objects of the named category the assignment prefers the one the phrase's own box
    overlaps most, so a box that was near the right object moves onto it, not onto its twin.
    """
    claimed = set(matches.values())
    free_objects = [g for g in range(len(gt)) if g not in claimed]
    open_phrases = [i for i, p in enumerate(parse.phrases) if i not in matches and i not in neutral and p.label]
    if not free_objects or not open_phrases:
        return {}
    boxes = [parse.phrases[i].box for i in open_phrases]
    overlap = np.zeros((len(free_objects), len(open_phrases)))
    with_box = [k for k, b in enumerate(boxes) if b is not None]
    if with_box:
        overlap[:, with_box] = iou_matrix([gt[g] for g in free_objects], [boxes[k] for k in with_box])
    named = agree[np.ix_(free_objects, open_phrases)]
    weight = np.where(named, 1.0 + overlap, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return {open_phrases[c]: gt[free_objects[r]] for r, c in zip(rows, cols) if weight[r, c] > 0}


def refine_candidate(
    candidate: Candidate,
    region: Region,
    box_format: BoxFormat,
    threshold: float = DEFAULT_IOU_THRESHOLD,
    policy: str = "strip",
    labels: LabelMatcher | None = None,
    label_match: bool = True,
) -> RefineResult:
    """Parse, match (:func:`~spr_plugin.scoring.localization.phrase_matches`, as the scorer does) and refine one
    candidate on its own (the build uses the scorer's assessment instead).

    Without ``labels`` only the name rules of :mod:`spr_plugin.scoring.labels` decide agreement (no text model).
    """
    w, h = region.width, region.height
    parse = box_format.parse(candidate.text, w, h)
    matcher = labels or LabelMatcher()
    (agree,) = matcher.agreement([(region.objects, [p.label for p in parse.phrases])])
    matches = phrase_matches([o.box for o in region.objects], parse, agree if label_match else None, threshold)
    return refine(candidate, region, parse, agree, matches, box_format, policy)
