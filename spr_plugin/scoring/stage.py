"""The score -> refine -> pair stage over many regions, batched for the semantic model.

Regions are processed in chunks: all initial candidates of a chunk are assessed in one batch (parsed,
label-matched, scored), refined with the run's policy from those very assessments, the refinements
assessed in a second batch, each region's pool of scores normalised and mixed, and its pair built. A
summary counts every candidate that could not take part and why, and says what the pairs teach, measured on
the emitted strings with the scorer's own parser and mention finder (:func:`spr_plugin.scoring.mentions.describe`):
boxes per chosen and rejected answer, hallucinated and ungrounded mentions (tagged or in plain words), box
debris, label agreement of the chosen answers' boxes and the share of pairs that localization decided.
Warnings are worded for the settings in force. A run can be judged from its numbers.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm.auto import tqdm

from spr_plugin.core.records import Candidate, PreferencePair, Region
from spr_plugin.core.sanitize import SanitizeStats, sanitize_answer
from spr_plugin.core.serialize import field_dict
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import profile_of
from spr_plugin.scoring.limits import over_limit
from spr_plugin.scoring.localization import iou_matrix
from spr_plugin.scoring.mentions import IMAGE, REGION, UNJUDGED, TextFacts, Vocabulary, measure
from spr_plugin.scoring.pairing import length_stats, pick, select_pair
from spr_plugin.scoring.refine import RefineResult, refine
from spr_plugin.scoring.scorer import Assessment, CandidateScorer, mix_scores
from spr_plugin.settings import PairingConfig, ScoringConfig

logger = logging.getLogger(__name__)


#: Summary keys of :class:`PairStats` fields that are written under a longer name (the rest keep theirs).
_PAIR_STATS_KEYS = {
    "boxes_dropped": "boxes_dropped_by_parser",
    "boxes_snapped": "boxes_snapped_by_refinement",
    "boxes_ungrounded": "boxes_ungrounded_by_refinement",
    "boxes_corrected": "boxes_corrected_by_refinement",
    "phrases_removed": "phrases_removed_by_refinement",
    "hallucinations_removed": "hallucinations_removed_by_refinement",
    "plain_mentions_grounded": "plain_mentions_grounded_by_refinement",
    "debris_removed": "debris_removed_by_refinement",
    "skipped": "pairs_skipped",
    "quality": "pair_quality",
}


@dataclass
class PairStats:
    regions: int = 0
    candidates: int = 0
    candidates_without_region: int = 0
    candidates_without_boxes: int = 0
    #: Candidates left out before scoring, by reason (spr_plugin/scoring/limits.py).
    candidates_over_limit: Counter = field(default_factory=Counter)
    boxes_dropped: Counter = field(default_factory=Counter)
    boxes_snapped: int = 0
    boxes_ungrounded: int = 0
    boxes_corrected: int = 0
    phrases_removed: int = 0
    hallucinations_removed: int = 0
    plain_mentions_grounded: int = 0
    debris_removed: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)
    lengths: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: The names that judged the mentions (the dataset's vocabulary and every name the regions record): recorded
    #: next to the pairs so ``spr show`` measures with the same vocabulary. Not part of the summary.
    vocabulary: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, keys=_PAIR_STATS_KEYS, skip=("vocabulary",))


@dataclass(frozen=True)
class _PairEvidence:
    """What the statistics need of one pair: both assessments and whether S_loc decided it."""

    chosen: Assessment
    rejected: Assessment
    localization_decided: bool


def sanitize_candidates(
    candidates: Iterable[Candidate], box_format: BoxFormat, stats: SanitizeStats | None = None
) -> list[Candidate]:
    """Candidates as they may enter scoring and training data: cut at an end-of-turn token, every special
    token except ``box_format``'s own grounding tokens removed (see :mod:`spr_plugin.core.sanitize`), counted."""
    keep = profile_of(box_format).kept_tokens
    out = []
    for cand in candidates:
        text, removed = sanitize_answer(cand.text, keep)
        if stats is not None:
            stats.add("candidates", removed)
        out.append(cand if text == cand.text else replace(cand, text=text))
    return out


