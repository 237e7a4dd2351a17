"""Dataset card: a README next to each built dataset saying how it was made and what is in it.

A DPO dataset is trusted when a reader can see which model wrote the candidates, how they were
scored (scorer, λ, IoU threshold, margin), the seeds, and how much was thrown away on the way
(unparseable boxes, skipped regions, low-margin pairs). The build writes ``<dataset_dir>/<name>.README.md``;
LLaMA-Factory only loads ``file_name`` from ``dataset_info.json``, so the extra file is harmless.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.options import DEFAULT_BOX_FORMAT
from spr_plugin.core.records import PreferencePair
from spr_plugin.families.profiles import get_profile
from spr_plugin.llamafactory.registry import CHOSEN_SUFFIX


@dataclass(frozen=True)
class LengthStats:
    """Word and character counts of one side of the pairs (chosen or rejected)."""

    words_mean: float
    words_median: float
    words_min: int
    words_max: int
    chars_mean: float

    @classmethod
    def of(cls, texts: Sequence[str]) -> LengthStats:
        words = [len(t.split()) for t in texts] or [0]
        chars = [len(t) for t in texts] or [0]
        return cls(statistics.fmean(words), statistics.median(words), min(words), max(words), statistics.fmean(chars))


def _get(d: dict[str, Any] | None, *keys: str, default: Any = "n/a") -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return default
        d = d[k]
    return d


def parse_failure_stats(pairs_stats: dict[str, Any]) -> dict[str, float | int]:
    """Boxes the parser dropped, per candidate, and the share of candidates left with no usable box."""
    candidates = int(pairs_stats.get("candidates", 0))
    dropped = sum(int(v) for v in pairs_stats.get("boxes_dropped_by_parser", {}).values())
    without = int(pairs_stats.get("candidates_without_boxes", 0))
    return {
        "candidates": candidates,
        "boxes_dropped": dropped,
        "dropped_boxes_per_candidate": dropped / candidates if candidates else 0.0,
        "candidates_without_valid_box_rate": without / candidates if candidates else 0.0,
    }


def _template(box_format: str) -> str:
    """LLaMA-Factory's template for the dataset's model family (the profile of its box format)."""
    try:
        return get_profile(box_format).template
    except ConfigError:
        return "n/a"


def render_card(name: str, summary: dict[str, Any], pairs: Sequence[PreferencePair]) -> str:
    """The card's markdown from a build summary (``BuildSummary.to_dict()``) and the exported pairs."""
    cfg = summary.get("config", {})
    gen = cfg.get("generation")
    pstats = summary.get("pairs", {})
    rstats = summary.get("regions", {})
    fail = parse_failure_stats(pstats)
    chosen = LengthStats.of([p.chosen.candidate.text for p in pairs])
    rejected = LengthStats.of([p.rejected.candidate.text for p in pairs])
    margins = [p.margin for p in pairs] or [0.0]
    template = _template(_get(cfg, "scoring", "box_format", default=DEFAULT_BOX_FORMAT))
    longer = sum(len(p.chosen.candidate.text.split()) > len(p.rejected.candidate.text.split()) for p in pairs)
    generators = sorted({p.chosen.candidate.generator for p in pairs} | {p.rejected.candidate.generator for p in pairs} - {""})
    variants = sorted({p.chosen.candidate.variant for p in pairs} | {p.rejected.candidate.variant for p in pairs})
    lines = [
        f"# {name}: SPR preference pairs for LLaMA-Factory DPO",
        "",
        "Written by spr-plugin's build. Each record is a query region of a detection image with a *chosen* "
        "(best refined) and a *rejected* (worst initial) grounded description, scored "
        "S = λ·S_sem + (1-λ)·S_loc.",
        "",
        "## Use",
        "",
        f"- LLaMA-Factory: `dataset_dir: <this folder>`, `dataset: {name}`, `stage: dpo`, `template: {template}`.",
        f"- The paper's ablation (supervised on the chosen answers only): `dataset: {name}{CHOSEN_SUFFIX}`, `stage: sft`.",
        f"- Files: `{name}.jsonl` (ShareGPT ranking records), `{name}{CHOSEN_SUFFIX}.jsonl` (prompt + chosen answer), "
        f"`{name}.pairs.jsonl` (score breakdown of every pair), `{name}/images/` (images, paths relative to this folder).",
        f"- Look at the pairs: `spr show --dataset-dir <this folder> --name {name} --out {name}_view`.",
        "",
        "## How it was made",
        "",
        "| setting | value |",
        "|---|---|",
        f"| annotations | `{_get(cfg, 'annotations')}` |",
        f"| image root | `{_get(cfg, 'image_root')}` |",
        f"| generator (candidates) | `{', '.join(generators) or _get(gen, 'model') or _get(gen, 'served_model')}` |",
        f"| candidates file (if not generated) | `{_get(cfg, 'candidates_file', default='-')}` |",
        f"| prompt variants | {', '.join(_get(gen, 'variants', default=[]) or variants)} |",
        f"| samples per variant, temperature, top-p | {_get(gen, 'num_samples')}, {_get(gen, 'temperature')}, "
        f"{_get(gen, 'top_p')} |",
        f"| max new tokens | {_get(gen, 'max_new_tokens')} |",
        f"| semantic scorer, text model, CLIP model | {_get(cfg, 'scoring', 'semantic', default='text')}, "
        f"`{_get(cfg, 'text_model')}`, `{_get(cfg, 'scoring', 'clip_model', default='-')}` |",
        f"| phrase grounder (boxes joining S_loc) | `{_get(cfg, 'scoring', 'grounder', default='-')}` |",
        f"| box format, LLaMA-Factory template | {_get(cfg, 'scoring', 'box_format')}, {template} |",
        f"| image frame (image_max_pixels, image_min_pixels) | {_get(cfg, 'frame', 'image_max_pixels')}, "
        f"{_get(cfg, 'frame', 'image_min_pixels')} (train and evaluate with the same: `spr check-recipe`) |",
        f"| label matching, label threshold | {_get(cfg, 'scoring', 'label_match', default='not recorded')}, "
        f"{_get(cfg, 'scoring', 'label_threshold')} |",
        f"| refinement policy | {_get(cfg, 'pairing', 'refine_policy', default='not recorded')} |",
        f"| hallucination penalty (S minus it times the share of named objects absent from the image) | "
        f"{_get(cfg, 'scoring', 'hallucination_penalty', default='not recorded')} |",
        f"| score normalisation (per region, before λ) | {_get(cfg, 'scoring', 'score_norm', default='none')} |",
        f"| λ (weight of S_sem) | {_get(cfg, 'scoring', 'lam')} |",
        f"| localization metric, IoU threshold | {_get(cfg, 'scoring', 'loc_metric')}, {_get(cfg, 'scoring', 'iou_threshold')} |",
        f"| minimum score margin | {_get(cfg, 'pairing', 'min_margin')} |",
        f"| regions: k, per image, max | {_get(cfg, 'regions', 'k')}, {_get(cfg, 'regions', 'regions_per_image')}, "
        f"{_get(cfg, 'regions', 'max_regions', default='all')} |",
        f"| seeds: regions, generation | {_get(cfg, 'regions', 'seed')}, {_get(gen, 'seed')} |",
        "",
        "## Counts",
        "",
        "| | |",
        "|---|---|",
        f"| images seen | {rstats.get('images_seen', 'n/a')} |",
        f"| regions sampled | {rstats.get('regions', 'n/a')} (skipped: {json.dumps(rstats.get('skipped', {}))}) |",
        f"| candidates | {fail['candidates']} |",
        f"| pairs | {len(pairs)} (skipped regions: {json.dumps(pstats.get('pairs_skipped', {}))}) |",
        f"| boxes dropped by the parser | {fail['boxes_dropped']} ({json.dumps(pstats.get('boxes_dropped_by_parser', {}))}) |",
        f"| parse failures: dropped boxes per candidate | {fail['dropped_boxes_per_candidate']:.3f} |",
        f"| parse failures: candidates without any valid box | {fail['candidates_without_valid_box_rate']:.1%} |",
        f"| boxes snapped / ungrounded by refinement | {pstats.get('boxes_snapped_by_refinement', 'n/a')} / "
        f"{pstats.get('boxes_ungrounded_by_refinement', 'n/a')} |",
        "",
        "## What the pairs teach",
        "",
        *_quality_lines(pstats),
        "## Lengths and margins",
        "",
        "| side | words mean | median | min | max | chars mean |",
        "|---|---|---|---|---|---|",
        f"| chosen | {chosen.words_mean:.1f} | {chosen.words_median:.1f} | {chosen.words_min} | {chosen.words_max} | "
        f"{chosen.chars_mean:.0f} |",
        f"| rejected | {rejected.words_mean:.1f} | {rejected.words_median:.1f} | {rejected.words_min} | {rejected.words_max} | "
        f"{rejected.chars_mean:.0f} |",
        "",
        f"Chosen longer than rejected in {longer} of {len(pairs)} pairs (a DPO model can learn length instead of "
        f"grounding if this is lopsided). Score margin: mean {statistics.fmean(margins):.3f}, min {min(margins):.3f}, "
        f"max {max(margins):.3f}.",
        "",
    ]
    return "\n".join(lines)


