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
  object's box even when its own box missed (or it had none), and so does a *plain-word* mention of such an
  object (one to one, unclaimed objects only; formats that cannot ground words in place, the JSON one, leave
  them as words). Phrases naming nothing in the region are stripped as above.
* ``drop``: unmatched phrases are removed with their words (and one separating comma or conjunction).
* ``off``: no refinement (the ranking then picks the best *initial* description as chosen).

Whatever the policy (``off`` aside), two things never reach a refined text:

* **Hallucinated mentions**: every mention, tagged or in plain words, of a category the annotations say is
  not in the image (:mod:`spr_plugin.scoring.mentions`) is removed with its separating comma or conjunction
  (:func:`spr_plugin.scoring.wording.removal_span`); a reference naming one goes even when its box matched (label
  matching off) or lies on an ignored object. Mentions of categories elsewhere in the image, and names the
  vocabulary does not know, keep their words (the annotations cannot call them wrong).
* **Box debris**: malformed units, stray markers, coordinate and number runs, cut-off JSON objects
  (:func:`spr_plugin.scoring.mentions.find_debris`), removed until none is left.

Matching is one-to-one (Hungarian) whatever metric scores the candidates, and it is the scorer's own
(:class:`spr_plugin.scoring.scorer.Assessment`), so one place decides which box matched: with a many-to-one
match two duplicate boxes would both snap to the same object and the chosen text would teach duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from spr_plugin.core.options import DEFAULT_IOU_THRESHOLD
from spr_plugin.core.records import Box, Candidate, ParseResult, Region
from spr_plugin.core.serialize import field_dict
from spr_plugin.families.box_formats import DROP, BoxFormat, Edit
from spr_plugin.scoring.labels import LabelMatcher
from spr_plugin.scoring.localization import iou_matrix, phrase_matches
from spr_plugin.scoring.mentions import (
    ABSENT,
    REGION,
    Mention,
    RegionJudge,
    Vocabulary,
    find_debris,
    find_mentions,
    gaps,
    reading_labels,
    unit_spans,
)
from spr_plugin.scoring.wording import Layout, apply_edits, drop_empty_lead_ins, removal_span
from spr_plugin.settings import PairingConfig, check_policy


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
    hallucinations_removed: int = 0  # mentions (tagged or plain) of categories absent from the image
    plain_grounded: int = 0  # plain-word mentions given their object's box (``correct``)
    debris_removed: int = 0  # pieces of box debris removed after the rewrite

    @property
    def changed(self) -> bool:
        return bool(
            self.snapped or self.corrected or self.ungrounded or self.removed or self.hallucinations_removed
            or self.plain_grounded or self.debris_removed
        )  # fmt: skip

    @property
    def words_changed(self) -> bool:
        return bool(self.removed or self.hallucinations_removed or self.debris_removed)

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, skip=("candidate",))


