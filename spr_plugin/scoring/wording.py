"""Edits of a chosen text's plain words: take out a hallucinated mention so the text still reads, ground a
plain mention, strip box debris. Pure functions of strings and spans; refinement decides what to edit.

How much goes with a hallucinated mention (``removal_span``): the text is cut into sentences (``. ! ? ;`` and
line breaks) and a sentence into items (commas, ``and``, ``or``), never inside a grounded unit.

* A sentence that names nothing but absent objects goes whole ("The region shows a purple square and a
  green star." says nothing true).
* An item that keeps nothing else (no other unit, no mention of something present) goes whole, with one
  separator: "a red circle [box], a purple square and a dog" -> "a red circle [box] and a dog". A sentence
  that is only that item goes whole.
* An item that also holds kept content loses only the mention and the words that tie it to the rest: from
  the first relation word after the kept content ("sitting on a big purple square", "next to a purple square")
  or, when the mention comes first, up to the article of what follows ("a purple square next to a red circle
  [box]" -> "a red circle [box]").
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from spr_plugin.scoring.labels import _HEAD_CUT

Span = tuple[int, int]

_SENTENCE_END_RE = re.compile(r"[.!?;\n]")
_SEPARATOR_RE = re.compile(r",\s*(?:(?:and|or)\b\s*)?|\s+(?:and|or)\s+")
#: Words that relate a mention to what comes before it; removal starts at the first of them.
_RELATION_WORDS = _HEAD_CUT | frozenset(
    "next close beside besides between behind near nearby alongside along against around toward towards "
    "left right top bottom front back inside outside atop".split()
)
_WORD_RE = re.compile(r"[A-Za-z]+")
_ARTICLE_RUN_RE = re.compile(r"(?:\b(?:a|an|the|some|two|three|four|five|several|another)\s+)+$", re.IGNORECASE)


class Layout:
    """Sentence ends, item separators and spans of one text, found once, so removing many mentions stays
    ``O(n log n)`` (a hostile text with thousands of hallucinated names must not take quadratic time)."""

    def __init__(self, text: str, protected: Sequence[Span], kept: Sequence[Span]) -> None:
        self.text = text
        self.protected = sorted(protected)
        self._pstarts = [a for a, _ in self.protected]
        self.ends = [m.start() for m in _SENTENCE_END_RE.finditer(text) if not self._inside(m.start())]
        self.seps = [(m.start(), m.end()) for m in _SEPARATOR_RE.finditer(text) if not self._inside(m.start())]
        self._sep_starts = [a for a, _ in self.seps]
        self.kept = sorted(kept)
        self._kept_starts = [a for a, _ in self.kept]

    def _inside(self, pos: int) -> bool:
        i = bisect.bisect_right(self._pstarts, pos) - 1
        return i >= 0 and self.protected[i][0] <= pos < self.protected[i][1]

    def kept_between(self, lo: int, hi: int, mention: Span) -> list[Span]:
        """Kept spans overlapping ``[lo, hi)``, other than one holding ``mention`` (spans do not nest here)."""
        s, e = mention
        i = max(0, bisect.bisect_left(self._kept_starts, lo) - 1)
        out = []
        while i < len(self.kept) and self.kept[i][0] < hi:
            k = self.kept[i]
            if k[1] > lo and not (k[0] <= s and k[1] >= e):
                out.append(k)
            i += 1
        return out


def removal_span(layout: Layout, mention: Span) -> tuple[Span, bool]:
    """The span to remove for ``mention`` (module doc) and whether the next word must be capitalised."""
    text = layout.text
    s, e = mention
    i = bisect.bisect_left(layout.ends, s)
    start = layout.ends[i - 1] + 1 if i > 0 else 0
    while start < s and text[start].isspace():
        start += 1
    j = bisect.bisect_left(layout.ends, e)
    end = layout.ends[j] if j < len(layout.ends) else len(text)
    if not layout.kept_between(start, end, mention):  # every object the sentence names is absent: it says nothing true
        return (start, end + 1 if end < len(text) and text[end] in ".!?;" else end), False
    k = bisect.bisect_left(layout._sep_starts, s)
    prev = layout.seps[k - 1] if k > 0 and layout.seps[k - 1][0] >= start and layout.seps[k - 1][1] <= s else None
    k = bisect.bisect_left(layout._sep_starts, e)
    nxt = layout.seps[k] if k < len(layout.seps) and layout.seps[k][0] < end else None
    item = (prev[1] if prev else start, nxt[0] if nxt else end)
    inside = layout.kept_between(item[0], item[1], mention)
    if not inside:
        if prev is not None:
            return (prev[0], item[1]), False
        if nxt is not None:
            return (start, nxt[1]), True
        stop = end + 1 if end < len(text) and text[end] in ".!?;" else end
        return (start, stop), False
    before = [k for k in inside if k[1] <= s]
    if before:
        left = max(k[1] for k in before)
        for w in _WORD_RE.finditer(text, left, s):
            if w.group().lower() in _RELATION_WORDS:
                left = w.start()
                break
        else:
            article = _ARTICLE_RUN_RE.search(text, left, s)
            left = article.start() if article else s
        return (left, e), False
    right = min(k[0] for k in inside)
    article = _ARTICLE_RUN_RE.search(text, e, right)
    return (item[0], article.start() if article else right), item[0] == start


#: Words of a description's lead-in ("The region shows", "In this area there are"): a sentence left with only
#: these after its objects were removed says nothing and goes too.
_LEAD_IN = frozenset(
    "the a an this that these those region image picture photo area part scene view of in on at here there it "
    "shows show showing contains contain containing includes include including has have having features feature "
    "depicts depict is are we i you can see also and or with some several various".split()
)


def drop_empty_lead_ins(text: str, protected: Sequence[Span]) -> str:
    """``text`` without sentences made only of lead-in words (what removing their objects left behind)."""
    layout = Layout(text, protected, [])
    edits, start = [], 0
    for end in [*layout.ends, len(text)]:
        words = _WORD_RE.findall(text, start, end)
        has_unit = any(a < end and b > start for a, b in layout.protected)
        if words and not has_unit and all(w.lower() in _LEAD_IN for w in words):
            edits.append(((start, min(end + 1, len(text))), "", False))
        start = end + 1
    return apply_edits(text, edits) if edits else text


def apply_edits(text: str, edits: Sequence[tuple[Span, str, bool]]) -> str:
    """``text`` with each ``(span, replacement, capitalise_next)`` applied; spans inside an earlier removal are skipped."""
    merged: list[tuple[Span, str, bool]] = []
    for span, rep, cap in sorted(edits, key=lambda x: (x[0][0], -x[0][1])):
        if merged and span[0] < merged[-1][0][1]:
            (a, b), r0, c0 = merged[-1]
            if not r0 and not rep:  # two removals overlap: one removal of both
                merged[-1] = ((a, max(b, span[1])), "", c0 or cap)
            continue
        merged.append((span, rep, cap))
    out, cursor = [], 0
    capitalise = False
    for (a, b), rep, cap in merged:
        piece = text[cursor:a]
        out.append(_capitalised(piece) if capitalise else piece)
        out.append(rep)
        cursor = b
        capitalise = cap and not rep
    rest = text[cursor:]
    out.append(_capitalised(rest) if capitalise else rest)
    return tidy("".join(out))


def _capitalised(piece: str) -> str:
    m = re.search(r"\S", piece)
    if m is None or not piece[m.start()].islower():
        return piece
    return piece[: m.start()] + piece[m.start()].upper() + piece[m.start() + 1 :]


def tidy(text: str) -> str:
    """Collapse the spaces and punctuation that removals leave behind."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r" +([,.;:!?])", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    text = re.sub(r"[,;:]\s*([.!?])", r"\1", text)
    text = re.sub(r"\s+(?:and|or)([.!?])", r"\1", text)
    text = re.sub(r"([.!?])(?:\s*[.!?])+", r"\1", text)
    text = re.sub(r"^[\s,;:.]+", "", text)
    text = re.sub(r"[\s,;:]+$", "", text)
    return text.strip()
