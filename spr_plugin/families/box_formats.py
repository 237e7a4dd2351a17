"""Grounded-text box formats: parse model text into pixel boxes and write pixel boxes back as text.

Each model family writes boxes in its own coordinate frame, and mixing frames up is the most
reported bug of grounding pipelines. This module is the only place that knows about frames:

* ``qwen2_vl``: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
  with integers normalised to the [0,1000) grid, independent of the image size.
* ``qwen2_5_vl``: the same tokens, but absolute pixels of the *resized model input*
  (LLaMA-Factory's ``image_max_pixels`` resize followed by the processor's ``smart_resize``).
* ``qwen2_5_vl_json``: Qwen2.5-VL's JSON answer ``[{"bbox_2d": [x1,y1,x2,y2], "label": "..."}]``,
  in the same resized-input frame.
* ``qwen3_vl``: Qwen3-VL / Qwen3.5's JSON answer of the same shape, usually in a fenced ``json`` block with prose
  around it, on a relative [0,1000] grid independent of the image size and of any resize.
* ``internvl``: InternVL's ``<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>`` (several boxes may follow one
  reference inside one ``<box>``), on a relative [0,1000] grid.
* ``glm4v``: GLM-4.1V / 4.5V's ``<|begin_of_box|>[x1, y1, x2, y2]<|end_of_box|>`` after the words it grounds (the
  family has no reference markers), on a relative [0,1000] grid.

Everything outside this module sees boxes in original-image pixels only (:class:`~spr_plugin.core.records.Box`).
Bad boxes never raise: garbage, truncated, out-of-range, reversed or zero-area boxes are clamped or
dropped and counted in :class:`~spr_plugin.core.records.ParseResult` so a run can report its parse-failure rate.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from spr_plugin.core.frame import DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS, lf_image_size
from spr_plugin.core.records import Box, GroundedPhrase, ParseResult

REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"

_NUM = r"(-?\d++(?:\.\d++)?)"
_CORNERS_RE = re.compile(rf"\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*,\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*")
_SPECIAL_RE = re.compile(r"<\|[a-z_]+\|>")
_BRACES_RE = re.compile(r"[{}]")
_COMMA_AFTER_RE = re.compile(r"\s*,")


def _innermost_objects(text: str, markers: tuple[str, ...]) -> list[tuple[int, int]]:
    """``(start, end)`` of every brace pair with no brace inside that contains one of ``markers``, left to right.

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
            if any(text.find(marker, opened, m.end()) >= 0 for marker in markers):
                spans.append((opened, m.end()))
            opened = -1
    return spans


#: Longest box body worth reading: "(999,999),(999,999)" with generous spaces and decimals.
_MAX_BOX_BODY = 96

#: Edit for :meth:`BoxFormat.rewrite` that removes a phrase entirely (its words and its boxes).
DROP = "drop"
Edit = Box | None | Literal["drop"]

#: Share of the frame a coordinate may overshoot and still be clamped rather than dropped.
DEFAULT_TOLERANCE = 0.02


class BoxFormat(ABC):
    """A model family's way of writing boxes in text.

    Subclasses define the coordinate frame (``frame_size``) and the surface syntax; the shared code
    here converts between the frame and original-image pixels and validates boxes the same way for all.
    """

    #: The ``--box-format`` value; the family's profile (:mod:`spr_plugin.families.profiles`) has the rest.
    name: str
    #: Whether :meth:`render` may replace words in running text (a tagged reference reads in place); refinement
    #: grounds plain-word mentions only then. A syntax that lists objects apart from the prose (JSON) says no.
    grounds_words: bool = True
    #: Marker tokens of this syntax (and any other chat token) that may stray outside a well-formed unit.
    stray_re: re.Pattern[str] = _SPECIAL_RE

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
    def rewrite(self, text: str, parse: ParseResult, boxes: Mapping[int, Edit], width: int, height: int) -> str:
        """Rewrite phrases of ``text`` (indices into ``parse.phrases``): a Box snaps the phrase to it,
        ``None`` removes its grounding (the words stay), :data:`DROP` removes the phrase with its words.
        Phrases not named stay as they are."""

    def clean(self, text: str, width: int, height: int) -> str:
        """Remove malformed grounding debris, keeping well-formed units (identity where nothing applies)."""
        return text

    def plain_text(self, text: str, width: int, height: int, parse: ParseResult | None = None) -> str:
        """The description with all grounding removed (labels kept), for text-only scorers.

        ``parse`` is the text's parse when the caller has it already (the scorer does): no second parse."""
        parse = parse if parse is not None else self.parse(text, width, height)
        out = self.rewrite(text, parse, {i: None for i in range(len(parse.phrases))}, width, height)
        return re.sub(r"\s+", " ", self.stray_re.sub("", out)).strip()

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


