"""The combined SPR score S = λ·S_sem + (1-λ)·S_loc for a region's candidate descriptions.

``CandidateScorer`` ties a box format, a semantic scorer and the localization metric together; it is
the one place where a description's text is parsed, so every score keeps the parse counts and the
matches it rests on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .box_formats import BoxFormat, get_box_format
from .errors import ConfigError
from .localization import DEFAULT_IOU_THRESHOLD, METRICS, localization_score
from .records import Candidate, Region, ScoredCandidate, SemanticScore


@dataclass(frozen=True)
class ScoringConfig:
    """How candidates are scored; recorded in the dataset card of every built dataset."""

    box_format: str = "qwen2_vl"
    lam: float = 0.8  # weight of S_sem; the paper found 0.8 clearly better than 0 or 1
    loc_metric: str = "hungarian"
    iou_threshold: float = DEFAULT_IOU_THRESHOLD

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lambda must lie in [0, 1], got {self.lam}")
        if self.loc_metric not in METRICS:
            raise ConfigError(f"unknown localization metric {self.loc_metric!r}; choose one of {', '.join(METRICS)}")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ConfigError(f"IoU threshold must lie in [0, 1), got {self.iou_threshold}")


class SemanticScorer(Protocol):
    name: str

    def score_batch(self, items: Sequence[tuple[Region, str, Sequence[str]]]) -> list[SemanticScore]: ...


class CandidateScorer:
    """Scores batches of candidates of one or many regions."""

    def __init__(self, config: ScoringConfig, semantic: SemanticScorer, box_format: BoxFormat | None = None) -> None:
        self.config = config
        self.semantic = semantic
        self.box_format = box_format or get_box_format(config.box_format)

    def score(self, items: Sequence[tuple[Region, Candidate]], refined: bool = False) -> list[ScoredCandidate]:
        """Score ``(region, candidate)`` pairs; the semantic model sees all of them in one batch."""
        fmt, cfg = self.box_format, self.config
        parses = [fmt.parse(c.text, r.width, r.height) for r, c in items]
        sem_inputs = [
            (r, fmt.plain_text(c.text, r.width, r.height), [p.label for p in parse.phrases])
            for (r, c), parse in zip(items, parses)
        ]
        semantics = self.semantic.score_batch(sem_inputs)
        scored = []
        for (region, cand), parse, sem in zip(items, parses, semantics):
            loc = localization_score([o.box for o in region.objects], parse.boxes, cfg.loc_metric, cfg.iou_threshold)
            total = cfg.lam * sem.score + (1.0 - cfg.lam) * loc.score
            scored.append(ScoredCandidate(cand, refined, float(total), sem, loc, dict(parse.dropped)))
        return scored
