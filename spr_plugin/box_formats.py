"""Grounded-text box formats: parse model text into pixel boxes and write pixel boxes back as text.

Each model family writes boxes in its own coordinate frame, and mixing frames up is the most
reported bug of grounding pipelines. This module is the only place that knows about frames:

* ``qwen2_vl``: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
  with integers normalised to the [0,1000) grid, independent of the image size.
* ``qwen2_5_vl``: the same tokens, but absolute pixels of the *resized model input*
  (LLaMA-Factory's ``image_max_pixels`` resize followed by the processor's ``smart_resize``).
* ``qwen2_5_vl_json``: Qwen2.5-VL's JSON answer ``[{"bbox_2d": [x1,y1,x2,y2], "label": "..."}]``,
  in the same resized-input frame.

Everything outside this module sees boxes in original-image pixels only (:class:`~spr_plugin.records.Box`).
Bad boxes never raise: garbage, truncated, out-of-range, reversed or zero-area boxes are clamped or
dropped and counted in :class:`~spr_plugin.records.ParseResult` so a run can report its parse-failure rate.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from .errors import ConfigError
from .lf_image import DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS, lf_image_size
from .records import Box, GroundedPhrase, ParseResult

REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"

_NUM = r"(-?\d+(?:\.\d+)?)"
_CORNERS_RE = re.compile(rf"^\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*,\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*$")
_REF_RE = re.compile(re.escape(REF_START) + r"(.*?)" + re.escape(REF_END), re.DOTALL)
# A box runs to its end token; a missing end token (truncated generation) stops at the next marker.
_BOX_RE = re.compile(
    re.escape(BOX_START)
    + r"(.*?)("
    + re.escape(BOX_END)
    + r"|(?="
    + re.escape(BOX_START)
    + r")|(?="
    + re.escape(REF_START)
    + r")|$)",
    re.DOTALL,
)
_SPECIAL_RE = re.compile(r"<\|[a-z_]+\|>")
_BRACES_RE = re.compile(r"[{}]")
_COMMA_AFTER_RE = re.compile(r"\s*,")


def _innermost_objects(text: str, marker: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every brace pair with no brace inside that contains ``marker``, left to right.

    The same spans as the regex ``\\{[^{}]*MARKER[^{}]*\\}``, found in one pass: that regex backtracks over
    every occurrence of the marker in an unclosed object, which makes a reply like ``{"bbox_2d" "bbox_2d" ...``
    quadratic (80 kB took 2.7 s).
    """
    spans = []
    opened = -1
    for m in _BRACES_RE.finditer(text):
        if m.group() == "{":
            opened = m.start()
        elif opened >= 0:
            if text.find(marker, opened, m.end()) >= 0:
                spans.append((opened, m.end()))
            opened = -1
    return spans

#: Share of the frame a coordinate may overshoot and still be clamped rather than dropped.
DEFAULT_TOLERANCE = 0.02


