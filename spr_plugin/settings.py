"""Every run setting, defined once: a dataclass field with its default, its help text and its checks.

The command line is generated from these fields (:func:`add_flags`, :func:`from_args`), so a default or a
help text lives in one place, and each config validates itself once, in ``__post_init__``. The module
imports no heavy library (``spr --help`` and ``spr register`` parse the whole command line).

    RegionConfig       query-region sampling (stage 1)
    SamplingConfig     what both generation back ends sample: samples, temperature, top-p, length, frame
    GenerationConfig   SamplingConfig + the in-process back end (checkpoint, device, batches)
    ServerConfig       SamplingConfig + the OpenAI-compatible server back end (URL, served name, requests)
    ScoringConfig      S = lam * S_sem + (1 - lam) * S_loc and what feeds it
    PairingConfig      refinement policy and the minimum margin of a pair
    BuildConfig        a whole build: the stages' configs, the sources, the work dir and the dataset to write
    WebUIConfig, ShowConfig, DemoConfig    spr webui, spr show, spr demo

A config file (``spr build CONFIG.yaml key=value``, :mod:`spr_plugin.config_file`) is read into these same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.frame import FramedConfig, ImageFrame
from spr_plugin.core.options import (
    BOX_FORMATS,
    CLIP_LONG_TEXT,
    DEFAULT_BOX_FORMAT,
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_LABEL_THRESHOLD,
    DEFAULT_TEXT_MODEL,
    GROUNDER_PHRASES,
    IMAGE_MODES,
    LABEL_MATCH_MODES,
    LOC_METRICS,
    REFINE_POLICIES,
    SCORE_NORMS,
    SEMANTIC_SCORERS,
    VARIANTS,
    VIRTUAL_POLICIES,
)


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    cli: bool = True,
    **argparse_kw: Any,
):
    """A dataclass field carrying its command-line form: ``help`` (also the documentation), the ``flag``
    (default ``--field-name``), ``cli=False`` for settings the command line does not offer, and any
    further :meth:`argparse.ArgumentParser.add_argument` keywords (``type``, ``choices``, ``metavar``)."""
    meta = {"help": help, "flag": flag, "cli": cli, "argparse": argparse_kw}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_flags(
    group: argparse._ActionsContainer,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    note: str | None = None,
    required: bool | None = None,
    **defaults: Any,
) -> None:
    """Add a flag per command-line field of ``cls`` (or of the fields named in ``only``, in that order).

    The flag's default is the field's (``defaults`` overrides it, e.g. ``model=None`` where the flag is
    optional, or ``box_format=None`` where an input file's record decides); its help is the field's help plus
    the default, then ``note``. ``required`` overrides the field's. Values are checked by the config itself
    when :func:`from_args` builds it, so a bad value fails with the config's own message. Each flag carries
    ``setting = (cls, field name)`` and ``default_overridden``, which ``tests/test_settings_flags.py`` reads.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)}
    for name in only or tuple(fields):
        f = fields[name]
        kw = dict(f.metadata["argparse"])
        if required is not None:
            kw["required"] = required
        default = defaults.get(name, f.default if f.default is not dataclasses.MISSING else None)
        if kw.get("required"):
            default = None
        if isinstance(default, bool):  # a switch: --flag turns it on, or --no-flag off (a field defaulting to True)
            store = "store_false" if default and _flag(f).startswith("--no-") else "store_true"
            action = group.add_argument(_flag(f), dest=name, action=store, default=default, help=f.metadata["help"])
            action.setting, action.default_overridden = (cls, name), name in defaults  # type: ignore[attr-defined]
            continue
        if isinstance(default, tuple):
            kw.setdefault("type", _comma_list)
        elif default is not None and "type" not in kw and not isinstance(default, str):
            kw["type"] = type(default)
        helptext = f.metadata["help"]
        if default is not None and "(default" not in helptext and not isinstance(default, os.PathLike):
            shown = (
                ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(default, tuple) else default
            )
            helptext = f"{helptext} (default {shown})" if helptext else f"default {shown}"
        if note:
            helptext = f"{helptext} {note}"
        action = group.add_argument(_flag(f), dest=name, default=default, help=helptext, **kw)
        action.setting, action.default_overridden = (cls, name), name in defaults  # type: ignore[attr-defined]