def score_pairs_stage(
    regions: Sequence[Region],
    candidates: Iterable[Candidate],
    scoring: ScoringConfig,
    pairing: PairingConfig,
    *,
    box_format: BoxFormat,
    text_model: str,
    category_names: Iterable[str] | None = None,
    sanitized: SanitizeStats | None = None,
    progress: bool = True,
) -> tuple[list[PreferencePair], PairStats]:
    """The scores+pairs stage, the one way ``spr pair`` and ``spr build`` run it: sanitise the candidates
    (counted in ``sanitized``), load the scorer, judge mentions by the dataset's whole vocabulary
    (``category_names``, when the annotations are known), then :func:`score_refine_pair`."""
    from spr_plugin.scoring.factory import build_candidate_scorer  # loads models: only when the stage runs

    candidates = sanitize_candidates(candidates, box_format, sanitized)
    scorer = build_candidate_scorer(scoring, text_model, box_format=box_format)
    if category_names is not None:
        scorer.vocabulary = Vocabulary.of(category_names)
    return score_refine_pair(regions, candidates, scorer, pairing, progress=progress)


def score_refine_pair(
    regions: Sequence[Region],
    candidates: Sequence[Candidate],
    scorer: CandidateScorer,
    pairing: PairingConfig = PairingConfig(),
    *,
    chunk_regions: int = 32,
    progress: bool = True,
) -> tuple[list[PreferencePair], PairStats]:
    """One pair per region where the candidates allow it, plus the statistics of the run.

    The scorer's vocabulary is widened with every name the regions record, so a staged run (regions file
    only) still judges the categories its regions know."""
    scorer.vocabulary = scorer.vocabulary.union(Vocabulary.of_regions(regions))
    stats = PairStats(regions=len(regions), candidates=len(candidates))
    by_region: dict[str, list[Candidate]] = defaultdict(list)
    known = {r.region_id: r for r in regions}
    for cand in candidates:
        region = known.get(cand.region_id)
        if region is None:
            stats.candidates_without_region += 1
        elif (problem := over_limit(cand.text, scorer.box_format, region.width, region.height)) is not None:
            stats.candidates_over_limit[problem] += 1
            logger.warning("candidate %s left out: %s (%d characters)", cand.key, problem, len(cand.text))
        else:
            by_region[cand.region_id].append(cand)
    pairs: list[PreferencePair] = []
    evidence: list[_PairEvidence] = []
    bar = tqdm(total=len(regions), desc="score+refine+pair", unit="region", disable=not progress)
    for start in range(0, len(regions), chunk_regions):
        chunk = regions[start : start + chunk_regions]
        items = [(r, c) for r in chunk for c in by_region.get(r.region_id, [])]
        initial = scorer.assess(items)
        refined, results = _refine_all(initial, scorer, pairing.refine_policy)
        per_region: dict[str, list[int]] = defaultdict(list)
        for i, (a, res) in enumerate(zip(initial, results)):
            per_region[a.region.region_id].append(i)
            stats.boxes_dropped.update(a.parse.dropped)
            stats.candidates_without_boxes += a.scored.localization.n_pred == 0
            if res is not None:
                stats.boxes_snapped += res.snapped
                stats.boxes_ungrounded += res.ungrounded
                stats.boxes_corrected += res.corrected
                stats.phrases_removed += res.removed
                stats.hallucinations_removed += res.hallucinations_removed
                stats.plain_mentions_grounded += res.plain_grounded
                stats.debris_removed += res.debris_removed
        for region in chunk:
            found = _pair_region(region, [initial[i] for i in per_region[region.region_id]],
                                 [refined[i] for i in per_region[region.region_id]], scorer, pairing)  # fmt: skip
            if isinstance(found, str):
                stats.skipped[found] += 1
            else:
                pairs.append(found[0])
                evidence.append(found[1])
        bar.update(len(chunk))
    bar.close()
    stats.pairs = len(pairs)
    stats.vocabulary = tuple(scorer.vocabulary.to_list())
    stats.lengths = length_stats(pairs)
    stats.quality = pair_quality(evidence, scorer.config.iou_threshold)
    stats.warnings = quality_warnings(stats.quality, pairing.refine_policy, scorer.config.label_match, scorer.config.lam)
    for warning in stats.warnings:
        logger.warning(warning)
    return pairs, stats


