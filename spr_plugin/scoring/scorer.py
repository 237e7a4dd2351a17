"""The combined SPR score S = λ·S_sem + (1-λ)·S_loc for a region's candidate descriptions.

``CandidateScorer`` ties a box format, a semantic scorer, an optional phrase grounder and the
localization metric together; it is the one place where a description's text is parsed, so every score
keeps the parse counts and the matches it rests on. Which semantic scorer and grounder a run uses is part
of :class:`ScoringConfig` (so it is recorded in every build's ``summary.json``); :mod:`spr_plugin.scoring.factory`
loads them. See ``docs/scoring.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from scipy.stats import rankdata

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.options import DEFAULT_IOU_THRESHOLD, SCORE_NORMS
from spr_plugin.core.records import Box, Candidate, ParseResult, Region, ScoredCandidate, SemanticScore
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.grounder import merge_predictions
from spr_plugin.scoring.labels import LabelMatcher
from spr_plugin.scoring.localization import ignored_overlap, localization_score, phrase_matches
from spr_plugin.scoring.mentions import RegionJudge, TextFacts, Vocabulary, measure, reading_labels
from spr_plugin.scoring.semantic import TextSemanticScorer
from spr_plugin.settings import ScoringConfig


def localization_with_detections(
    gt: Sequence[Box],
    own: Sequence[Box],
    detected: Sequence[Box],
    cfg: ScoringConfig,
    allowed: np.ndarray | None = None,
):
    """S_loc over the description's own boxes plus the detector boxes that match an annotation.

    Detector boxes join the prediction set (as in the paper), but one that matches no annotated object
    is left out again: a detector false positive is not the description's fault, and under the
    Hungarian F1 it would lower the score of every candidate naming that phrase. So the grounder can
    only add matches. Removing unmatched columns keeps the one-to-one assignment optimal.
    ``allowed`` covers the columns ``[*own, *detected]``.
    """
    loc = localization_score(gt, [*own, *detected], cfg.loc_metric, cfg.iou_threshold, allowed)
    used = sorted({m.pred_index - len(own) for m in loc.matches if m.pred_index >= len(own)})
    if len(used) < len(detected):
        keep = [*range(len(own)), *(len(own) + i for i in used)]
        sub = None if allowed is None else allowed[:, keep]
        loc = localization_score(gt, [*own, *(detected[i] for i in used)], cfg.loc_metric, cfg.iou_threshold, sub)
    return replace(loc, n_grounded=len(used))


class SemanticScorer(Protocol):
    name: str

    def score_batch(self, items: Sequence[tuple[Region, str, Sequence[str]]]) -> list[SemanticScore]: ...


class Grounder(Protocol):
    """What the scorer needs of a phrase grounder (:class:`spr_plugin.scoring.grounder.PhraseGrounder` is the one we ship)."""

    def labels_to_ground(self, phrases) -> list[str]: ...

    def ground_labelled(self, queries: Sequence[tuple[Region, Sequence[str]]]) -> list[list[tuple[str, Box]]]: ...


@dataclass(frozen=True)
class Assessment:
    """One description as the scorer saw it, kept so that no later stage parses or matches it again.

    ``agree[g, i]`` says whether phrase ``i`` of ``parse`` may be matched to annotated object ``g`` (its
    label names the object's category, or it is a bare box); ``matches`` maps phrase indices to objects,
    one to one, under the run's label matching: refinement snaps exactly these boxes.
    """

    region: Region
    candidate: Candidate
    parse: ParseResult
    agree: np.ndarray
    matches: dict[int, int]
    scored: ScoredCandidate
    detected: tuple[tuple[str, Box], ...] = field(default=())
    #: Phrase indices of boxes the annotations cannot judge (see :func:`neutral_boxes`): refinement keeps them
    #: as written, since it can neither snap them to an annotation nor call them wrong.
    neutral: frozenset[int] = frozenset()
    #: What the text names and carries (:func:`spr_plugin.scoring.mentions.measure`): the penalty's and the
    #: statistics' one measurement.
    facts: TextFacts | None = None
    judge: RegionJudge | None = None
    #: Each phrase's label as the text reads it (:func:`spr_plugin.scoring.mentions.reading_labels`: a bare box takes
    #: the name of the words it grounds); ``agree`` was computed on these.
    labels: tuple[str, ...] = ()


class CandidateScorer:
    """Scores batches of candidates of one or many regions.

    With a ``grounder``, its boxes join the description's own boxes in the prediction set of S_loc
    (duplicates of the model's boxes dropped, see :func:`spr_plugin.scoring.grounder.merge_predictions`).
    ``vocabulary`` is the dataset's category vocabulary (:class:`~spr_plugin.scoring.mentions.Vocabulary`); each
    region's own names join it, so even an empty one judges the names a region records.
    """

    def __init__(
        self,
        config: ScoringConfig,
        semantic: SemanticScorer,
        box_format: BoxFormat | None = None,
        grounder: Grounder | None = None,
        dedupe_iou: float = DEFAULT_IOU_THRESHOLD,
        labels: LabelMatcher | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        self.config = config
        self.vocabulary = vocabulary or Vocabulary()
        self.semantic = semantic
        self.box_format = box_format or get_box_format(config.box_format)
        self.grounder = grounder
        self.dedupe_iou = dedupe_iou
        # Without an explicit matcher, a text scorer's own embeddings decide open label pairs; any other
        # scorer leaves only the name rules (scorer_factory passes a matcher with the run's text model).
        embed = semantic.embed if isinstance(semantic, TextSemanticScorer) else None
        self.labels = labels or LabelMatcher(embed, config.label_threshold)

    def score(self, items: Sequence[tuple[Region, Candidate]]) -> list[ScoredCandidate]:
        """Score initial ``(region, candidate)`` pairs (S unnormalised; see :func:`mix_scores`)."""
        return [a.scored for a in self.assess(items)]

    def assess(self, items: Sequence[tuple[Region, Candidate]]) -> list[Assessment]:
        """Parse, match and score initial candidates; the semantic model sees all of them in one batch."""
        fmt = self.box_format
        parses = [fmt.parse(c.text, r.width, r.height) for r, c in items]
        sem_inputs = [
            (r, fmt.plain_text(c.text, r.width, r.height, parse), [p.label for p in parse.phrases])
            for (r, c), parse in zip(items, parses)
        ]
        semantics = self.semantic.score_batch(sem_inputs)
        detected = self._ground(items, parses)
        return self._assess(items, parses, semantics, detected, refined=False)

    def assess_refined(self, items: Sequence[tuple[Assessment, Candidate, bool]]) -> list[Assessment]:
        """Score refinements ``(initial assessment, refined candidate, words changed)``.

        Snapping or ungrounding boxes changes no words, so such a refinement keeps the S_sem of its initial
        text and only S_loc is recomputed. Re-embedding it would punish it for the phrases whose boxes were
        removed, which is the opposite of SPR's intent, and would double the semantic model's work. A
        refinement that removed phrases (``drop``) changed its words and is scored again. Detector boxes
        come from the initial text's phrases.
        """
        fmt = self.box_format
        pairs = [(a.region, cand) for a, cand, _ in items]
        parses = [fmt.parse(c.text, r.width, r.height) for r, c in pairs]
        changed = [i for i, (_, _, words_changed) in enumerate(items) if words_changed]
        fresh = self.semantic.score_batch(
            [(pairs[i][0], fmt.plain_text(pairs[i][1].text, pairs[i][0].width, pairs[i][0].height, parses[i]),
              [p.label for p in parses[i].phrases]) for i in changed]
        )  # fmt: skip
        semantics = [a.scored.semantic for a, _, _ in items]
        for i, sem in zip(changed, fresh):
            semantics[i] = sem
        return self._assess(pairs, parses, semantics, [list(a.detected) for a, _, _ in items], refined=True)

    def judge(self, region: Region) -> RegionJudge:
        """What ``region``'s annotations say about named categories, with the run's vocabulary."""
        return RegionJudge.of(region, self.vocabulary)

    def _assess(self, items, parses, semantics, detected, refined: bool) -> list[Assessment]:
        cfg = self.config
        judges: dict[int, RegionJudge] = {}
        extras = [self._merge_detected(parse, found) for parse, found in zip(parses, detected)]
        facts_all = []
        for (region, cand), parse in zip(items, parses):
            judge = judges.get(id(region)) or judges.setdefault(id(region), self.judge(region))
            facts_all.append((judge, measure(cand.text, parse, judge, self.box_format.stray_re)))
        labels_all = [tuple(reading_labels(parse, facts.mentions)) for parse, (_, facts) in zip(parses, facts_all)]
        # Ignored objects (crowds, Objects365 objects in pictures / reflections) share the label check of the
        # real ones: their rows follow the objects' rows and are split off below.
        agreements = self.labels.agreement(
            [((*r.objects, *r.ignored), [*labels, *(lab for lab, _ in extra)]) for (r, _), labels, extra in
             zip(items, labels_all, extras)]
        )  # fmt: skip
        out = []
        for (region, cand), parse, sem, extra, agree_both, (judge, facts), labels in zip(
            items, parses, semantics, extras, agreements, facts_all, labels_all
        ):
            n_phrases = len(parse.phrases)
            agree_all, agree_ignored = agree_both[: len(region.objects)], agree_both[len(region.objects) :, :n_phrases]
            agree = agree_all[:, :n_phrases]
            boxed = [i for i, p in enumerate(parse.phrases) if p.box is not None]
            gt = [o.box for o in region.objects]
            allowed = None
            if cfg.label_match == "on":
                allowed = np.concatenate([agree[:, boxed], agree_all[:, n_phrases:]], axis=1)
            loc = localization_with_detections(gt, parse.boxes, [b for _, b in extra], cfg, allowed)
            neutral = neutral_boxes(region, parse, boxed, loc, agree_ignored[:, boxed], cfg, labels)
            if neutral:
                loc = _without(gt, parse.boxes, [b for _, b in extra], neutral, cfg, allowed)
            matches = phrase_matches(gt, parse, agree if cfg.label_match == "on" else None, cfg.iou_threshold)
            penalty = cfg.hallucination_penalty * facts.hallucination_rate
            total = cfg.lam * sem.score + (1.0 - cfg.lam) * loc.score - penalty
            scored = ScoredCandidate(cand, refined, float(total), sem, loc, dict(parse.dropped), penalty=float(penalty))
            neutral_phrases = frozenset(boxed[j] for j in neutral)
            out.append(
                Assessment(region, cand, parse, agree, matches, scored, tuple(extra), neutral_phrases, facts, judge, labels)
            )
        return out

    def _merge_detected(self, parse: ParseResult, found: Sequence[tuple[str, Box]]) -> list[tuple[str, Box]]:
        """Detector boxes that duplicate none of the description's own boxes, with their phrase labels."""
        if not found:
            return []
        kept = merge_predictions(parse.boxes, [b for _, b in found], self.dedupe_iou)
        out, k = [], 0
        for label, box in found:  # merge_predictions keeps the order of the boxes it keeps
            if k < len(kept) and box == kept[k]:
                out.append((label, box))
                k += 1
        return out

    def _ground(self, items: Sequence[tuple[Region, Candidate]], parses) -> list[list[tuple[str, Box]]]:
        if self.grounder is None:
            return [[] for _ in items]
        queries = [(r, self.grounder.labels_to_ground(parse.phrases)) for (r, _), parse in zip(items, parses)]
        return self.grounder.ground_labelled(queries)


def neutral_boxes(
    region: Region,
    parse: ParseResult,
    boxed: Sequence[int],
    loc,
    agree_ignored: np.ndarray,
    cfg: ScoringConfig,
    labels: Sequence[str] = (),
) -> list[int]:
    """Indices (into ``parse.boxes``) of unmatched boxes the annotations cannot judge.

    A box matched to no annotated object would count as a false positive. That is wrong when the annotations
    are silent about it: its phrase names a category LVIS lists as not exhaustively labelled in this image
    (``region.not_exhaustive``; a category it verified absent, ``region.absent``, is never excused), or it lies
    on an ignored object (overlap above the threshold: for a crowd, pycocotools' intersection over the box's
    area, :func:`~spr_plugin.scoring.localization.crowd_iou_matrix`; IoU otherwise; and its phrase names that
    object's category or it is a bare box). Such boxes are left out of S_loc altogether: a right box on an
    object LVIS did not label must not count against the description, and it cannot count for it either.
    ``labels`` are the phrases' labels as the text reads them (default: their own), so a bare box after "a cat" names
    a cat.
    """
    from spr_plugin.scoring.labels import names_agree, normalize_label

    matched = {m.pred_index for m in loc.matches}
    unmatched = [j for j in range(len(boxed)) if j not in matched]
    if not unmatched or not (region.not_exhaustive or region.ignored):
        return []
    excused = [normalize_label(n) for n in region.not_exhaustive]
    excused = [n for n in excused if n]
    absent = [n for n in (normalize_label(a) for a in region.absent) if n]
    # Crowds by pycocotools' rule (intersection over the box's area): a person box inside a crowd box lies on it.
    ignored_iou = ignored_overlap(region.ignored, parse.boxes) if region.ignored else None
    out = []
    for j in unmatched:
        label = normalize_label(labels[boxed[j]] if labels else parse.phrases[boxed[j]].label)  # as the text reads it
        if absent and label and names_agree(label, absent):
            continue
        if excused and label and names_agree(label, excused):
            out.append(j)
        elif ignored_iou is not None and any(
            ignored_iou[g, j] > cfg.iou_threshold and (cfg.label_match == "off" or agree_ignored[g, j])
            for g in range(len(region.ignored))
        ):
            out.append(j)
    return out


def _without(gt, own: Sequence[Box], detected: Sequence[Box], neutral: Sequence[int], cfg: ScoringConfig, allowed):
    """S_loc with the ``neutral`` own boxes left out; match indices keep pointing at the description's boxes."""
    keep = [j for j in range(len(own)) if j not in set(neutral)]
    cols = [*keep, *range(len(own), len(own) + len(detected))]
    sub = None if allowed is None else allowed[:, cols]
    loc = localization_with_detections(gt, [own[j] for j in keep], detected, cfg, sub)
    back = [*keep, *range(len(own), len(own) + len(detected))]
    matches = tuple(replace(m, pred_index=back[m.pred_index]) for m in loc.matches)
    return replace(loc, matches=matches, n_neutral=len(neutral))


def normalise(values: Sequence[float], method: str) -> np.ndarray:
    """Per-region normalisation of one score part over the region's candidate pool.

    ``zscore``: (x - mean) / std, 0 where all values are equal. ``rank``: average rank scaled to [0, 1]
    (0.5 for a single value or all ties). ``none``: unchanged.
    """
    x = np.asarray(values, dtype=np.float64)
    if method == "none" or x.size == 0:
        return x
    if method == "zscore":
        std = x.std()
        return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)
    if method == "rank":
        if x.size == 1 or np.all(x == x[0]):
            return np.full_like(x, 0.5)
        return (rankdata(x) - 1.0) / (x.size - 1.0)
    raise ConfigError(f"unknown score normalisation {method!r}; choose one of {', '.join(SCORE_NORMS)}")


def mix_scores(pool: Sequence[ScoredCandidate], lam: float, method: str) -> list[ScoredCandidate]:
    """The pool (one region's initial and refined candidates) with S = λ·norm(S_sem) + (1-λ)·norm(S_loc).

    With ``none`` the scores are the scorer's own; otherwise each candidate records its normalised parts. The
    hallucination penalty (already a share, weighted) is subtracted after mixing either way.
    """
    if method == "none":
        return [replace(s, score=lam * s.semantic.score + (1.0 - lam) * s.localization.score - s.penalty) for s in pool]
    sem = normalise([s.semantic.score for s in pool], method)
    loc = normalise([s.localization.score for s in pool], method)
    return [
        replace(s, score=float(lam * a + (1.0 - lam) * b - s.penalty), norm_parts={"sem": float(a), "loc": float(b)})
        for s, a, b in zip(pool, sem, loc)
    ]
