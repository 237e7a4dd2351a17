"""Pair construction: the best-scored refined description against the lowest-scored initial one.

A pair is skipped, with a reason that ends up in the run summary, when it would teach nothing:
fewer than two candidates, chosen text equal to rejected text, or a score margin below ``min_margin``.
Length statistics are reported because SPR's chosen side tends to be the longer, more detailed text
and DPO readily learns length instead of localization (RLAIF-V balances lengths for that reason).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .records import PreferencePair, Region, ScoredCandidate

SKIP_TOO_FEW = "too_few_candidates"
SKIP_IDENTICAL = "identical_texts"
SKIP_LOW_MARGIN = "low_margin"


@dataclass(frozen=True)
class PairingConfig:
    min_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.min_margin < 0:
            raise ConfigError(f"min_margin must be >= 0, got {self.min_margin}")


def _norm(text: str) -> str:
    return " ".join(text.split())


def make_pair(
    region: Region,
    initial: Sequence[ScoredCandidate],
    refined: Sequence[ScoredCandidate],
    config: PairingConfig = PairingConfig(),
) -> PreferencePair | str:
    """The region's pair, or the reason (one of the ``SKIP_*`` constants) why it has none."""
    if len(initial) < 2 or not refined:
        return SKIP_TOO_FEW
    # Ties break towards the earlier candidate so the choice is reproducible.
    chosen = max(refined, key=lambda s: s.score)
    rejected = min(initial, key=lambda s: s.score)
    if _norm(chosen.candidate.text) == _norm(rejected.candidate.text):
        return SKIP_IDENTICAL
    if chosen.score - rejected.score < config.min_margin:
        return SKIP_LOW_MARGIN
    return PreferencePair(region, chosen, rejected)


def length_stats(pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """Word counts of chosen vs rejected texts (box tokens included, as the model sees them)."""
    if not pairs:
        return {"pairs": 0}
    chosen = [len(p.chosen.candidate.text.split()) for p in pairs]
    rejected = [len(p.rejected.candidate.text.split()) for p in pairs]
    return {
        "pairs": len(pairs),
        "chosen_words_mean": statistics.fmean(chosen),
        "rejected_words_mean": statistics.fmean(rejected),
        "chosen_words_median": statistics.median(chosen),
        "rejected_words_median": statistics.median(rejected),
        "chosen_longer_fraction": sum(c > r for c, r in zip(chosen, rejected)) / len(pairs),
    }