def _quality_lines(pstats: dict[str, Any]) -> list[str]:
    """Pair-quality statistics (spr_plugin.scoring.stage.pair_quality) as a table, and the build's warnings."""
    q = pstats.get("pair_quality") or {}
    if not q.get("pairs"):
        return ["No pair-quality statistics (no pairs, or a summary from an older build).", ""]
    rows = [
        ("boxes per answer: chosen / rejected", f"{q['chosen_boxes_mean']:.2f} / {q['rejected_boxes_mean']:.2f}"),
        ("pairs whose chosen answer has fewer boxes than its rejected one", f"{q['chosen_fewer_boxes_share']:.1%}"),
        ("mentions of objects absent from the image per answer: chosen / rejected",
         _pair_of(q, "chosen_hallucinated_mentions_mean", "rejected_hallucinated_mentions_mean", "{:.2f}")),
        ("chosen answers naming an absent object", _one(q, "chosen_with_hallucinated_mentions_share", "{:.1%}")),
        ("ungrounded mentions of region objects (tagged or plain words) per chosen answer",
         f"{q['chosen_ungrounded_mentions_mean']:.2f}"),
        ("chosen answers with an ungrounded mention", f"{q['chosen_with_ungrounded_mentions_share']:.1%}"),
        ("mentions per chosen answer: elsewhere in the image / unknown to the annotations",
         _pair_of(q, "chosen_outside_region_mentions_mean", "chosen_unjudged_mentions_mean", "{:.2f}")),
        ("chosen boxes whose phrase names the object they sit on", f"{q['chosen_box_label_agreement']:.1%} "
         f"(of {q['chosen_labelled_boxes']})"),
        ("rejected / chosen answers with malformed boxes",
         f"{q['rejected_malformed_share']:.1%} / {q['chosen_malformed_share']:.1%}"),
        ("rejected / chosen answers with box debris",
         _pair_of(q, "rejected_with_debris_share", "chosen_with_debris_share", "{:.1%}")),
        ("pairs decided by localization (chosen or rejected would change with λ = 1)", f"{q['localization_decided_share']:.1%}"),
        ("boxes snapped / corrected / ungrounded, phrases removed by refinement",
         f"{pstats.get('boxes_snapped_by_refinement', 0)} / {pstats.get('boxes_corrected_by_refinement', 0)} / "
         f"{pstats.get('boxes_ungrounded_by_refinement', 0)}, {pstats.get('phrases_removed_by_refinement', 0)}"),
        ("absent-object mentions removed / plain mentions grounded / debris removed by refinement",
         " / ".join(str(pstats.get(k, "n/a")) for k in ("hallucinations_removed_by_refinement",
                    "plain_mentions_grounded_by_refinement", "debris_removed_by_refinement"))),
    ]  # fmt: skip
    lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    for warning in pstats.get("warnings") or []:
        lines += [f"**Warning:** {warning}", ""]
    return lines


def _one(q: dict[str, Any], key: str, fmt: str) -> str:
    return fmt.format(q[key]) if key in q else "not recorded"


def _pair_of(q: dict[str, Any], a: str, b: str, fmt: str) -> str:
    return f"{_one(q, a, fmt)} / {_one(q, b, fmt)}"


def card_path(dataset_dir: str | Path, name: str) -> Path:
    return Path(dataset_dir) / f"{name}.README.md"