def refine(
    candidate: Candidate,
    region: Region,
    parse: ParseResult,
    agree: np.ndarray,
    matches: dict[int, int],
    box_format: BoxFormat,
    policy: str = PairingConfig.refine_policy,
    neutral: frozenset[int] = frozenset(),
    judge: RegionJudge | None = None,
    labels: Sequence[str] | None = None,
    mentions: Sequence[Mention] | None = None,
) -> RefineResult:
    """Refine one parsed candidate; ``agree``, ``matches``, ``neutral`` and ``labels`` as in
    :class:`spr_plugin.scoring.scorer.Assessment`.

    ``neutral`` phrases (boxes on objects the annotations are silent about, e.g. LVIS not-exhaustive categories)
    stay as written: a right box on an unlabelled object must not be taken out of the chosen answer. ``judge``
    says which named categories are absent (default: what the region itself records). ``labels`` are the phrases'
    labels as the text reads them (default: their reference labels); a bare box right after plain words takes
    their name (:func:`spr_plugin.scoring.mentions.reading_labels`), so ``correct`` gives "a blue square [the red
    circle's box]" the blue square's box, and a box after words naming an absent category goes with those words.
    ``mentions``: the text's mentions as the scorer already found them with ``judge`` (default: found here).
    """
    check_policy(policy)
    if policy == "off":
        return RefineResult(candidate, policy)
    judge = judge or RegionJudge.of(region)
    phrases = parse.phrases
    labels = list(labels) if labels is not None else [p.label for p in phrases]
    gt = [o.box for o in region.objects]
    mentions = list(mentions) if mentions is not None else find_mentions(candidate.text, parse, judge)
    absent_units = {m.span for m in mentions if m.tagged and m.status == ABSENT}
    # Bare boxes grounding words that name an absent category: the words go as plain mentions, the boxes with them.
    absent_bare = {phrases[m.phrase].span for m in mentions if not m.tagged and m.phrase is not None and m.status == ABSENT}
    # Words a bare box grounds stay when the box goes (under ``drop`` too: removing the box with a separator after
    # it would leave the words glued to the next phrase); absent ones are removed as plain mentions below.
    bound = {phrases[m.phrase].span for m in mentions if not m.tagged and m.phrase is not None}
    # A reference naming an absent category goes whatever its box: matched without label matching
    # (--label-match off) or lying on an ignored object, it would still teach the absent name.
    absent = frozenset(i for i, p in enumerate(phrases) if p.span in absent_units or p.span in absent_bare)
    matches = {i: g for i, g in matches.items() if i not in absent}
    neutral = neutral - absent
    edits: dict[int, Edit] = {i: gt[g] for i, g in matches.items()}
    corrected = _correct(parse, agree, matches, gt, neutral | absent, labels) if policy == "correct" else {}
    edits.update({i: gt[g] for i, g in corrected.items()})
    for i, phrase in enumerate(phrases):
        if i in edits or i in neutral:
            continue
        if phrase.span in bound:
            edits[i] = None
        elif policy == "drop" or phrase.span in absent_units:
            edits[i] = DROP
        elif phrase.box is not None or phrase.malformed:
            edits[i] = None  # bare boxes vanish entirely (they have no words), others keep their words
    w, h = region.width, region.height
    # Cleaned before the words are edited: removing a plain mention inside an object cut off at the end ("{"label":
    # "dog", "bbox_2d") must not take the evidence of the cut with it, or the JSON would be left open.
    text = box_format.clean(box_format.rewrite(candidate.text, parse, edits, w, h), w, h)
    claimed = {*matches.values(), *corrected.values()}
    text, plain_removed, plain_grounded = _edit_plain_mentions(text, box_format, w, h, judge, claimed, policy, gt)
    text, debris = _strip_debris(box_format.clean(text, w, h), box_format, w, h)
    if absent_units or plain_removed or debris:
        text = drop_empty_lead_ins(text, unit_spans(box_format.parse(text, w, h)))
    labelled = [i for i in matches if labels[i]]
    tagged_removed = {phrases[i].span for i, e in edits.items() if e == DROP and phrases[i].span in absent_units}
    return RefineResult(
        replace(candidate, text=text),
        policy,
        snapped=sum(1 for i, g in matches.items() if phrases[i].box != gt[g]),
        matched=len(matches),
        corrected=len(corrected),
        ungrounded=sum(1 for i, e in edits.items() if e is None and phrases[i].span not in absent_bare),
        removed=len({phrases[i].span for i, e in edits.items() if e == DROP} - tagged_removed),
        labelled_matches=len(labelled),
        agreeing_matches=sum(1 for i in labelled if agree[matches[i], i]),
        hallucinations_removed=len(tagged_removed) + plain_removed,
        plain_grounded=plain_grounded,
        debris_removed=debris,
    )


