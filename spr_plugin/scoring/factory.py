"""Build the semantic scorer and phrase grounder a :class:`~spr_plugin.scoring.scorer.ScoringConfig` asks for.

Kept apart from :mod:`spr_plugin.scoring.scorer` so that scoring stays a set of pure functions over already
loaded models, and so that loading (slow, can fail on a user's path) happens in one place with clear
errors. Models are imported lazily: a text-only run never imports the CLIP or detector code paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spr_plugin.core.options import DEFAULT_TEXT_MODEL
from spr_plugin.core.records import Region, SemanticScore
from spr_plugin.families.profiles import get_box_format
from spr_plugin.scoring.scorer import CandidateScorer, SemanticScorer
from spr_plugin.settings import ScoringConfig


@dataclass
class MeanSemanticScorer:
    """``clip+text``: the mean of several scorers' S_sem; the parts of all of them are kept."""

    scorers: Sequence[SemanticScorer]
    name: str = "clip+text"

    def score_batch(self, items: Sequence[tuple[Region, str, Sequence[str]]]) -> list[SemanticScore]:
        results = [s.score_batch(items) for s in self.scorers]
        out = []
        for per_item in zip(*results):
            parts: dict[str, float] = {}
            for sem in per_item:
                parts.update(sem.parts)
            out.append(SemanticScore(sum(s.score for s in per_item) / len(per_item), parts, self.name))
        return out


def load_semantic_scorer(config: ScoringConfig, text_model: str = DEFAULT_TEXT_MODEL, device: str | None = None):
    """The scorer for ``config.semantic``: ``text``, ``clip`` or ``clip+text``."""
    scorers: list[SemanticScorer] = []
    if config.semantic in ("clip", "clip+text"):
        from spr_plugin.scoring.clip_semantic import ClipSemanticScorer

        assert config.clip_model  # ScoringConfig checks this
        scorers.append(ClipSemanticScorer.load(config.clip_model, device, long_text=config.clip_long_text))
    if config.semantic in ("text", "clip+text"):
        from spr_plugin.scoring.semantic import TextSemanticScorer

        scorers.append(TextSemanticScorer.load(text_model, device))
    return scorers[0] if len(scorers) == 1 else MeanSemanticScorer(scorers)


def load_grounder(config: ScoringConfig, device: str | None = None):
    """The phrase grounder of ``config.grounder``, or None when it is off (the default)."""
    if not config.grounder:
        return None
    from spr_plugin.scoring.grounder import GrounderConfig, PhraseGrounder

    gcfg = GrounderConfig(
        config.grounder, config.grounder_box_threshold, config.grounder_phrases, config.iou_threshold, device=device or "cpu"
    )
    return PhraseGrounder.load(gcfg)


def load_label_matcher(config: ScoringConfig, semantic: SemanticScorer, text_model: str = DEFAULT_TEXT_MODEL, device=None):
    """Label agreement with the run's text model: the text scorer's own, or loaded for CLIP-only runs."""
    from spr_plugin.scoring.labels import LabelMatcher
    from spr_plugin.scoring.semantic import TextSemanticScorer

    parts = semantic.scorers if isinstance(semantic, MeanSemanticScorer) else [semantic]
    text = next((s for s in parts if isinstance(s, TextSemanticScorer)), None) or TextSemanticScorer.load(text_model, device)
    return LabelMatcher(text.embed, config.label_threshold)


def build_candidate_scorer(
    config: ScoringConfig, text_model: str = DEFAULT_TEXT_MODEL, device: str | None = None, box_format=None
):
    """A ready :class:`CandidateScorer` for the run described by ``config`` (``box_format``: a configured
    :class:`~spr_plugin.families.box_formats.BoxFormat`, e.g. Qwen2.5-VL with the run's image frame)."""
    box_format = box_format or get_box_format(config.box_format)  # the cheap checks first: fail before loading models
    grounder = load_grounder(config, device)
    semantic = load_semantic_scorer(config, text_model, device)
    labels = load_label_matcher(config, semantic, text_model, device)
    return CandidateScorer(config, semantic, box_format, grounder=grounder, dedupe_iou=config.iou_threshold, labels=labels)