def _refine_all(
    initial: list[Assessment], scorer: CandidateScorer, policy: str
) -> tuple[list[Assessment], list[RefineResult | None]]:
    if policy == "off":
        return initial, [None] * len(initial)
    fmt = scorer.box_format
    results = [
        refine(
            a.candidate,
            a.region,
            a.parse,
            a.agree,
            a.matches,
            fmt,
            policy,
            a.neutral,
            a.judge,
            a.labels or None,
            a.facts.mentions if a.facts is not None else None,
        )  # fmt: skip
        for a in initial
    ]
    refined = scorer.assess_refined([(a, res.candidate, res.words_changed) for a, res in zip(initial, results)])
    refined = [replace(a, scored=replace(a.scored, refinement=res.to_dict())) for a, res in zip(refined, results)]
    return refined, list(results)


def _pair_region(
    region: Region, initial: list[Assessment], refined: list[Assessment], scorer: CandidateScorer, pairing: PairingConfig
) -> tuple[PreferencePair, _PairEvidence] | str:
    """Normalise and mix the region's pool, pick its pair, and note whether S_loc decided it."""
    cfg = scorer.config
    k = len(initial)
    separate = pairing.refine_policy != "off"
    pool = [a.scored for a in initial] + ([a.scored for a in refined] if separate else [])
    mixed = mix_scores(pool, cfg.lam, cfg.score_norm)
    init_scores, ref_scores = mixed[:k], (mixed[k:] if separate else mixed[:k])
    # measured only when the rule is on; select_pair and the "localization decided" check use the same list
    eligible = [names_region_object(a) for a in (refined if separate else initial)] if pairing.require_region_object else None
    picked = select_pair(init_scores, ref_scores, pairing, eligible)
    if isinstance(picked, str):
        return picked
    c, r = picked
    semantic_only = mix_scores(pool, 1.0, cfg.score_norm)
    decided = pick(semantic_only[:k], semantic_only[k:] if separate else semantic_only[:k], eligible) != (c, r)
    pair = PreferencePair(region, ref_scores[c], init_scores[r])
    return pair, _PairEvidence(refined[c], initial[r], decided)


def names_region_object(a: Assessment) -> bool:
    """Whether a text says something true about its region: a box matched to one of the region's objects, or a
    mention (tagged or in plain words) of a region object's category, read with the statistics' measurement."""
    return bool(a.scored.localization.matches) or _facts(a).count(REGION) > 0


def _labelled_box_agreement(a: Assessment, threshold: float) -> tuple[int, int]:
    """(labelled boxes of the text lying on an annotated object, of those the ones whose phrase names it)."""
    labels = a.labels or tuple(p.label for p in a.parse.phrases)  # as the text reads them: a bare box's words count
    boxed = [i for i, p in enumerate(a.parse.phrases) if p.box is not None and labels[i]]
    if not boxed or not a.region.objects:
        return 0, 0
    iou = iou_matrix([o.box for o in a.region.objects], [a.parse.phrases[i].box for i in boxed])  # type: ignore[misc]
    best = iou.argmax(axis=0)
    on_object = [(j, int(best[j])) for j in range(len(boxed)) if iou[best[j], j] > threshold]
    return len(on_object), sum(1 for j, g in on_object if a.agree[g, boxed[j]])


def _facts(a: Assessment) -> TextFacts:
    """The measurement of the assessed (emitted) string, as :func:`spr_plugin.scoring.mentions.describe` makes it."""
    if a.facts is not None:
        return a.facts
    from spr_plugin.scoring.mentions import RegionJudge

    return measure(a.candidate.text, a.parse, a.judge or RegionJudge.of(a.region))


