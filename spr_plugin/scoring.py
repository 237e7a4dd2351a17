"""The combined SPR score S = λ·S_sem + (1-λ)·S_loc for a region's candidate descriptions.

``CandidateScorer`` ties a box format, a semantic scorer, an optional phrase grounder and the
localization metric together; it is the one place where a description's text is parsed, so every score
keeps the parse counts and the matches it rests on. Which semantic scorer and grounder a run uses is part
of :class:`ScoringConfig` (so it is recorded in every build's ``summary.json``); :mod:`spr_plugin.scorer_factory`
loads them. See ``docs/scoring.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .box_formats import BoxFormat, get_box_format
from .errors import ConfigError
from .grounder import merge_predictions
from .localization import DEFAULT_IOU_THRESHOLD, METRICS, localization_score
from .records import Box, Candidate, Region, ScoredCandidate, SemanticScore

SEMANTIC_SCORERS = ("text", "clip", "clip+text")
GROUNDER_PHRASES = ("all", "unboxed")


@dataclass(frozen=True)
class ScoringConfig:
    """How candidates are scored; recorded in the dataset card of every built dataset."""

    box_format: str = "qwen2_vl"
    lam: float = 0.8  # weight of S_sem; the paper found 0.8 clearly better than 0 or 1
    loc_metric: str = "hungarian"
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    #: ``text`` (MiniLM, offline default), ``clip`` (the paper's crop + local CLIP score) or
    #: ``clip+text`` (the mean of both).
    semantic: str = "text"
    clip_model: str | None = None  # CLIP folder for ``clip`` / ``clip+text``
    clip_long_text: str = "chunk"  # descriptions over CLIP's 77 tokens: ``chunk`` (average windows) or ``truncate``
    grounder: str | None = None  # Grounding DINO folder; None = the model's own boxes only
    grounder_box_threshold: float = 0.35
    grounder_phrases: str = "all"  # ground ``all`` phrase labels or only ``unboxed`` ones

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lambda must lie in [0, 1], got {self.lam}")
        if self.loc_metric not in METRICS:
            raise ConfigError(f"unknown localization metric {self.loc_metric!r}; choose one of {', '.join(METRICS)}")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ConfigError(f"IoU threshold must lie in [0, 1), got {self.iou_threshold}")
        if self.semantic not in SEMANTIC_SCORERS:
            raise ConfigError(f"unknown semantic scorer {self.semantic!r}; choose one of {', '.join(SEMANTIC_SCORERS)}")
        if self.semantic != "text" and not self.clip_model:
            raise ConfigError(f"--semantic {self.semantic} needs --clip-model PATH (a local CLIP folder)")
        if self.clip_long_text not in ("chunk", "truncate"):
            raise ConfigError(f"unknown CLIP long-text mode {self.clip_long_text!r}; choose chunk or truncate")
        if self.grounder_phrases not in GROUNDER_PHRASES:
            raise ConfigError(f"unknown grounder phrase mode {self.grounder_phrases!r}; choose one of all, unboxed")
        if not 0.0 <= self.grounder_box_threshold <= 1.0:
            raise ConfigError(f"grounder box threshold must lie in [0, 1], got {self.grounder_box_threshold}")


def localization_with_detections(gt: Sequence[Box], own: Sequence[Box], detected: Sequence[Box], cfg: ScoringConfig):
    """S_loc over the description's own boxes plus the detector boxes that match an annotation.

    Detector boxes join the prediction set (as in the paper), but one that matches no annotated object
    is left out again: a detector false positive is not the description's fault, and under the
    Hungarian F1 it would lower the score of every candidate naming that phrase. So the grounder can
    only add matches. Removing unmatched columns keeps the one-to-one assignment optimal.
    """
    loc = localization_score(gt, [*own, *detected], cfg.loc_metric, cfg.iou_threshold)
    used = sorted({m.pred_index - len(own) for m in loc.matches if m.pred_index >= len(own)})
    if len(used) < len(detected):
        loc = localization_score(gt, [*own, *(detected[i] for i in used)], cfg.loc_metric, cfg.iou_threshold)
    return replace(loc, n_grounded=len(used))


class SemanticScorer(Protocol):
    name: str

    def score_batch(self, items: Sequence[tuple[Region, str, Sequence[str]]]) -> list[SemanticScore]: ...


class PhraseGrounder(Protocol):
    """Finds boxes for a description's phrases (see :mod:`spr_plugin.grounder`)."""

    def labels_to_ground(self, phrases) -> list[str]: ...

    def ground_batch(self, queries: Sequence[tuple[Region, Sequence[str]]]) -> list[list[Box]]: ...


