"""The score -> refine -> pair stage over many regions, batched for the semantic model.

Regions are processed in chunks: all initial candidates of a chunk are scored in one batch, refined,
the refined texts scored in a second batch, and each region's pair is built. A summary counts every
candidate that could not take part and why, so a run can be judged from its numbers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .pairing import PairingConfig, length_stats, make_pair
from .records import Candidate, PreferencePair, Region
from .refine import refine_candidate
from .scoring import CandidateScorer


@dataclass
class PairStats:
    regions: int = 0
    candidates: int = 0
    candidates_without_region: int = 0
    candidates_without_boxes: int = 0
    boxes_dropped: Counter = field(default_factory=Counter)
    boxes_snapped: int = 0
    boxes_ungrounded: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)
    lengths: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "regions": self.regions,
            "candidates": self.candidates,
            "candidates_without_region": self.candidates_without_region,
            "candidates_without_boxes": self.candidates_without_boxes,
            "boxes_dropped_by_parser": dict(self.boxes_dropped),
            "boxes_snapped_by_refinement": self.boxes_snapped,
            "boxes_ungrounded_by_refinement": self.boxes_ungrounded,
            "pairs": self.pairs,
            "pairs_skipped": dict(self.skipped),
            "lengths": self.lengths,
        }


def rank_and_pair(
    regions: Sequence[Region],
    candidates: Sequence[Candidate],
    scorer: CandidateScorer,
    pairing: PairingConfig = PairingConfig(),
    *,
    chunk_regions: int = 32,
    progress: bool = True,
) -> tuple[list[PreferencePair], PairStats]:
    """One pair per region where the candidates allow it, plus the statistics of the run."""
    stats = PairStats(regions=len(regions), candidates=len(candidates))
    by_region: dict[str, list[Candidate]] = defaultdict(list)
    known = {r.region_id for r in regions}
    for cand in candidates:
        if cand.region_id in known:
            by_region[cand.region_id].append(cand)
        else:
            stats.candidates_without_region += 1
    pairs: list[PreferencePair] = []
    fmt = scorer.box_format
    bar = tqdm(total=len(regions), desc="score+pair", unit="region", disable=not progress)
    for start in range(0, len(regions), chunk_regions):
        chunk = regions[start : start + chunk_regions]
        items = [(r, c) for r in chunk for c in by_region.get(r.region_id, [])]
        initial = scorer.score(items)
        refinements = [refine_candidate(c, r, fmt, scorer.config.iou_threshold) for r, c in items]
        refined = scorer.score_refined([(r, ref.candidate, s) for (r, _), ref, s in zip(items, refinements, initial)])
        per_region_init: dict[str, list] = defaultdict(list)
        per_region_ref: dict[str, list] = defaultdict(list)
        for (region, _), s_init, s_ref, ref in zip(items, initial, refined, refinements):
            per_region_init[region.region_id].append(s_init)
            per_region_ref[region.region_id].append(s_ref)
            stats.boxes_dropped.update(s_init.parse_dropped)
            stats.candidates_without_boxes += s_init.localization.n_pred == 0
            stats.boxes_snapped += ref.snapped
            stats.boxes_ungrounded += ref.dropped
        for region in chunk:
            result = make_pair(region, per_region_init[region.region_id], per_region_ref[region.region_id], pairing)
            if isinstance(result, str):
                stats.skipped[result] += 1
            else:
                pairs.append(result)
        bar.update(len(chunk))
    bar.close()
    stats.pairs = len(pairs)
    stats.lengths = length_stats(pairs)
    return pairs, stats