def pair_quality(evidence: Sequence[_PairEvidence], threshold: float) -> dict[str, float]:
    """What the pairs teach about grounding, measured on the emitted strings; every share is over the pairs
    (or boxes) it names. Mentions count tagged references and plain-word names alike."""
    if not evidence:
        return {"pairs": 0}
    n = len(evidence)
    chosen = [_facts(e.chosen) for e in evidence]
    rejected = [_facts(e.rejected) for e in evidence]
    chosen_boxes = [f.boxes for f in chosen]
    rejected_boxes = [f.boxes for f in rejected]
    ungrounded = [f.ungrounded for f in chosen]
    labelled, agreeing = map(sum, zip(*(_labelled_box_agreement(e.chosen, threshold) for e in evidence)))

    def mean(values) -> float:
        return statistics.fmean(values)

    return {
        "pairs": n,
        "chosen_boxes_mean": mean(chosen_boxes),
        "rejected_boxes_mean": mean(rejected_boxes),
        "chosen_fewer_boxes_share": sum(c < r for c, r in zip(chosen_boxes, rejected_boxes)) / n,
        "chosen_ungrounded_mentions_mean": mean(ungrounded),
        "chosen_with_ungrounded_mentions_share": sum(u > 0 for u in ungrounded) / n,
        "chosen_hallucinated_mentions_mean": mean(f.hallucinated for f in chosen),
        "chosen_with_hallucinated_mentions_share": sum(f.hallucinated > 0 for f in chosen) / n,
        "rejected_hallucinated_mentions_mean": mean(f.hallucinated for f in rejected),
        "chosen_outside_region_mentions_mean": mean(f.count(IMAGE) for f in chosen),
        "chosen_unjudged_mentions_mean": mean(f.count(UNJUDGED) for f in chosen),
        "chosen_labelled_boxes": labelled,
        "chosen_box_label_agreement": agreeing / labelled if labelled else 1.0,
        "rejected_malformed_share": sum(bool(f.dropped) for f in rejected) / n,
        "chosen_malformed_share": sum(bool(f.dropped) for f in chosen) / n,
        "rejected_with_debris_share": sum(f.debris > 0 for f in rejected) / n,
        "chosen_with_debris_share": sum(f.debris > 0 for f in chosen) / n,
        "localization_decided_share": sum(e.localization_decided for e in evidence) / n,
    }


#: Below this share of pairs decided by localization, the pairs teach what S_sem prefers, not localization
#: (judged from this many pairs on: with fewer, one pair moves the share by more than the bound).
LOW_LOCALIZATION_SHARE = 0.05
LOW_LOCALIZATION_MIN_PAIRS = 10


def quality_warnings(
    quality: dict[str, float], refine_policy: str = "correct", label_match: str = "on", lam: float = 0.8
) -> list[str]:
    """Plain-language warnings for pair statistics that predict a DPO run learning the wrong thing, each worded
    for the settings in force (a remedy is only suggested when it is not already in use)."""
    if not quality.get("pairs"):
        return []
    out = []
    if quality["chosen_boxes_mean"] < quality["rejected_boxes_mean"]:
        remedy = (
            "(try --refine-policy correct)"
            if refine_policy != "correct"
            else "(refinement already corrects: the best-scored candidates ground fewer objects; sample more candidates)"
        )
        out.append(
            f"chosen answers carry fewer boxes ({quality['chosen_boxes_mean']:.2f}) than rejected ones "
            f"({quality['rejected_boxes_mean']:.2f}): DPO may learn to write fewer boxes rather than better ones {remedy}"
        )
    if quality["chosen_box_label_agreement"] < 0.95:
        remedy = "(try --label-match on)" if label_match != "on" else "(label matching is on: see spr show for these boxes)"
        out.append(
            f"only {quality['chosen_box_label_agreement']:.0%} of the chosen answers' boxes carry a phrase naming the "
            f"object they sit on: the pairs teach wrong bindings {remedy}"
        )
    if quality.get("chosen_hallucinated_mentions_mean", 0.0) > 0:
        out.append(
            f"{quality['chosen_with_hallucinated_mentions_share']:.0%} of the chosen answers name objects absent from the "
            "image" + (" (refinement is off: try --refine-policy correct)" if refine_policy == "off" else "")
        )
    if quality.get("chosen_with_debris_share", 0.0) > 0:
        out.append(
            f"{quality['chosen_with_debris_share']:.0%} of the chosen answers carry box debris"
            + (" (refinement is off: try --refine-policy correct)" if refine_policy == "off" else "")
        )
    if quality.get("chosen_with_ungrounded_mentions_share", 0.0) > 0.5 and refine_policy != "correct":
        out.append(
            f"{quality['chosen_with_ungrounded_mentions_share']:.0%} of the chosen answers name region objects without a "
            "box (try --refine-policy correct)"
        )
    decided = quality.get("localization_decided_share")
    if decided is not None and decided < LOW_LOCALIZATION_SHARE and quality["pairs"] >= LOW_LOCALIZATION_MIN_PAIRS:
        remedy = f"lower --lam (now {lam:g})" if lam > 0 else "the candidates' boxes hardly differ"
        out.append(
            f"localization decided only {decided:.1%} of the pairs: they teach what S_sem prefers, not better boxes ({remedy})"
        )
    return out