def from_args(cls: type, a: argparse.Namespace, **overrides: Any) -> Any:
    """``cls`` from the parsed flags of its command-line fields (others keep their defaults), plus ``overrides``."""
    values = {f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if f.metadata.get("cli", False) and hasattr(a, f.name)}
    return cls(**{**values, **overrides})


def check_numbers(config: Any) -> None:
    """Refuse NaN and infinity in every number field of a settings dataclass: the one generic place.

    Python's ``float()`` (so argparse's ``type=float``) accepts ``nan`` and ``inf``, and NaN slips through every
    range check written as ``x < low`` (``--min-margin nan`` disabled the margin filter, ``--temperature nan``
    was sent to the server and blamed on it). Range checks stay with each config; this one runs first.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                flag = _flag(f) if f.metadata.get("cli", False) else f.name
                raise ConfigError(f"{flag} must be a finite number, got {v}")


def _choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def check_grounder(box_threshold: float, phrases: str) -> None:
    """The grounder's settings, checked the same way for :class:`ScoringConfig` and the grounder's own config."""
    _choice(phrases, GROUNDER_PHRASES, "grounder phrase mode")
    if not 0.0 <= box_threshold <= 1.0:
        raise ConfigError(f"grounder box threshold must lie in [0, 1], got {box_threshold}")


def check_clip_long_text(mode: str) -> None:
    """CLIP's long-text mode, checked the same way for :class:`ScoringConfig` and the CLIP scorer."""
    _choice(mode, CLIP_LONG_TEXT, "CLIP long-text mode")