class CandidateScorer:
    """Scores batches of candidates of one or many regions.

    With a ``grounder``, its boxes join the description's own boxes in the prediction set of S_loc
    (duplicates of the model's boxes dropped, see :func:`spr_plugin.grounder.merge_predictions`).
    """

    def __init__(
        self,
        config: ScoringConfig,
        semantic: SemanticScorer,
        box_format: BoxFormat | None = None,
        grounder: PhraseGrounder | None = None,
        dedupe_iou: float = DEFAULT_IOU_THRESHOLD,
    ) -> None:
        self.config = config
        self.semantic = semantic
        self.box_format = box_format or get_box_format(config.box_format)
        self.grounder = grounder
        self.dedupe_iou = dedupe_iou

    def score(self, items: Sequence[tuple[Region, Candidate]]) -> list[ScoredCandidate]:
        """Score initial ``(region, candidate)`` pairs; the semantic model sees all of them in one batch."""
        fmt = self.box_format
        parses = [fmt.parse(c.text, r.width, r.height) for r, c in items]
        sem_inputs = [
            (r, fmt.plain_text(c.text, r.width, r.height), [p.label for p in parse.phrases])
            for (r, c), parse in zip(items, parses)
        ]
        semantics = self.semantic.score_batch(sem_inputs)
        detected = self._ground(items, parses)
        return [
            self._combine(region, cand, False, parse, sem, extra)
            for (region, cand), parse, sem, extra in zip(items, parses, semantics, detected)
        ]

    def score_refined(self, items: Sequence[tuple[Region, Candidate, ScoredCandidate]]) -> list[ScoredCandidate]:
        """Score refinements ``(region, refined candidate, its scored initial candidate)``.

        Refinement edits only the grounding (boxes snapped or removed, words kept), so a refinement keeps
        the S_sem of its initial text and only S_loc is recomputed. Re-embedding the refined text would
        instead punish it for the phrases whose boxes were removed, which is the opposite of SPR's intent,
        and would double the semantic model's work. Detector boxes come from the initial text's phrases.
        """
        fmt = self.box_format
        initial_parses = [fmt.parse(init.candidate.text, r.width, r.height) for r, _, init in items]
        detected = self._ground([(r, init.candidate) for r, _, init in items], initial_parses)
        return [
            self._combine(region, cand, True, fmt.parse(cand.text, region.width, region.height), init.semantic, extra)
            for (region, cand, init), extra in zip(items, detected)
        ]

    def _combine(self, region: Region, cand: Candidate, refined: bool, parse, sem: SemanticScore, extra) -> ScoredCandidate:
        cfg = self.config
        extra = merge_predictions(parse.boxes, extra, self.dedupe_iou)
        loc = localization_with_detections([o.box for o in region.objects], parse.boxes, extra, cfg)
        total = cfg.lam * sem.score + (1.0 - cfg.lam) * loc.score
        return ScoredCandidate(cand, refined, float(total), sem, loc, dict(parse.dropped))

    def _ground(self, items: Sequence[tuple[Region, Candidate]], parses) -> list[list[Box]]:
        if self.grounder is None:
            return [[] for _ in items]
        queries = [(r, self.grounder.labels_to_ground(parse.phrases)) for (r, _), parse in zip(items, parses)]
        return self.grounder.ground_batch(queries)