class BoxFormat(ABC):
    """A model family's way of writing boxes in text.

    Subclasses define the coordinate frame (``frame_size``) and the surface syntax; the shared code
    here converts between the frame and original-image pixels and validates boxes the same way for all.
    """

    name: str

    def __init__(self, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self.tolerance = tolerance

    @abstractmethod
    def frame_size(self, width: int, height: int) -> tuple[float, float]:
        """Width and height of the coordinate frame the model writes numbers in."""

    @abstractmethod
    def parse(self, text: str, width: int, height: int) -> ParseResult:
        """Find every grounded phrase of ``text``; boxes come back in original-image pixels."""

    @abstractmethod
    def render(self, label: str, box: Box, width: int, height: int) -> str:
        """Write one grounded phrase (label plus box) as the model would."""

    @abstractmethod
    def render_box(self, box: Box, width: int, height: int) -> str:
        """Write a bare box (used to point at the query region in prompts)."""

    @abstractmethod
    def rewrite(self, text: str, parse: ParseResult, boxes: Mapping[int, Box | None], width: int, height: int) -> str:
        """Rewrite phrases of ``text`` (indices into ``parse.phrases``): a Box snaps the phrase to it,
        ``None`` removes its grounding. Phrases not named stay as they are."""

    def clean(self, text: str, width: int, height: int) -> str:
        """Remove malformed grounding debris, keeping well-formed units (identity where nothing applies)."""
        return text

    def plain_text(self, text: str, width: int, height: int) -> str:
        """The description with all grounding removed (labels kept), for text-only scorers."""
        parse = self.parse(text, width, height)
        out = self.rewrite(text, parse, {i: None for i in range(len(parse.phrases))}, width, height)
        return re.sub(r"\s+", " ", _SPECIAL_RE.sub("", out)).strip()

    # -- frame conversion shared by all formats -------------------------------------------------

    def to_frame(self, box: Box, width: int, height: int) -> tuple[int, int, int, int]:
        """Original pixels -> integer frame coordinates, clamped inside the frame."""
        fw, fh = self.frame_size(width, height)
        sx, sy = fw / width, fh / height
        max_x, max_y = self._max_coord(fw), self._max_coord(fh)
        return (
            _clamp_int(box.x1 * sx, max_x),
            _clamp_int(box.y1 * sy, max_y),
            _clamp_int(box.x2 * sx, max_x),
            _clamp_int(box.y2 * sy, max_y),
        )

    def _max_coord(self, frame_extent: float) -> int:
        return int(frame_extent)

    def from_frame(self, values: tuple[float, float, float, float], width: int, height: int, result: ParseResult) -> Box | None:
        """Frame coordinates -> original pixels, after validation. Returns None (and counts why) for bad boxes."""
        x1, y1, x2, y2 = values
        if not all(math.isfinite(v) for v in values):
            result.drop("garbage")
            return None
        fw, fh = self.frame_size(width, height)
        tol_x, tol_y = self.tolerance * fw, self.tolerance * fh
        if min(x1, x2) < -tol_x or max(x1, x2) > fw + tol_x or min(y1, y2) < -tol_y or max(y1, y2) > fh + tol_y:
            result.drop("out_of_range")
            return None
        if x1 > x2 or y1 > y2:
            result.drop("reversed")
            return None
        cx1, cy1, cx2, cy2 = (min(max(x1, 0.0), fw), min(max(y1, 0.0), fh), min(max(x2, 0.0), fw), min(max(y2, 0.0), fh))
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            result.clamped += 1
        if cx2 <= cx1 or cy2 <= cy1:
            result.drop("zero_area")
            return None
        sx, sy = width / fw, height / fh
        return Box(cx1 * sx, cy1 * sy, cx2 * sx, cy2 * sy)


def _clamp_int(v: float, hi: int) -> int:
    return int(min(max(round(v), 0), hi))


_COORDS_RE = re.compile(r",?\s*[(\[]?\s*-?\d+(?:\.\d+)?(?:\s*[,)\]]\s*[(\[]?\s*-?\d+(?:\.\d+)?)+\s*[)\]]?")


def _scrub(segment: str) -> str:
    """Text between well-formed units: drop stray special tokens and, if there were any, coordinate debris."""
    if not _SPECIAL_RE.search(segment):
        return segment
    # Markers become spaces so the words they separated do not run together ("squareblue").
    return _COORDS_RE.sub(" ", _SPECIAL_RE.sub(" ", segment))


class _TokenFormat(BoxFormat):
    """Qwen's ``<|object_ref_start|>...<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` token syntax."""

    def render(self, label: str, box: Box, width: int, height: int) -> str:
        return f"{REF_START}{label}{REF_END}{self.render_box(box, width, height)}"

    def render_box(self, box: Box, width: int, height: int) -> str:
        x1, y1, x2, y2 = self.to_frame(box, width, height)
        return f"{BOX_START}({x1},{y1}),({x2},{y2}){BOX_END}"

    def parse(self, text: str, width: int, height: int) -> ParseResult:
        result = ParseResult()
        refs = list(_REF_RE.finditer(text))
        boxes = list(_BOX_RE.finditer(text))
        used_boxes: set[int] = set()
        # A reference owns the boxes that follow it with only white space (or other boxes) in between.
        for ref in refs:
            owned, cursor = [], ref.end()
            for bi, bm in enumerate(boxes):
                if bi in used_boxes or bm.start() < cursor:
                    continue
                if text[cursor : bm.start()].strip():
                    break
                owned.append(bi)
                cursor = bm.end()
            label = ref.group(1).strip()
            if not owned:
                result.phrases.append(GroundedPhrase(label, None, (ref.start(), ref.end())))
                continue
            span = (ref.start(), boxes[owned[-1]].end())
            for bi in owned:
                used_boxes.add(bi)
                result.phrases.append(GroundedPhrase(label, self._box_of(boxes[bi], width, height, result), span))
        for bi, bm in enumerate(boxes):
            if bi not in used_boxes:
                result.phrases.append(GroundedPhrase("", self._box_of(bm, width, height, result), (bm.start(), bm.end())))
        # An end token with no start (the model skipped <|box_start|>) is a malformed box too.
        closed = sum(1 for bm in boxes if bm.group(2) == BOX_END)
        for _ in range(text.count(BOX_END) - closed):
            result.drop("garbage")
        result.phrases.sort(key=lambda p: p.span)
        return result

    def clean(self, text: str, width: int, height: int) -> str:
        """Keep well-formed grounded units; elsewhere remove stray markers and the coordinates beside them.

        Refinement rewrites only what the parser recognised; model noise such as a reference followed by
        coordinates without ``<|box_start|>`` would otherwise survive into the *chosen* text and teach
        malformed boxes. Numbers are only removed from stretches that held a stray marker.
        """
        parse = self.parse(text, width, height)
        keep: dict[tuple[int, int], bool] = {}
        for p in parse.phrases:
            keep[p.span] = keep.get(p.span, True) and p.box is not None
        out, cursor = [], 0
        for span in sorted(s for s, ok in keep.items() if ok):
            out.append(_scrub(text[cursor : span[0]]))
            out.append(text[span[0] : span[1]])
            cursor = span[1]
        out.append(_scrub(text[cursor:]))
        return re.sub(r" +([,.;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", "".join(out))).strip()

    def _box_of(self, match: re.Match[str], width: int, height: int, result: ParseResult) -> Box | None:
        if match.group(2) != BOX_END:
            result.drop("truncated")
            return None
        corners = _CORNERS_RE.match(match.group(1))
        if corners is None:
            result.drop("garbage")
            return None
        return self.from_frame(tuple(float(v) for v in corners.groups()), width, height, result)  # type: ignore[arg-type]

    def rewrite(self, text: str, parse: ParseResult, boxes: Mapping[int, Box | None], width: int, height: int) -> str:
        # Phrases that share a span (one reference, several boxes) are rewritten together.
        by_span: dict[tuple[int, int], list[int]] = {}
        for i, phrase in enumerate(parse.phrases):
            by_span.setdefault(phrase.span, []).append(i)
        out, cursor = [], 0
        for span, members in sorted(by_span.items()):
            if not any(i in boxes for i in members):
                continue
            label = parse.phrases[members[0]].label
            kept = [boxes[i] if i in boxes else parse.phrases[i].box for i in members]
            kept_boxes = [b for b in kept if b is not None]
            if kept_boxes:
                unit = f"{REF_START}{label}{REF_END}" if label else ""
                unit += "".join(self.render_box(b, width, height) for b in kept_boxes)
            else:
                unit = label
            out.append(text[cursor : span[0]])
            out.append(unit)
            cursor = span[1]
        out.append(text[cursor:])
        return "".join(out)