#: Coordinate debris ("(1,1", "[12, 40, 3"): it may start only where a number or bracket starts, and every
#: quantifier is possessive, so the regex engine never rescans a digit run (linear, not quadratic, time).
_COORDS_RE = re.compile(
    r"(?:,\s*+)?(?<![\w.])[(\[]?\s*+-?\d++(?:\.\d++)?(?:\s*+[,)\]]\s*+[(\[]?\s*+-?\d++(?:\.\d++)?)++\s*+[)\]]?"
)


#: Square brackets left standing alone once the coordinates inside them went ("[[1, 2, 3" leaves "[").
_EMPTY_BRACKETS_RE = re.compile(r"(?<![\w\]\[])[\[\]](?:\s*+[\[\]])*+(?![\w\[\]])")


def _scrub(segment: str, stray: re.Pattern[str] = _SPECIAL_RE) -> str:
    """Text between well-formed units: drop stray special tokens and, if there were any, coordinate debris."""
    if not stray.search(segment):
        return segment
    # Markers become spaces so the words they separated do not run together ("squareblue").
    return _EMPTY_BRACKETS_RE.sub(" ", _COORDS_RE.sub(" ", stray.sub(" ", segment)))


_SEP_AFTER_RE = re.compile(r"\s*+(?:,|\band\b|\bor\b)")


def _drop_trailing_separator(chunk: str) -> str:
    """``chunk`` without a final ", " / " and " / " or " (the separator before a dropped phrase)."""
    stripped = chunk.rstrip()
    if stripped.endswith(","):
        return stripped[:-1]
    for word in ("and", "or"):
        if stripped.endswith(word) and (len(stripped) == len(word) or not stripped[-len(word) - 1].isalnum()):
            return stripped[: -len(word)].rstrip()
    return chunk


