"""Pair construction: the best-scored refined description against the lowest-scored initial one.

A pair is skipped, with a reason that ends up in the run summary, when it would teach nothing:
fewer than two candidates, no refined text left with anything in it (refinement removed all that every candidate
said: an empty chosen answer would teach the model to answer nothing), no refined text that names or boxes an object
of the region (``require_region_object``: a chosen answer of stray words or number debris teaches no grounding, only
that text), chosen text equal to rejected text, or a score margin below ``min_margin``. Only an *eligible* refined
text is chosen: one that says something, and with ``require_region_object`` names or boxes a region object.
Length statistics are reported because SPR's chosen side tends to be the longer, more detailed text
and DPO readily learns length instead of localization (RLAIF-V balances lengths for that reason).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from spr_plugin.core.records import PreferencePair, ScoredCandidate
from spr_plugin.settings import PairingConfig

SKIP_TOO_FEW = "too_few_candidates"
SKIP_IDENTICAL = "identical_texts"
SKIP_EMPTY = "nothing_left_to_choose"
SKIP_NO_REGION_OBJECT = "chosen_names_no_region_object"
SKIP_LOW_MARGIN = "low_margin"


def _norm(text: str) -> str:
    return " ".join(text.split())


def select_pair(
    initial: Sequence[ScoredCandidate],
    refined: Sequence[ScoredCandidate],
    config: PairingConfig = PairingConfig(),
    names_region: Sequence[bool] | None = None,
) -> tuple[int, int] | str:
    """Indices ``(chosen in refined, rejected in initial)``, or the reason why the region has no pair.

    ``names_region[i]``: whether refined text ``i`` names or boxes an object of the region (the scoring stage
    measures it); with ``config.require_region_object`` only such a text may be chosen. ``None``: not measured.
    """
    if len(initial) < 2 or not refined:
        return SKIP_TOO_FEW
    required = names_region if config.require_region_object else None
    chosen, rejected = pick(initial, refined, required)
    if not refined[chosen].candidate.text.strip():
        return SKIP_EMPTY
    if required is not None and not required[chosen]:
        return SKIP_NO_REGION_OBJECT
    if _norm(refined[chosen].candidate.text) == _norm(initial[rejected].candidate.text):
        return SKIP_IDENTICAL
    if refined[chosen].score - initial[rejected].score < config.min_margin:
        return SKIP_LOW_MARGIN
    return chosen, rejected


def pick(
    initial: Sequence[ScoredCandidate], refined: Sequence[ScoredCandidate], eligible: Sequence[bool] | None = None
) -> tuple[int, int]:
    """Indices of the best refined and the worst initial candidate; ties go to the earlier one (reproducible). A refined
    text that is empty (refinement removed all it said), or not ``eligible``, is chosen only when every one is so
    (:func:`select_pair` then skips the region)."""
    said = [i for i in range(len(refined)) if refined[i].candidate.text.strip()]
    said = [i for i in said if eligible is None or eligible[i]] or said or range(len(refined))
    chosen = max(said, key=lambda i: (refined[i].score, -i))
    rejected = min(range(len(initial)), key=lambda i: (initial[i].score, i))
    return chosen, rejected


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
