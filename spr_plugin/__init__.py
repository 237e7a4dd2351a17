"""spr-plugin's public API: the records, the settings and the stage functions, imported on first use.

``import spr_plugin`` imports nothing heavy (no torch, no transformers): a name is imported from its defining
module the first time it is read (PEP 562 ``__getattr__``, the way TRL's ``_LazyModule`` does it), so
``spr --help`` and a script that only reads records stay fast. ``from spr_plugin import build_dataset`` and
``spr_plugin.Region`` work; ``dir(spr_plugin)`` lists every public name. The modules themselves stay the
place a name is defined: code inside the project imports from them, not from here.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Defining module -> the public names it holds.
_IMPORT_STRUCTURE: dict[str, tuple[str, ...]] = {
    "spr_plugin.core.errors": ("ConfigError", "SPRError"),
    "spr_plugin.core.records": (
        "AnnotatedObject",
        "Box",
        "Candidate",
        "GroundedPhrase",
        "LocalizationScore",
        "Match",
        "ParseResult",
        "PreferencePair",
        "Region",
        "ScoredCandidate",
        "SemanticScore",
    ),
    "spr_plugin.settings": (
        "BuildConfig",
        "GenerationConfig",
        "PairingConfig",
        "RegionConfig",
        "SamplingConfig",
        "ScoringConfig",
        "ServerConfig",
    ),
    "spr_plugin.evaluation.config": ("RecConfig", "RegionEvalConfig"),
    "spr_plugin.core.frame": ("ImageFrame",),
    "spr_plugin.llamafactory.export": ("ExportConfig", "ExportResult", "export_dataset"),
    "spr_plugin.families.profiles": ("FamilyProfile", "available_formats", "get_box_format", "get_profile"),
    "spr_plugin.regions.annotations": ("load_coco",),
    "spr_plugin.regions.sampling": ("RegionStats", "read_regions", "sample_regions", "sample_regions_stage"),
    "spr_plugin.generation.candidates": ("GenerationStats", "generate_candidates", "merge_candidates", "read_candidates"),
    "spr_plugin.scoring.scorer": ("CandidateScorer",),
    "spr_plugin.scoring.stage": ("PairStats", "score_pairs_stage", "score_refine_pair"),
    "spr_plugin.generation.backends": ("make_generator",),
    "spr_plugin.generation.model_runner": ("ModelRunner",),
    "spr_plugin.evaluation.stage": ("EvalRun", "rec_stage", "region_stage"),
    "spr_plugin.pipeline": ("BuildSummary", "build_dataset", "build_regions"),
    "spr_plugin.evaluation.rec": ("evaluate_rec",),
    "spr_plugin.evaluation.region": ("evaluate_region",),
}

_MODULE_OF: dict[str, str] = {name: module for module, names in _IMPORT_STRUCTURE.items() for name in names}

__all__ = ["__version__", *sorted(_MODULE_OF)]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("spr-plugin")
        except PackageNotFoundError:  # a source tree on sys.path, not installed
            value = "0+unknown"
    elif name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    else:
        raise AttributeError(f"module 'spr_plugin' has no attribute {name!r}")
    globals()[name] = value  # the next read is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