# -- stage 1: regions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionConfig:
    k: int = setting(4, "a region holds more than K objects (default 4, as in the paper)")
    regions_per_image: int = setting(1, "query regions sampled per image")
    max_regions: int | None = setting(None, "stop after this many regions (default: all)", type=int)
    seed: int = setting(0, "seed of region sampling (and of generation)")
    min_box_area: float = setting(16.0, "annotations smaller than this (pixels²) are noise for grounding", cli=False)
    containment: float = setting(0.9, "share of an object's area inside the region for it to belong to it", cli=False)
    #: A box may overshoot the image border by this share of the image side (at least 2 px) and is clamped;
    #: more means the annotations belong to another (larger) image, which is then skipped.
    border_tolerance: float = setting(
        0.02, "boxes overshooting the image by at most this share of its side (min 2 px) are clamped (default 0.02)"
    )
    virtual_objects: str = setting(
        "ignore",
        "Objects365 objects flagged isfake (in a picture/screen) or isreflected: ignore (default; neither "
        "required nor wrong to ground), keep (ordinary objects), drop (not there: a box on one is a false positive)",
        choices=VIRTUAL_POLICIES,
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.regions_per_image < 1:
            raise ConfigError(f"regions_per_image must be >= 1, got {self.regions_per_image}")
        if self.max_regions is not None and self.max_regions < 1:
            raise ConfigError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")
        if not 0.0 <= self.border_tolerance < 1.0:
            raise ConfigError(f"border_tolerance must lie in [0, 1), got {self.border_tolerance}")
        _choice(self.virtual_objects, VIRTUAL_POLICIES, "virtual-object policy")


# -- stage 2: generation (both back ends) ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SamplingConfig(FramedConfig):
    """What is sampled, the same for both back ends; every candidate records the variant, seed and temperature."""

    num_samples: int = setting(4, "samples per prompt variant")
    temperature: float = setting(0.9, "sampling temperature (> 0: SPR needs diverse samples)")
    top_p: float = setting(0.95, "nucleus sampling mass")
    max_new_tokens: int = setting(256, "longest description, in tokens")
    #: LLaMA-Factory's pre-resize (its YAML keys of the same names; None = none). Must equal the training
    #: run's values: Qwen2.5-VL boxes are pixels of the resized input, so the model must see the same frame.
    #: On the command line: ``--image-max-pixels`` / ``--image-min-pixels`` (:func:`add_pre_resize_args`).
    frame: ImageFrame = setting(ImageFrame(), "LLaMA-Factory's pre-resize (image_max_pixels, image_min_pixels)", cli=False)

    def __post_init__(self) -> None:
        check_numbers(self)
        if min(self.num_samples, self.max_new_tokens) < 1:
            raise ConfigError("num_samples and max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 (SPR needs diverse samples)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")

    def sampling(self) -> dict[str, Any]:
        """The sampling fields alone (to hand them from one back end's config to the other's)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingConfig)}

    def to_dict(self) -> dict[str, Any]:
        """The fields, the frame's two bounds flat in its place: the one form candidates manifests, build summaries
        and cards record the sampling settings in (as they did before the frame was one field, so a resumed run or
        a rerun compares equal and the files stay the same byte for byte)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            out.update(value if key == "frame" else {key: value})
        return out


@dataclass(frozen=True)
class GenerationConfig(SamplingConfig):
    """A generation run: the sampling settings, the prompts, and the in-process back end's own settings.

    ``model`` is the transformers checkpoint; a run on a server has ``model=None`` and names the served model
    in ``served_model`` (the server back end's :class:`ServerConfig` has the rest).
    """

    model: str | None = setting(None, "local checkpoint folder of the --box-format family (or hub id if reachable)")
    batch_size: int = setting(4, "prompts per batch (openai: at least 4 x --concurrency are in flight)")
    variants: tuple[str, ...] = setting(VARIANTS, "comma-separated prompt variants")
    seed: int = setting(0, "run seed (each prompt's seed derives from it)", cli=False)
    device: str = setting("cpu", "cpu, cuda, cuda:1, or auto (this process's GPU under accelerate launch)")
    dtype: str = setting("auto", "torch dtype of the checkpoint", cli=False)
    max_batch_sequences: int = setting(32, "memory bound: at most this many sequences (prompts x samples) per generate() call")
    greedy: bool = setting(False, "only for tests and debugging: SPR needs sampled, diverse candidates", cli=False)
    served_model: str | None = setting(None, "model name as the server lists it in /v1/models (--backend openai)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.model is None) == (self.served_model is None):
            raise ConfigError("a generation run needs exactly one of model (in process) and served_model (a server)")
        if min(self.batch_size, self.max_batch_sequences) < 1:
            raise ConfigError("num_samples, batch_size, max_new_tokens and max_batch_sequences must be >= 1")
        if not self.variants:
            raise ConfigError(f"--variants names no prompt variant; choose from {', '.join(VARIANTS)}")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ConfigError(f"unknown prompt variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    @property
    def generator_name(self) -> str:
        """The model the candidates come from: the checkpoint, or the served name."""
        return self.model if self.model is not None else str(self.served_model)


@dataclass(frozen=True)
class ServerConfig(SamplingConfig):
    """Where the server is and how hard to push it; the sampling fields are :class:`SamplingConfig`'s."""

    base_url: str = setting(help="API root, e.g. http://127.0.0.1:8000/v1")
    served_model: str = setting(help="model name as the server lists it in /v1/models")
    api_key: str = setting("EMPTY", "bearer token (default: $SPR_API_KEY, $OPENAI_API_KEY, or none)")
    concurrency: int = setting(16, "requests in flight; each asks for num_samples choices")
    timeout: float = setting(300.0, "seconds per request (connect timeout is min(10, timeout))", flag="--request-timeout")
    max_retries: int = setting(5, "retries per request on connection errors, timeouts, 408/409/429 and 5xx")
    extra_body: dict[str, Any] = setting({}, "extra fields of every request", cli=False)
    #: The served model's family (``--box-format``): LLaMA-Factory pre-resizes InternVL's images with its base plugin's
    #: steps only and every other family's with the Qwen2-VL plugin's extra ones, and the server must get the frame the
    #: training will see. The command line passes ``--box-format`` here.
    box_format: str = setting(DEFAULT_BOX_FORMAT, "family of the served model (its --box-format)", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must start with http:// or https://, got {self.base_url!r}")
        if not self.served_model:
            raise ConfigError("--served-model is required with --backend openai (the name the server lists in /v1/models)")
        if self.concurrency < 1 or self.timeout <= 0 or self.max_retries < 0:
            raise ConfigError("num_samples, max_new_tokens and concurrency must be >= 1, timeout > 0, max_retries >= 0")
        if self.box_format not in BOX_FORMATS:
            raise ConfigError(f"unknown box format {self.box_format!r}; choose one of {', '.join(sorted(BOX_FORMATS))}")

    @property
    def min_batch_size(self) -> int:
        """Prompts per batch that keep every request slot busy (each prompt is one request)."""
        return 4 * self.concurrency


# -- stages 3-5: scoring, refinement, pairing --------------------------------------------------------------


@dataclass(frozen=True)
class ScoringConfig:
    """How candidates are scored; recorded in the dataset card of every built dataset."""

    box_format: str = setting(DEFAULT_BOX_FORMAT, " | ".join(BOX_FORMATS))
    #: Default per evidence (docs/effect_study/README.md, "The builder's defaults"): in study v2 lambda 0 was not
    #: distinguishable at the validation-chosen DPO strength, and the synthetic world cannot test what S_sem adds;
    #: the paper's 0.8.
    lam: float = setting(0.8, "weight of the semantic score (paper: 0.8)")
    #: Default per evidence: no difference from ``paper`` in effect study v2; Hungarian cannot be gamed by
    #: duplicate or hallucinated boxes.
    loc_metric: str = setting("hungarian", "hungarian (one-to-one soft F1) or paper (recall-only)", choices=LOC_METRICS)
    iou_threshold: float = setting(DEFAULT_IOU_THRESHOLD, "a box matches an object above this IoU")
    semantic: str = setting(
        "text",
        "S_sem scorer: text (MiniLM, default), clip (paper: crop + local CLIP), clip+text (mean); docs/scoring.md",
        choices=SEMANTIC_SCORERS,
    )
    clip_model: str | None = setting(None, "local CLIP folder for --semantic clip / clip+text")
    clip_long_text: str = setting(
        "chunk", "texts over 77 CLIP tokens: chunk (average windows) or truncate", choices=CLIP_LONG_TEXT
    )
    grounder: str | None = setting(None, "local Grounding DINO folder: its phrase boxes join S_loc (default off)")
    grounder_box_threshold: float = setting(0.35, "min detector score of a grounded phrase box", flag="--grounder-threshold")
    grounder_phrases: str = setting("all", "which phrase labels to ground: all or unboxed", choices=GROUNDER_PHRASES)
    #: ``on``: a box matches an annotated object only if its phrase names that object's category
    #: (spr_plugin/scoring/labels.py); ``off``: IoU alone decides, as in the paper's formula. On by default because
    #: IoU alone rewards, and refinement then snaps, boxes whose phrase names another object; the effect study
    #: found no cost (off lowered REC Acc@0.5 by 0.079 at the first DPO strength, images interval).
    label_match: str = setting(
        "on",
        "on (default): a box matches an annotated object only if its phrase names that object's category; "
        "off: IoU alone (the paper's formula)",
        choices=LABEL_MATCH_MODES,
    )
    label_threshold: float = setting(
        DEFAULT_LABEL_THRESHOLD, "text-model cosine at which a phrase the name rules cannot decide counts as naming a category"
    )
    #: Per-region normalisation of S_sem and S_loc before they are mixed with ``lam``: ``none`` (the paper),
    #: ``zscore`` or ``rank``. The two parts live on different scales (MiniLM's S_sem varies 2-20x more within
    #: a region than 0.2*S_loc), so without it the nominal 0.8/0.2 weighting is not the effective one. Default
    #: ``none``: z-score and rank normalisation made no difference in any comparison of the effect study.
    score_norm: str = setting(
        "none", "per-region normalisation of S_sem and S_loc before mixing with --lam (none = the paper)", choices=SCORE_NORMS
    )
    #: S loses this weight times the share of the description's judged mentions that name categories absent from
    #: the image (CHAIR_i; spr_plugin/scoring/mentions.py). Neither S_sem (MiniLM barely moves) nor S_loc (plain
    #: words have no box) sees a hallucinated name; the default is measured in bench/bench_hallucination_penalty.py
    #: (docs/scoring.md, "Hallucinated mentions").
    hallucination_penalty: float = setting(
        0.5,
        "S minus this times the share of named objects absent from the image (0 = off); in [0, 1)",
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        if not 0.0 <= self.hallucination_penalty < 1.0:
            raise ConfigError(f"hallucination penalty must lie in [0, 1), got {self.hallucination_penalty}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lambda must lie in [0, 1], got {self.lam}")
        _choice(self.loc_metric, LOC_METRICS, "localization metric")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ConfigError(f"IoU threshold must lie in [0, 1), got {self.iou_threshold}")
        _choice(self.semantic, SEMANTIC_SCORERS, "semantic scorer")
        if self.semantic != "text" and not self.clip_model:
            raise ConfigError(f"--semantic {self.semantic} needs --clip-model PATH (a local CLIP folder)")
        check_clip_long_text(self.clip_long_text)
        check_grounder(self.grounder_box_threshold, self.grounder_phrases)
        _choice(self.label_match, LABEL_MATCH_MODES, "label-match mode")
        if not 0.0 <= self.label_threshold <= 1.0:
            raise ConfigError(f"label threshold must lie in [0, 1], got {self.label_threshold}")
        _choice(self.score_norm, SCORE_NORMS, "score normalisation")


def check_policy(policy: str) -> str:
    _choice(policy, REFINE_POLICIES, "refinement policy")
    return policy


@dataclass(frozen=True)
class PairingConfig:
    min_margin: float = setting(0.05, "skip pairs whose score margin is smaller (units of S; normalised when normalising)")
    #: What refinement does to phrases that matched no annotated object (spr_plugin/scoring/refine.py):
    #: ``correct`` (default: give a phrase, or a plain-word mention, the box of the unclaimed region object it
    #: names), ``strip`` (remove the box, keep the words), ``drop`` (remove the phrase) or ``off``. Mentions of
    #: absent objects and box debris are removed under every policy but ``off``.
    #: Default per evidence (docs/effect_study/README.md): in study v2 refinement is what repaired the positive control
    #: (Acc@0.9 +0.013 over ``off``, 5/5 seeds), ``strip`` (REC Acc@0.5 -0.51) and ``drop`` (region F1 -0.12) were
    #: clearly harmful; in v3 the control's refined pairs tightened its boxes on a new domain (area -0.146).
    refine_policy: str = setting(
        "correct",
        "phrases that match no object: correct (default: give a phrase the box of the object it names), "
        "strip (remove the box, keep the words), drop (remove the phrase), off (no refinement)",
        choices=REFINE_POLICIES,
    )

    #: A chosen answer must name (tagged or in plain words) or box at least one object of the region; a region whose
    #: refined texts all fail it has no pair (``chosen_names_no_region_object``). Without it, a weak model's best
    #: sample could be stray words or coordinate debris (effect study v3, amendment 1: 26% of its first pairs so).
    require_region_object: bool = setting(
        True,
        "allow a chosen answer that names and boxes no object of the region (default: such regions have no pair)",
        flag="--no-require-region-object",
    )

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.min_margin < 0:
            raise ConfigError(f"min_margin must be >= 0, got {self.min_margin}")
        check_policy(self.refine_policy)


# -- the whole build --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """A build (:func:`spr_plugin.pipeline.build_dataset`): sources, stage settings, work dir and output dataset."""

    annotations: Path = setting(help="COCO-format detection json (COCO, Objects365, LVIS)", type=Path, required=True)
    image_root: Path = setting(
        help="folder the json's file_name entries are relative to", flag="--images", type=Path, required=True
    )
    work_dir: Path = setting(help="intermediate files (resumable)", type=Path)
    dataset_dir: Path = setting(
        help="LLaMA-Factory dataset_dir holding dataset_info.json (default: ./data, what LlamaBoard reads)", type=Path
    )
    name: str = setting("spr_qwen2vl", "dataset name in dataset_info.json")
    regions: RegionConfig = field(default_factory=RegionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    generation: GenerationConfig | None = None
    #: Several files (shards) are merged, duplicate keys dropped.
    candidates_file: Path | tuple[Path, ...] | None = setting(
        None, "use these candidates (merged) instead of generating", flag="--candidates", type=Path, nargs="+"
    )
    text_model: str = setting(DEFAULT_TEXT_MODEL, "sentence-transformers model for S_sem")
    image_mode: str = setting("copy", "how the dataset refers to its images", choices=IMAGE_MODES)
    overwrite: bool = setting(False, "replace an existing dataset of the same name")
    progress: bool = setting(True, "progress bars", cli=False)
    fresh: bool = setting(False, "start over: remove the work dir's stage files (a rerun with other settings refuses without it)")
    #: LLaMA-Factory's pre-resize the candidates are sampled (and must be trained and evaluated) in.
    frame: ImageFrame = field(default_factory=ImageFrame)
    recipe: Path | None = setting(None, "training YAML whose image frame must match (checked first)", type=Path)

    def __post_init__(self) -> None:
        gen = self.generation
        if gen is not None and gen.frame != self.frame:
            raise SPRError(
                f"the generation frame {gen.frame.to_dict()} differs from "
                f"the build frame {self.frame.to_dict()}: one frame for sampling and training"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the generation settings in their flat form (:meth:`SamplingConfig.to_dict`)."""
        out = asdict(self)
        if self.generation is not None:
            out["generation"] = self.generation.to_dict()
        return json.loads(json.dumps(out, default=str))

    @property
    def candidate_files(self) -> list[Path]:
        if self.candidates_file is None:
            return []
        files = self.candidates_file
        return [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]


# -- looking at a built dataset ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WebUIConfig:
    """``spr webui``: LlamaBoard with its Data dir on a dataset folder (:mod:`spr_plugin.llamafactory.webui`)."""

    dataset_dir: Path = setting(help="folder holding dataset_info.json", type=Path, required=True)
    workspace: Path | None = setting(None, "LlamaBoard's working folder (default: DIR/../llamaboard)", type=Path)
    port: int = setting(7860, "port LlamaBoard listens on")
    host: str = setting("127.0.0.1", "interface to listen on (default: loopback only)")

    def resolved_workspace(self) -> Path:
        return (self.workspace or Path(self.dataset_dir).resolve().parent / "llamaboard").resolve()


@dataclass(frozen=True)
class ShowConfig:
    """``spr show``: chosen vs rejected pairs rendered as HTML + PNGs (:mod:`spr_plugin.inspect.viewer`)."""

    pairs: Path | None = setting(help="pairs JSONL (work/pairs.jsonl or <dataset_dir>/<name>.pairs.jsonl)", type=Path)
    dataset_dir: Path | None = setting(help="a built dataset folder (use with --name)", type=Path)
    #: Required here; the flag defaults to the build's dataset name (``add_flags(..., name=BuildConfig.name)``).
    name: str = setting(help="dataset name in --dataset-dir")
    out: Path = setting(help="folder for index.html and the PNGs", type=Path, required=True)
    n: int = setting(8, "number of pairs to render", flag="-n")
    #: None: as the pairs file records it (``spr pair``'s sidecar, a build's work dir, ``<name>.spr.json``), else
    #: qwen2_vl; a different value than the record is refused (the boxes would be drawn in the wrong place).
    box_format: str | None = setting(None, "the pairs' box format (flag: ScoringConfig's --box-format)", cli=False)
    #: The folders original images are read from (``--images``); empty: the pairs file's folder.
    images: tuple[Path, ...] = setting((), "folders the original images are read from", cli=False)

    def __post_init__(self) -> None:
        if (self.pairs is None) == (self.dataset_dir is None):
            raise SPRError("give either --pairs FILE or --dataset-dir DIR (with --name)")
        if self.n < 1:
            raise SPRError(f"-n must be at least 1, got {self.n}")

    def pairs_file(self) -> Path:
        if self.pairs is not None:
            return Path(self.pairs)
        assert self.dataset_dir is not None
        return Path(self.dataset_dir) / f"{self.name}.pairs.jsonl"


@dataclass(frozen=True)
class DemoConfig:
    """``spr demo`` (``spr_plugin/demo/run.py``): the whole chain on rendered scenes and a tiny local Qwen2-VL, on CPU."""

    out_dir: Path = setting(Path("runs/demo"), "folder for everything the demo makes", flag="--out", type=Path)
    #: None: the shipped ``spr_qwen2vl_cpu_demo`` recipe, so the demo runs from any folder.
    recipe: Path | None = setting(None, "DPO recipe (default: the shipped spr_qwen2vl_cpu_demo, from any folder)", type=Path)
    train: bool = setting(True, "stop after building the dataset", flag="--no-train")
    n_images: int = setting(24, "number of synthetic scenes to build pairs from", flag="--images")
    seed: int = setting(0, "seed of the scenes, the warm-up and the build")
    #: More scenes generalise better than more steps on few scenes.
    warmup_scenes: int = setting(300, "scenes for the tiny model's warm-up SFT")
    warmup_steps: int = setting(700, "warm-up SFT steps")
    num_samples: int = setting(3, "samples per region and prompt variant")
    #: Digits are single tokens: one grounded unit is ~30 tokens.
    max_new_tokens: int = setting(160, "longest description, in tokens", cli=False)