def _tidy(text: str) -> str:
    """Collapse the spaces and punctuation that removing units leaves behind."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r" +([,.;:!?])", r"\1", text)
    return re.sub(r",(?:\s*,)+", ",", text).strip()


#: One ``[x1, y1, x2, y2]`` list; possessive, so a hostile body never backtracks.
_LIST_RE = re.compile(rf"\[\s*+{_NUM}\s*+,\s*+{_NUM}\s*+,\s*+{_NUM}\s*+,\s*+{_NUM}\s*+\]")
_LIST_SEP_RE = re.compile(r"\s*+,?\s*+")


def _bracket_boxes(body: str) -> list[tuple[float, float, float, float]] | None:
    """The boxes of ``[[x1, y1, x2, y2], [...]]`` (or a single ``[x1, y1, x2, y2]``); None if it is anything else."""
    body = body.strip()
    single = _LIST_RE.fullmatch(body)
    if single is not None:
        return [tuple(float(v) for v in single.groups())]  # type: ignore[list-item]
    if len(body) < 2 or body[0] != "[" or body[-1] != "]":
        return None
    inner, pos, boxes = body[1:-1].strip(), 0, []
    while pos < len(inner):
        m = _LIST_RE.match(inner, pos)
        if m is None:
            return None
        boxes.append(tuple(float(v) for v in m.groups()))
        sep = _LIST_SEP_RE.match(inner, m.end())
        pos = sep.end() if sep is not None else m.end()
        if pos < len(inner) and "," not in inner[m.end() : pos]:
            return None  # two lists with no comma between
    return boxes or None  # type: ignore[return-value]


class _TokenFormat(BoxFormat):
    """Reference-and-box marker syntax; Qwen's ``<|object_ref_start|>...<|box_start|>(x1,y1),(x2,y2)<|box_end|>``
    by default, InternVL's ``<ref>...</ref><box>[[...]]</box>`` and GLM's box markers by their own markers.

    The grammar, read in one left-to-right pass over the markers (linear in the text length, so a
    hostile megabyte of text parses in milliseconds)::

        unit := REF_START label REF_END (BOX)*  |  BOX
        BOX  := BOX_START body BOX_END          (body: one box for Qwen, a list of boxes for InternVL)

    A reference owns the boxes that follow it with only white space between. Anything else is damage and
    becomes a *malformed* phrase whose span covers it, so refinement can remove exactly that text: a
    reference whose end marker never comes (its label runs to the next marker), a box cut off by the
    next marker or the end of the text (``truncated``), a box end with no start (``garbage``). Spans of
    different phrases never overlap.
    """

    ref_start, ref_end, box_start, box_end = REF_START, REF_END, BOX_START, BOX_END
    #: The four markers (one alternation; whichever of them a family has).
    marker_re: re.Pattern[str] = re.compile("|".join(re.escape(t) for t in (REF_START, REF_END, BOX_START, BOX_END)))
    #: Longest box body worth reading.
    max_box_body = _MAX_BOX_BODY

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        kinds = {cls.ref_start: "ref_start", cls.ref_end: "ref_end", cls.box_start: "box_start", cls.box_end: "box_end"}
        cls._kinds = {marker: kind for marker, kind in kinds.items() if marker}  # a family may have no reference markers
        cls.marker_re = re.compile("|".join(re.escape(t) for t in cls._kinds))
        # Only where references exist can a bare box be captured by the reference before it.
        cls._bare_box_next_re = re.compile(r"\s*+" + re.escape(cls.box_start) if cls.ref_start else r"(?!)")

    def _box_values(self, body: str) -> list[tuple[float, float, float, float]] | None:
        """The coordinates written between a box's markers; None if the body is not the family's syntax."""
        corners = _CORNERS_RE.fullmatch(body)
        return None if corners is None else [tuple(float(v) for v in corners.groups())]  # type: ignore[list-item]

    def render(self, label: str, box: Box, width: int, height: int) -> str:
        return f"{self.ref_start}{label}{self.ref_end}{self.render_box(box, width, height)}"

    def render_box(self, box: Box, width: int, height: int) -> str:
        x1, y1, x2, y2 = self.to_frame(box, width, height)
        return f"{BOX_START}({x1},{y1}),({x2},{y2}){BOX_END}"

    def render_boxes(self, boxes: list[Box], width: int, height: int) -> str:
        """The boxes of one reference, as the family writes several of them."""
        return "".join(self.render_box(b, width, height) for b in boxes)

    def parse(self, text: str, width: int, height: int) -> ParseResult:
        result = ParseResult()
        marks = list(self.marker_re.finditer(text))
        kinds = [self._kinds[m.group()] for m in marks]
        i = 0
        while i < len(marks):
            m, kind = marks[i], kinds[i]
            if kind == "ref_start":
                if i + 1 >= len(marks) or kinds[i + 1] != "ref_end":
                    # An unterminated reference holds no box (nothing to count as dropped), but it is damage
                    # that refinement must remove: a malformed phrase.
                    end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
                    result.phrases.append(GroundedPhrase(text[m.end() : end].strip(), None, (m.start(), end), True))
                    i += 1
                    continue
                label = text[m.end() : marks[i + 1].start()].strip()
                cursor, i = marks[i + 1].end(), i + 2
                owned: list[tuple[Box | None, bool]] = []
                while i < len(marks) and kinds[i] == "box_start" and not text[cursor : marks[i].start()].strip():
                    boxes, cursor, i = self._read_box(text, marks, kinds, i, width, height, result)
                    owned += boxes
                span = (m.start(), cursor)
                if not owned:
                    result.phrases.append(GroundedPhrase(label, None, span))
                for box, malformed in owned:
                    result.phrases.append(GroundedPhrase(label, box, span, malformed))
            elif kind == "box_start":
                start = m.start()
                boxes, end, i = self._read_box(text, marks, kinds, i, width, height, result)
                result.phrases += [GroundedPhrase("", box, (start, end), malformed) for box, malformed in boxes]
            else:  # an end marker with nothing open: the model skipped its start token
                result.drop("garbage")
                i += 1
        return result

    def _read_box(
        self, text: str, marks: list[re.Match[str]], kinds: list[str], i: int, width: int, height: int, result: ParseResult
    ) -> tuple[list[tuple[Box | None, bool]], int, int]:
        """The boxes opened by ``marks[i]``: ([(box or None, malformed)], end of their text, index of the next marker)."""
        if i + 1 >= len(marks) or kinds[i + 1] != "box_end":
            result.drop("truncated")
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            return [(None, True)], end, i + 1
        body = text[marks[i].end() : marks[i + 1].start()]
        values = self._box_values(body) if len(body) <= self.max_box_body else None
        if values is None:
            result.drop("garbage")
            return [(None, True)], marks[i + 1].end(), i + 2
        boxes = [self.from_frame(v, width, height, result) for v in values]
        return [(box, box is None) for box in boxes], marks[i + 1].end(), i + 2

    def clean(self, text: str, width: int, height: int) -> str:
        """Keep well-formed grounded units; elsewhere remove stray markers and the coordinates beside them.

        Refinement rewrites only what the parser recognised; model noise such as a reference followed by
        coordinates without a box start marker would otherwise survive into the *chosen* text and teach
        malformed boxes. Numbers are only removed from stretches that held a stray marker.
        """
        parse = self.parse(text, width, height)
        units: dict[tuple[int, int], list[GroundedPhrase]] = {}
        for p in parse.phrases:
            units.setdefault(p.span, []).append(p)
        out, cursor = [], 0
        after_unit = False  # is the output so far a unit followed by white space only?
        for span in sorted(s for s, members in units.items() if any(p.box is not None for p in members)):
            gap = _scrub(text[cursor : span[0]], self.stray_re)
            out.append(gap)
            after_unit = after_unit and not gap.strip()
            members = units[span]
            unit = text[span[0] : span[1]]
            if any(p.box is None for p in members):  # a reference whose boxes are partly unusable keeps the good ones
                unit = self._unit(members[0].label, [p.box for p in members if p.box is not None], width, height)
            cursor = span[1]
            if after_unit and self.ref_start and unit.startswith(self.box_start):
                # Scrubbing removed what stood between a unit and this bare box: kept, the box would now
                # belong to the unit's phrase (a binding nobody wrote). It goes, with the debris.
                continue
            out.append(unit)
            after_unit = True
        out.append(_scrub(text[cursor:], self.stray_re))
        return _tidy("".join(out))

    def rewrite(self, text: str, parse: ParseResult, boxes: Mapping[int, Edit], width: int, height: int) -> str:
        # Phrases that share a span (one reference, several boxes) are rewritten together.
        by_span: dict[tuple[int, int], list[int]] = {}
        for i, phrase in enumerate(parse.phrases):
            by_span.setdefault(phrase.span, []).append(i)
        out: list[str] = []
        cursor = 0
        for span, members in sorted(by_span.items()):
            if not any(i in boxes for i in members):
                continue
            start, end = span
            edits = [boxes.get(i, parse.phrases[i].box) for i in members]
            label = parse.phrases[members[0]].label
            kept_boxes = [b for b in edits if isinstance(b, Box)]
            out.append(text[cursor:start])
            if all(e == DROP for e in edits):
                # Take one separating comma or conjunction with the phrase, so the sentence still reads, unless
                # that would leave a bare box right after a unit: the box would then belong to its phrase.
                after = _SEP_AFTER_RE.match(text, end)
                if after is not None and not self._bare_box_next_re.match(text, after.end()):
                    end = after.end()
                elif not self._bare_box_next_re.match(text, end):
                    out[-1] = _drop_trailing_separator(out[-1])
            elif kept_boxes:
                out.append(self._unit(label, kept_boxes, width, height))
            else:
                out.append(label)
            cursor = end
        out.append(text[cursor:])
        return "".join(out)

    def _unit(self, label: str, boxes: list[Box], width: int, height: int) -> str:
        """A reference with its boxes, as rewritten by refinement (a bare box when there is no label)."""
        ref = f"{self.ref_start}{label}{self.ref_end}" if label else ""
        return ref + self.render_boxes(boxes, width, height)


_TokenFormat.__init_subclass__()  # the base class's own marker tables (Qwen's tokens)


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


#: Keys that make a JSON object one of the answer's grounding objects. An object without a ``bbox_2d`` box (Qwen's
#: pointing answer ``point_2d``, a ``bbox`` or ``box_2d`` key, a bare ``label``) grounds no box: it is parsed as a
#: phrase without one (counted as garbage), so refinement removes it whole instead of leaving its braces, keys and
#: label behind as debris.
_OBJECT_KEYS = ('"bbox_2d"', '"point_2d"', '"bbox"', '"box_2d"', '"label"')


class _JsonBoxes(BoxFormat):
    """The JSON answer of the Qwen family: ``{"bbox_2d": [x1,y1,x2,y2], "label": "..."}`` objects, wherever they
    stand in the text (a JSON list, a fenced ``json`` block, prose around them). Each object is one phrase.

    :meth:`clean` keeps the JSON a chosen answer teaches valid (for Qwen2.5-VL's JSON form and Qwen3-VL alike)."""

    grounds_words = False  # objects listed apart from the prose: no box can stand in running text

    def render(self, label: str, box: Box, width: int, height: int) -> str:
        return json.dumps({"bbox_2d": list(self.to_frame(box, width, height)), "label": label}, ensure_ascii=False)

    def render_box(self, box: Box, width: int, height: int) -> str:
        return json.dumps(list(self.to_frame(box, width, height)))

    def parse(self, text: str, width: int, height: int) -> ParseResult:
        result = ParseResult()
        for start, end in _innermost_objects(text, _OBJECT_KEYS):
            label, box = "", None
            try:
                obj = json.loads(text[start:end])
                label = str(obj.get("label", "")).strip()
                values = obj["bbox_2d"]
                if not (isinstance(values, list) and len(values) == 4):
                    raise ValueError("bbox_2d must hold 4 numbers")
                box = self.from_frame(tuple(float(v) for v in values), width, height, result)  # type: ignore[arg-type]
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                result.drop("garbage")
            result.phrases.append(GroundedPhrase(label, box, (start, end), box is None))
        if _truncated_object_start(text) is not None:  # an object that never closed: generation was cut off
            result.drop("truncated")
        return result

    def rewrite(self, text: str, parse: ParseResult, boxes: Mapping[int, Edit], width: int, height: int) -> str:
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
            if not isinstance(box, Box):  # a JSON object without its box has nothing left: None and DROP agree
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

    def clean(self, text: str, width: int, height: int) -> str:
        """Remove objects whose box is unusable and an object cut off at the end, closing what the cut left open
        (the list, the fence), so the JSON a chosen answer teaches stays valid. Prose is left as it is."""
        parse = self.parse(text, width, height)
        bad = {i: None for i, p in enumerate(parse.phrases) if p.box is None}
        cut = _truncated_object_start(text)
        if not bad and cut is None:
            return _drop_empty_fences(_repair_lists(text))
        out = self.rewrite(text, parse, bad, width, height) if bad else text
        cut = _truncated_object_start(out)
        if cut is not None:
            out = out[:cut].rstrip()
            if out.endswith(","):
                out = out[:-1].rstrip()
            fence = out.rfind("```")
            block = out[fence + 3 :] if fence >= 0 else out
            out += "]" * max(block.count("[") - block.count("]"), 0)
            if out.count("```") % 2:
                out += "\n```"
        if not any(p.box is not None for p in parse.phrases):  # nothing grounded is left: no empty JSON block either
            out = _EMPTY_JSON_RE.sub("", out)
        return _drop_empty_fences(_repair_lists(out)).strip()

    def plain_text(self, text: str, width: int, height: int, parse: ParseResult | None = None) -> str:
        parse = parse if parse is not None else self.parse(text, width, height)
        labels = [p.label for p in parse.phrases if p.label]
        if labels:
            return ", ".join(labels)
        return super().plain_text(text, width, height, parse)


#: A JSON object opening (a brace, then a key's quote).
_OPEN_OBJECT_RE = re.compile(r'\{\s*+"')


def _truncated_object_start(text: str) -> int | None:
    """Where a JSON object that never closed (generation was cut off) starts, or None: an object opened after the last
    closing brace (``{"label": "dog", "bbox_2d`` is cut before its box key even closes), or a ``bbox_2d`` key
    standing there without its brace."""
    tail_from = text.rfind("}") + 1
    opened = _OPEN_OBJECT_RE.search(text, tail_from)
    if opened is not None:
        return opened.start()
    key = text.find('"bbox_2d', tail_from)
    return key if key >= 0 else None


#: Commas a removed object leaves standing in a list: before its end, after its start, or doubled. Each pattern
#: takes a whole run at once (possessive), so one pass of each is linear however many objects went.
_LIST_COMMA_RES = (
    (re.compile(r",[\s,]*+(?=\])"), ""),
    (re.compile(r"\[\s*+,[\s,]*+"), "["),
    (re.compile(r",(?:\s*+,)++"), ","),
)


_EMPTY_BLOCK_RE = re.compile(r"(?:json)?[\s,\[\]]*+")


def _drop_empty_fences(text: str) -> str:
    """``text`` without fenced blocks that hold no object any more (all of theirs were removed): an empty
    ```` ```json [ ] ``` ```` teaches nothing but syntax. Fences are read in pairs, so another block stays whole."""
    parts = text.split("```")
    if len(parts) < 3:
        return text
    out = [parts[0]]
    for i in range(1, len(parts) - 1, 2):  # parts[i] lies inside a block, parts[i + 1] after it
        if _EMPTY_BLOCK_RE.fullmatch(parts[i]):
            out[-1] = out[-1].rstrip(" \t")
            out.append(parts[i + 1])
        else:
            out += ["```", parts[i], "```", parts[i + 1]]
    if len(parts) % 2 == 0:  # an unterminated last block stays as it is
        out += ["```", parts[-1]]
    return "".join(out)


def _repair_lists(text: str) -> str:
    """``text`` without the commas a removed object left standing in its list (``[{...},\n]`` is not JSON)."""
    for pattern, repl in _LIST_COMMA_RES:
        text = pattern.sub(repl, text)
    return text


#: What is left of a JSON block once its objects are gone: ``[ , ]``, in a ```json fence or not.
_EMPTY_JSON_RE = re.compile(r"```(?:json)?\s*+\[?[\s,]*+\]?\s*+(?:```)?|\[[\s,]*+\]")


class Qwen25VLJsonFormat(_JsonBoxes, Qwen25VLFormat):
    """Qwen2.5-VL JSON form: ``{"bbox_2d": [x1,y1,x2,y2], "label": "..."}`` objects, resized-input pixels."""

    name = "qwen2_5_vl_json"


class Qwen3VLFormat(_JsonBoxes):
    """Qwen3-VL / Qwen3.5: the same JSON objects, on a relative [0,1000] grid whatever the image size or resize.

    Qwen3-VL answers grounding requests with a JSON list, usually in a fenced ``json`` block, and writes prose
    around it when asked to describe; the prose is part of what the answer *says*, so :meth:`plain_text` keeps
    it (with the labels it does not already name).
    """

    name = "qwen3_vl"

    def frame_size(self, width: int, height: int) -> tuple[float, float]:
        return (1000.0, 1000.0)

    def plain_text(self, text: str, width: int, height: int, parse: ParseResult | None = None) -> str:
        """The prose around the JSON, then the labels it does not already name."""
        parse = parse if parse is not None else self.parse(text, width, height)
        out = self.rewrite(text, parse, {i: None for i in range(len(parse.phrases))}, width, height)
        cut = _truncated_object_start(out)
        out = out[:cut] if cut is not None else out
        prose = re.sub(r"\s+", " ", self.stray_re.sub("", _EMPTY_JSON_RE.sub(" ", out))).strip()
        named = prose.lower()
        labels = list(dict.fromkeys(p.label for p in parse.phrases if p.label and p.label.lower() not in named))
        return " ".join(x for x in (prose, ", ".join(labels)) if x)


#: InternVL's grounding tags and any ``<|...|>`` chat token.
_INTERNVL_STRAY_RE = re.compile(r"<\|[a-z_]+\|>|</?(?:ref|box|quad)>")


class InternVLFormat(_TokenFormat):
    """InternVL 2 / 2.5 / 3: ``<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>`` on a relative [0,1000] grid.

    One ``<box>`` may hold several boxes of the same reference (``[[...], [...]]``); each becomes a phrase sharing
    the reference's span, and a rewrite writes the kept ones back into one ``<box>``.
    """

    name = "internvl"
    ref_start, ref_end, box_start, box_end = "<ref>", "</ref>", "<box>", "</box>"
    stray_re = _INTERNVL_STRAY_RE
    max_box_body = 64 * 32  # up to 64 boxes of "[999, 999, 999, 999], "

    def frame_size(self, width: int, height: int) -> tuple[float, float]:
        return (1000.0, 1000.0)

    def _box_values(self, body: str) -> list[tuple[float, float, float, float]] | None:
        return _bracket_boxes(body)

    def render_box(self, box: Box, width: int, height: int) -> str:
        return self.render_boxes([box], width, height)

    def render_boxes(self, boxes: list[Box], width: int, height: int) -> str:
        lists = ", ".join("[{}, {}, {}, {}]".format(*self.to_frame(b, width, height)) for b in boxes)
        return f"{self.box_start}[{lists}]{self.box_end}"


class GLM4VFormat(_TokenFormat):
    """GLM-4.1V / 4.5V: ``<|begin_of_box|>[[x1, y1, x2, y2]]<|end_of_box|>`` after the words it grounds, on a
    relative [0,1000] grid (x = round(x_px / W * 1000)); several boxes may share one marker pair.

    The family has no reference markers: every box is a bare box (label ``""``; the scorer reads it as the words right
    before it, :func:`spr_plugin.scoring.mentions.reading_labels`), and :meth:`render` writes the words before the box
    as GLM does. GLM also uses the same
    markers around a final answer that is not a box (``<|begin_of_box|>B. Yes.<|end_of_box|>``): in a grounded
    description such a body is counted as garbage, like any body that is not coordinates.
    """

    name = "glm4v"
    ref_start, ref_end, box_start, box_end = "", "", "<|begin_of_box|>", "<|end_of_box|>"
    max_box_body = 64 * 32

    def frame_size(self, width: int, height: int) -> tuple[float, float]:
        return (1000.0, 1000.0)

    def _box_values(self, body: str) -> list[tuple[float, float, float, float]] | None:
        return _bracket_boxes(body)

    def render(self, label: str, box: Box, width: int, height: int) -> str:
        return f"{label} {self.render_box(box, width, height)}" if label else self.render_box(box, width, height)

    def render_box(self, box: Box, width: int, height: int) -> str:
        return self.render_boxes([box], width, height)

    def render_boxes(self, boxes: list[Box], width: int, height: int) -> str:
        lists = ", ".join("[{}, {}, {}, {}]".format(*self.to_frame(b, width, height)) for b in boxes)
        return f"{self.box_start}[{lists}]{self.box_end}"

    def _unit(self, label: str, boxes: list[Box], width: int, height: int) -> str:
        return self.render_boxes(boxes, width, height)  # a bare box keeps no label of its own