def _edit_plain_mentions(
    text: str, fmt: BoxFormat, w: int, h: int, judge: RegionJudge, claimed: set[int], policy: str, gt: list[Box]
) -> tuple[str, int, int]:
    """Remove plain-word mentions of absent categories; under ``correct`` ground plain mentions of unclaimed
    region objects with their box (text order, one object each). Returns the text and both counts."""
    parse = fmt.parse(text, w, h)
    mentions = find_mentions(text, parse, judge)
    plain_absent = [m for m in mentions if not m.tagged and m.status == ABSENT]
    protected = unit_spans(parse)
    edits = []
    if plain_absent:
        layout = Layout(text, protected, [*protected, *(m.span for m in mentions if m.status != ABSENT)])
        for m in plain_absent:
            span, capitalise = removal_span(layout, m.span)
            edits.append((span, "", capitalise))
    grounded = 0
    if policy == "correct" and fmt.grounds_words:
        taken = set(claimed)
        for m in mentions:
            if m.tagged or m.boxed or m.status != REGION:  # words a kept bare box grounds are grounded already
                continue
            free = [g for g in judge.objects_named(m.name) if g not in taken]
            if free:
                taken.add(free[0])
                edits.append((m.span, fmt.render(text[m.span[0] : m.span[1]], gt[free[0]], w, h), False))
                grounded += 1
    if not edits:
        return text, 0, 0
    return apply_edits(text, edits), len(plain_absent), grounded


def _strip_debris(text: str, fmt: BoxFormat, w: int, h: int, rounds: int = 3) -> tuple[str, int]:
    """``text`` without box debris (removing a piece can expose another, hence the rounds) and how many pieces went."""
    removed = 0
    for _ in range(rounds):
        spans = find_debris(text, fmt.parse(text, w, h), fmt.stray_re)
        if not spans:
            break
        removed += len(spans)
        text = fmt.clean(apply_edits(text, [(s, " ", False) for s in spans]), w, h)
    if removed:  # a list cut off with its last object ("[{...}, {"bbox_2d": [5") is closed again
        opened = sum(text.count("[", a, b) - text.count("]", a, b) for a, b in gaps(text, fmt.parse(text, w, h)))
        text += "]" * max(0, opened)
    return text, removed


def _correct(
    parse: ParseResult,
    agree: np.ndarray,
    matches: dict[int, int],
    gt: list[Box],
    neutral: frozenset[int] = frozenset(),
    labels: Sequence[str] | None = None,
) -> dict[int, int]:
    """Unmatched labelled phrases -> the box of an unclaimed object their label names, one to one.

    Among several objects of the named category the assignment prefers the one the phrase's own box
    overlaps most, so a box that was near the right object moves onto it, not onto its twin.
    """
    claimed = set(matches.values())
    free_objects = [g for g in range(len(gt)) if g not in claimed]
    labels = labels if labels is not None else [p.label for p in parse.phrases]
    open_phrases = [i for i in range(len(parse.phrases)) if i not in matches and i not in neutral and labels[i]]
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
    return {open_phrases[c]: free_objects[r] for r, c in zip(rows, cols) if weight[r, c] > 0}


def refine_candidate(
    candidate: Candidate,
    region: Region,
    box_format: BoxFormat,
    threshold: float = DEFAULT_IOU_THRESHOLD,
    policy: str = PairingConfig.refine_policy,
    labels: LabelMatcher | None = None,
    label_match: bool = True,
    vocabulary: Vocabulary | None = None,
) -> RefineResult:
    """Parse, match (:func:`~spr_plugin.scoring.localization.phrase_matches`, as the scorer does) and refine one
    candidate on its own (the build uses the scorer's assessment instead).

    Without ``labels`` only the name rules of :mod:`spr_plugin.scoring.labels` decide agreement (no text model);
    ``vocabulary`` is the dataset's (default: the names the region records).
    """
    w, h = region.width, region.height
    parse = box_format.parse(candidate.text, w, h)
    judge = RegionJudge.of(region, vocabulary)
    mentions = find_mentions(candidate.text, parse, judge)
    read = reading_labels(parse, mentions)
    matcher = labels or LabelMatcher()
    (agree,) = matcher.agreement([(region.objects, read)])
    matches = phrase_matches([o.box for o in region.objects], parse, agree if label_match else None, threshold)
    return refine(candidate, region, parse, agree, matches, box_format, policy, judge=judge, labels=read, mentions=mentions)