class Qwen2VLFormat(_TokenFormat):
    """Qwen2-VL: integers on a [0,1000) grid, whatever the image size."""

    name = "qwen2_vl"

    def frame_size(self, width: int, height: int) -> tuple[float, float]:
        return (1000.0, 1000.0)

    def _max_coord(self, frame_extent: float) -> int:
        return int(frame_extent) - 1  # the grid is [0, 1000): 999 is the last value


@dataclass(frozen=True)
class ResizeSpec:
    """How a Qwen2.5-VL input image is resized before the model sees it.

    ``pre_max_pixels``/``pre_min_pixels`` mirror LLaMA-Factory's ``image_max_pixels``/``image_min_pixels``
    (applied first, by LLaMA-Factory), ``min_pixels``/``max_pixels`` the HF processor's ``smart_resize``.
    Boxes must be written in the frame the model actually saw, or training teaches wrong coordinates.
    """

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    pre_max_pixels: int | None = DEFAULT_IMAGE_MAX_PIXELS
    pre_min_pixels: int | None = DEFAULT_IMAGE_MIN_PIXELS
    factor: int = 28

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        # LLaMA-Factory's pre-resize (also applied by generation and evaluation, see lf_image), then smart_resize.
        w, h = lf_image_size(width, height, self.pre_max_pixels, self.pre_min_pixels)
        h_bar, w_bar = smart_resize(h, w, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return (w_bar, h_bar)


class Qwen25VLFormat(_TokenFormat):
    """Qwen2.5-VL token form: absolute pixels of the resized model input."""

    name = "qwen2_5_vl"

    def __init__(self, resize: ResizeSpec | None = None, tolerance: float = DEFAULT_TOLERANCE) -> None:
        super().__init__(tolerance)
        self.resize = resize or ResizeSpec()

    def frame_size(self, width: int, height: int) -> tuple[float, float]:
        w, h = self.resize.input_size(width, height)
        return (float(w), float(h))


class Qwen25VLJsonFormat(Qwen25VLFormat):
    """Qwen2.5-VL JSON form: ``{"bbox_2d": [x1,y1,x2,y2], "label": "..."}`` objects, resized-input pixels."""

    name = "qwen2_5_vl_json"

    def render(self, label: str, box: Box, width: int, height: int) -> str:
        return json.dumps({"bbox_2d": list(self.to_frame(box, width, height)), "label": label}, ensure_ascii=False)

    def render_box(self, box: Box, width: int, height: int) -> str:
        return json.dumps(list(self.to_frame(box, width, height)))

    def parse(self, text: str, width: int, height: int) -> ParseResult:
        result = ParseResult()
        for start, end in _innermost_objects(text, '"bbox_2d"'):
            label, box = "", None
            try:
                obj = json.loads(text[start:end])
                label = str(obj.get("label", "")).strip()
                values = obj["bbox_2d"]
                if not (isinstance(values, list) and len(values) == 4):
                    raise ValueError("bbox_2d must hold 4 numbers")
                box = self.from_frame(tuple(float(v) for v in values), width, height, result)  # type: ignore[arg-type]
            except (ValueError, TypeError, KeyError):
                result.drop("garbage")
            result.phrases.append(GroundedPhrase(label, box, (start, end)))
        tail = text[text.rfind("}") + 1 :] if "}" in text else text
        if '"bbox_2d"' in tail:  # an object that never closed: generation was cut off
            result.drop("truncated")
        return result

    def rewrite(self, text: str, parse: ParseResult, boxes: Mapping[int, Box | None], width: int, height: int) -> str:
        out: list[str] = []
        last = -1  # index in ``out`` of the last piece that is not white space
        cursor = 0

        def emit(piece: str) -> None:
            nonlocal last
            out.append(piece)
            if piece.strip():
                last = len(out) - 1

        for i, phrase in enumerate(parse.phrases):
            if i not in boxes:
                continue
            start, end = phrase.span
            box = boxes[i]
            emit(text[cursor:start])
            if box is None:
                # Drop the object and one separating comma so the surrounding JSON list stays valid.
                comma = _COMMA_AFTER_RE.match(text, end)
                if comma is not None:
                    end = comma.end()
                elif last >= 0 and out[last].rstrip().endswith(","):
                    out[last] = out[last].rstrip()[:-1]
                    del out[last + 1 :]
                    while last >= 0 and not out[last].strip():
                        last -= 1
            else:
                emit(self.render(phrase.label, box, width, height))
            cursor = end
        out.append(text[cursor:])
        return "".join(out)

    def plain_text(self, text: str, width: int, height: int) -> str:
        labels = [p.label for p in self.parse(text, width, height).phrases if p.label]
        if labels:
            return ", ".join(labels)
        return super().plain_text(text, width, height)


_FORMATS: dict[str, type[BoxFormat]] = {
    Qwen2VLFormat.name: Qwen2VLFormat,
    Qwen25VLFormat.name: Qwen25VLFormat,
    Qwen25VLJsonFormat.name: Qwen25VLJsonFormat,
}


def available_formats() -> list[str]:
    return sorted(_FORMATS)


def get_box_format(name: str, **kwargs: object) -> BoxFormat:
    """Look a format up by name (``qwen2_vl``, ``qwen2_5_vl``, ``qwen2_5_vl_json``)."""
    try:
        cls = _FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown box format {name!r}; choose one of {', '.join(available_formats())}") from None
    return cls(**kwargs)  # type: ignore[arg-type]
