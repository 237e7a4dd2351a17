"""Typed records that flow between the SPR stages.

Every stage (regions -> candidates -> scores -> pairs -> export) reads and writes these, and each
one round-trips through a plain JSON dict (``to_dict`` / ``from_dict``) so intermediate results can
be kept as append-only JSONL files: a crash loses at most the line being written. ``to_dict`` is written
from the fields (:func:`spr_plugin.core.serialize.field_dict`: declaration order, optional fields left out
while they hold their default); ``from_dict`` checks every field, since a file may come from elsewhere.

All boxes here are in **original-image pixels** ``(x1, y1, x2, y2)``. Model-specific coordinate
frames (Qwen2-VL's [0,1000) grid, Qwen2.5-VL's resized-input pixels) exist only inside
:mod:`spr_plugin.families.box_formats`, so no other module can mix them up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from spr_plugin.core.serialize import field_dict


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in original-image pixels, ``x1 <= x2`` and ``y1 <= y2``."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> Box:
        """COCO stores ``[x, y, width, height]``; everything else here uses corners."""
        return cls(float(x), float(y), float(x) + float(w), float(y) + float(h))

    @classmethod
    def from_list(cls, values: list[float]) -> Box:
        x1, y1, x2, y2 = (float(v) for v in values)
        return cls(x1, y1, x2, y2)

    def union(self, other: Box) -> Box:
        return Box(min(self.x1, other.x1), min(self.y1, other.y1), max(self.x2, other.x2), max(self.y2, other.y2))


@dataclass(frozen=True)
class AnnotatedObject:
    """One ground-truth object of a query region, as the detection annotations give it.

    ``category`` is the readable name (``bat (animal)``, not LVIS's ``bat_(animal)``) and ``synonyms`` the
    other names the dataset gives it (LVIS ``synonyms``); label-aware matching accepts any of them.
    """

    ann_id: int
    category: str
    box: Box
    #: Other names of the category (LVIS ships them); label matching accepts any of them.
    synonyms: tuple[str, ...] = ()
    #: A COCO ``iscrowd`` region (only ever an ignored object): pycocotools scores a box against it by
    #: intersection over the *box's* area, so a person box inside a crowd box overlaps it fully.
    crowd: bool = False

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, omit_default=("synonyms", "crowd"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnnotatedObject:
        synonyms = d.get("synonyms") or ()
        if not isinstance(synonyms, (list, tuple)):
            raise TypeError(f"synonyms must be a list of names, got {type(synonyms).__name__}")
        if not all(isinstance(s, str) for s in synonyms):
            raise TypeError("synonyms must be a list of names")
        crowd = d.get("crowd") or False
        if not isinstance(crowd, bool):
            raise TypeError(f"crowd must be true or false, got {crowd!r:.40}")
        return cls(_count(d["ann_id"], "ann_id"), _text(d["category"], "category"), _box(d["box"], "box"), tuple(synonyms), crowd)


@dataclass(frozen=True)
class Region:
    """A query region: the union box of a seed object and its nearest neighbours.

    ``image_path`` is the image file as found on disk when the region was sampled (absolute), so later
    stages never have to guess the image root again; ``image_root`` is the folder it was found under, and
    stages that copy images (export) refuse a path outside it.

    Three optional fields keep a description from being punished for what the annotations do not say:
    ``ignored`` holds objects that are neither required nor wrong to ground (crowd regions, Objects365
    objects in a picture or a reflection under the ``ignore`` policy), ``not_exhaustive`` the names of
    categories LVIS did not label exhaustively in this image (a box on an unlabelled one is not a false
    positive) and ``absent`` the names LVIS verified are not in the image (``neg_category_ids``).
    ``in_image`` names every category annotated anywhere in the image (with synonyms): a dataset category
    not among them is absent from the image, so naming it is a hallucination (empty: not recorded, as in
    regions files written before it existed; then only ``absent`` names count as hallucinated).
    """

    region_id: str
    image_id: int
    image_path: str
    width: int
    height: int
    box: Box
    objects: tuple[AnnotatedObject, ...]
    seed_ann_id: int
    image_root: str = ""
    ignored: tuple[AnnotatedObject, ...] = ()
    not_exhaustive: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    in_image: tuple[str, ...] = ()

    @property
    def categories(self) -> list[str]:
        """Distinct category names in the region, in first-seen order."""
        return list(dict.fromkeys(o.category for o in self.objects))

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, omit_default=("image_root", "ignored", "not_exhaustive", "absent", "in_image"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        region_id = _region_id(d["region_id"])
        width, height = _count(d["width"], "width"), _count(d["height"], "height")
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise ValueError(f"image size must be 1..{MAX_SIDE} pixels a side, got {width}x{height}")
        box = _box(d["box"], "box")
        if box.x2 <= 0 or box.y2 <= 0 or box.x1 >= width or box.y1 >= height:
            raise ValueError(f"box {box.as_list()} lies outside the {width}x{height} image")
        return cls(
            region_id=region_id,
            image_id=_count(d["image_id"], "image_id"),
            image_path=_text(d["image_path"], "image_path"),
            width=width,
            height=height,
            box=box,
            objects=tuple(AnnotatedObject.from_dict(o) for o in _list(d["objects"], "objects")),
            seed_ann_id=_count(d["seed_ann_id"], "seed_ann_id"),
            image_root=_text(d.get("image_root") or "", "image_root", empty=True),
            ignored=tuple(AnnotatedObject.from_dict(o) for o in _list(d.get("ignored") or [], "ignored")),
            not_exhaustive=_names(d.get("not_exhaustive")),
            absent=_names(d.get("absent")),
            in_image=_names(d.get("in_image")),
        )


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of category names, got {value!r:.60}")
    return tuple(value)


@dataclass(frozen=True)
class Candidate:
    """One generated region description (model text, box tokens included).

    ``key`` identifies it uniquely, so generation can append to a JSONL file and resume by skipping
    keys that are already there.
    """

    region_id: str
    variant: str
    sample_idx: int
    text: str
    generator: str = ""
    temperature: float | None = None
    seed: int | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.region_id, self.variant, self.sample_idx)

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        text = d["text"]
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        temperature = d.get("temperature")
        return cls(
            region_id=_region_id(d["region_id"]),
            variant=_text(_default(d.get("variant"), "unknown"), "variant"),
            sample_idx=_count(d.get("sample_idx", 0), "sample_idx"),
            text=text,
            generator=_text(_default(d.get("generator"), ""), "generator", empty=True),
            temperature=None if temperature is None else _finite(temperature, "temperature"),
            seed=None if d.get("seed") is None else _count(d["seed"], "seed"),
        )


#: Ids and counts are int64 (parquet columns, numpy, pycocotools): a hand-edited ``1e40`` is refused on reading.
MAX_INT = 2**63 - 1
#: The largest image side a record may declare (far above any decodable image, far below int overflow).
MAX_SIDE = 1_000_000


def _count(value: Any, what: str) -> int:
    """A non-negative int64 field (JSON ``1.0`` accepted, ``Infinity``, ``1.5``, ``true``, ``"1"`` and 10^40 not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a non-negative integer, got {value!r:.40}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{what} must be a non-negative integer, got {value!r:.40}")
    if not 0 <= value <= MAX_INT:
        raise ValueError(f"{what} must be a non-negative integer below 2^63, got {value!r:.40}")
    return int(value)


def _text(value: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise TypeError(f"{what} must be a{'' if empty else ' non-empty'} string, got {value!r:.40}")
    return value


def _region_id(value: Any) -> str:
    """Region ids are strings (an integer id of a hand-made file is accepted as its decimal string)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise TypeError(f"region_id must be a string (not empty), got {value!r:.40}")
    if isinstance(value, int) and not 0 <= value <= MAX_INT:
        raise ValueError(f"region_id must be a string or an id below 2^63, got {value!r:.40}")
    return str(value)


def _default(value: Any, default: str) -> Any:
    """A missing or null optional field takes its default (hand-made files write ``null``)."""
    return default if value is None else value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be true or false, got {value!r:.40}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _box(value: Any, what: str) -> Box:
    """A box of a record: four finite numbers ``[x1, y1, x2, y2]`` with ``x1 < x2`` and ``y1 < y2`` (pixels).

    A zero-size or reversed box has no area to describe or match; an infinite one would turn every score
    and margin it touches into a non-JSON ``Infinity``.
    """
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise TypeError(f"{what} must be a list of 4 numbers [x1, y1, x2, y2], got {value!r:.60}")
    x1, y1, x2, y2 = (_finite(v, what) for v in value)
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"{what} {[x1, y1, x2, y2]} is empty or reversed (needs x1 < x2 and y1 < y2)")
    return Box(x1, y1, x2, y2)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r:.40}")
    return float(value)


@dataclass(frozen=True)
class GroundedPhrase:
    """A phrase of a description and the box the model attached to it (pixels), if any.

    ``span`` is the character range of the whole grounded unit (reference tokens and box) in the
    text it was parsed from; refinement uses it to rewrite exactly that part of the text.
    """

    label: str
    box: Box | None
    span: tuple[int, int]
    #: A box was written for this phrase but could not be used (broken syntax, out of range, cut off):
    #: refinement must remove that box text, while a phrase with no box at all is just an ungrounded mention.
    malformed: bool = False


@dataclass
class ParseResult:
    """What a box parser found in one text, and what it had to clamp or drop (with reasons)."""

    phrases: list[GroundedPhrase] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    clamped: int = 0

    @property
    def boxes(self) -> list[Box]:
        return [p.box for p in self.phrases if p.box is not None]

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass(frozen=True)
class Match:
    """A ground-truth object matched to a predicted box (indices into the region / parse boxes)."""

    gt_index: int
    pred_index: int
    iou: float


@dataclass(frozen=True)
class LocalizationScore:
    """S_loc and the matching behind it, so a user can see why a description scored as it did."""

    score: float
    metric: str
    n_gt: int
    n_pred: int
    matches: tuple[Match, ...]
    #: How many of the ``n_pred`` boxes came from a phrase grounder (they are the last ones) rather
    #: than from the description's own text; 0 unless a grounder is configured.
    n_grounded: int = 0
    #: Boxes of the description left out of ``n_pred`` because the annotations cannot judge them: a box whose
    #: phrase names a category LVIS did not label exhaustively in the image, or a box on an ignored object
    #: (a crowd, an Objects365 object in a picture or a reflection). They are neither matches nor false positives.
    n_neutral: int = 0

    @property
    def precision(self) -> float:
        return len(self.matches) / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return len(self.matches) / self.n_gt if self.n_gt else 0.0

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, omit_default=("n_neutral",), dump={"matches": _match_rows})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocalizationScore:
        matches = tuple(
            Match(_count(g, "match gt index"), _count(p, "match box index"), _finite(i, "match IoU"))
            for g, p, i in _list(d["matches"], "matches")
        )
        return cls(
            _finite(d["score"], "localization score"), _text(d["metric"], "metric"), _count(d["n_gt"], "n_gt"),
            _count(d["n_pred"], "n_pred"), matches, _count(d.get("n_grounded", 0), "n_grounded"),
            _count(d.get("n_neutral", 0), "n_neutral"),
        )  # fmt: skip


def _match_rows(matches: tuple[Match, ...]) -> list[list[float]]:
    """Matches as ``[gt_index, box_index, IoU]`` rows (IoU to 4 places: a file to read, not to recompute from)."""
    return [[m.gt_index, m.pred_index, round(m.iou, 4)] for m in matches]


@dataclass(frozen=True)
class SemanticScore:
    """S_sem, the scorer that produced it, and the named parts it averages.

    Part names depend on the scorer: ``text_region``/``phrase_objects`` (text scorer),
    ``clip_crop``/``clip_local`` (CLIP scorer), all four for ``clip+text``. The dict form is flat
    (``{"score", "scorer", **parts}``), so files written before parts were generalised load unchanged.
    """

    score: float
    parts: dict[str, float]
    scorer: str

    @property
    def text_region(self) -> float:
        """The text scorer's whole-description part (0 if this scorer has none)."""
        return self.parts.get("text_region", 0.0)

    @property
    def phrase_objects(self) -> float:
        """The text scorer's phrase-vs-category part (0 if this scorer has none)."""
        return self.parts.get("phrase_objects", 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, **{k: float(v) for k, v in self.parts.items()}, "scorer": self.scorer}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SemanticScore:
        parts = {str(k): _finite(v, f"semantic {k}") for k, v in d.items() if k not in ("score", "scorer")}
        return cls(_finite(d["score"], "semantic score"), parts, _text(d["scorer"], "scorer"))


@dataclass(frozen=True)
class ScoredCandidate:
    """A candidate (initial or refined) with its combined score S = λ·S_sem + (1-λ)·S_loc."""

    candidate: Candidate
    refined: bool
    score: float
    semantic: SemanticScore
    localization: LocalizationScore
    parse_dropped: dict[str, int] = field(default_factory=dict)
    #: S_sem and S_loc after per-region normalisation (``sem``, ``loc``), when the run normalises.
    norm_parts: dict[str, float] = field(default_factory=dict)
    #: What refinement did to this text (policy and counts), for refined candidates.
    refinement: dict[str, Any] = field(default_factory=dict)
    #: What S lost for naming objects absent from the image (weight x hallucinated share), already in ``score``.
    penalty: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self, omit_default=("norm_parts", "refinement", "penalty"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoredCandidate:
        return cls(
            candidate=Candidate.from_dict(d["candidate"]),
            refined=_flag(d["refined"], "refined"),
            score=_finite(d["score"], "score"),
            semantic=SemanticScore.from_dict(d["semantic"]),
            localization=LocalizationScore.from_dict(d["localization"]),
            parse_dropped={str(k): _count(v, "parse_dropped") for k, v in d.get("parse_dropped", {}).items()},
            norm_parts={str(k): _finite(v, "norm_parts") for k, v in d.get("norm_parts", {}).items()},
            refinement=dict(d.get("refinement", {})),
            penalty=float(d.get("penalty", 0.0)),
        )


@dataclass(frozen=True)
class PreferencePair:
    """One DPO pair for a region: the best refined description vs the worst initial one."""

    region: Region
    chosen: ScoredCandidate
    rejected: ScoredCandidate

    @property
    def margin(self) -> float:
        return self.chosen.score - self.rejected.score

    def to_dict(self) -> dict[str, Any]:
        return field_dict(self) | {"margin": self.margin}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreferencePair:
        return cls(
            Region.from_dict(d["region"]), ScoredCandidate.from_dict(d["chosen"]), ScoredCandidate.from_dict(d["rejected"])
        )
