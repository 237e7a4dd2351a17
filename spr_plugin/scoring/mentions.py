"""Object mentions in a description's words, judged by the annotations, and the box debris it carries.

Why: a chosen answer is what DPO teaches. Boxes are only part of it: "a red circle [box], a purple square and
a green triangle" teaches the model to name a purple square and a green triangle whatever the image holds. So
every object a text *names*, inside a reference tag or in plain words, is found and judged:

* **Vocabulary.** A plain-word mention is an occurrence of a name of the dataset's own vocabulary (category
  names, LVIS synonyms, each part of an Objects365 ``a/b`` name), compared after
  :func:`~spr_plugin.scoring.labels.normalize_label` (case, ``_``, qualifiers, simple plurals). The longest
  name wins ("baseball bat" before "bat"); a name directly followed by another name modifies it ("orange
  cat" names a cat, not an orange); a few words that describe places in a picture (``top``, ``left``,
  ``side``, ``picture``...) never count as plain mentions because descriptions use them for positions. A
  reference tag's label is a mention whatever its words.
* **Judgement** (:meth:`RegionJudge.status`), in order: ``region`` (names an object of the query region),
  ``ignored`` (names an ignored object in it: a crowd, an Objects365 virtual object), ``absent`` (a category LVIS
  verified absent), ``image`` (a category annotated elsewhere in the image, or one LVIS did not label
  exhaustively), ``absent`` (any other category of the vocabulary, when the region records what the image holds:
  the annotations say it is not there), ``unjudged`` (a name the vocabulary does not know, or an image whose
  content was not recorded: the annotations cannot tell).

The format only matters through its parse: tagged units are the phrases' spans, plain text is what lies
between them, so the same finder serves every box format. :func:`describe` is the one public measurement
of an emitted string; the pair statistics, the card, ``spr show`` and the tests all call it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from spr_plugin.core.records import ParseResult, Region
from spr_plugin.scoring.labels import _singular, names_agree, normalize_label

REGION, IGNORED, IMAGE, ABSENT, UNJUDGED = "region", "ignored", "image", "absent", "unjudged"
STATUSES = (REGION, IGNORED, IMAGE, ABSENT, UNJUDGED)

#: Words a description uses for places in the picture; as one-word plain mentions they are never counted
#: (LVIS has ``top_(clothing)``, "on the top left" is not about a top).
NOT_PLAIN_MENTIONS = frozenset(
    "top bottom left right side front back center centre middle corner edge part area background foreground "
    "image picture photo photograph region scene view frame label".split()
)

_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_JOIN_RE = re.compile(r"[ \t]*[-/]?[ \t]*")  # what may stand between the words of one name ("Cabinet/shelf": one)
_JSON_KEY_RE = re.compile(r'"\s*:')
_STOP = frozenset("a an the some this these those its his her their".split())


def _word_form(word: str, known: frozenset[str] = frozenset()) -> str:
    """The word as names are normalised (lower case, no possessive, simple plural folded); for ``-ves`` plurals
    ("shelves", "knives") the ``-f``/``-fe`` form when the vocabulary has it."""
    word = word.lower()
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ves"):
        for form in (word[:-3] + "f", word[:-3] + "fe"):
            if form in known:
                return form
    return _singular(word)


def normalised_names(raw: Iterable[str]) -> tuple[str, ...]:
    """Names normalised like labels (``a/b`` gives both parts), without empties or repeats."""
    out: list[str] = []
    for name in raw:
        parts = [name, *name.split("/")] if "/" in name else [name]
        out += [normalize_label(p) for p in parts]
    return tuple(n for n in dict.fromkeys(out) if n)


@dataclass(frozen=True)
class Vocabulary:
    """The names a dataset knows, as normalised word tuples."""

    names: frozenset[tuple[str, ...]] = frozenset()

    @classmethod
    def of(cls, raw_names: Iterable[str]) -> Vocabulary:
        return cls(frozenset(tuple(n.split()) for n in normalised_names(raw_names)))

    @classmethod
    def of_regions(cls, regions: Iterable[Region]) -> Vocabulary:
        """Every name the regions record: their objects, ignored objects, image categories and LVIS lists."""
        raw: list[str] = []
        for r in regions:
            raw += region_names(r)
        return cls.of(raw)

    def union(self, other: Vocabulary) -> Vocabulary:
        return Vocabulary(self.names | other.names)

    def to_list(self) -> list[str]:
        """The names, sorted, as strings (what a pairs record keeps: :meth:`of` reads them back to the same vocabulary)."""
        return sorted(" ".join(n) for n in self.names)

    @cached_property
    def max_len(self) -> int:
        return max((len(n) for n in self.names), default=0)

    def knows(self, name: str) -> bool:
        return tuple(name.split()) in self.names

    @cached_property
    def words(self) -> frozenset[str]:
        return frozenset(w for n in self.names for w in n)


def region_names(region: Region) -> list[str]:
    """The raw names a region carries (objects with synonyms, ignored objects, image categories, LVIS lists)."""
    out: list[str] = []
    for o in (*region.objects, *region.ignored):
        out += [o.category, *o.synonyms]
    return [*out, *region.in_image, *region.not_exhaustive, *region.absent]


@dataclass(frozen=True)
class RegionJudge:
    """What one region's annotations say about a named category (see the module doc for the order)."""

    objects: tuple[tuple[str, ...], ...]
    ignored: tuple[tuple[str, ...], ...]
    image: tuple[str, ...]
    absent: tuple[str, ...]
    image_known: bool
    vocabulary: Vocabulary

    @classmethod
    def of(cls, region: Region, vocabulary: Vocabulary | None = None) -> RegionJudge:
        from spr_plugin.scoring.labels import category_names

        vocab = Vocabulary.of(region_names(region)).union(vocabulary or Vocabulary())
        return cls(
            objects=tuple(category_names(o) for o in region.objects),
            ignored=tuple(category_names(o) for o in region.ignored),
            image=normalised_names([*region.in_image, *region.not_exhaustive]),
            absent=normalised_names(region.absent),
            image_known=bool(region.in_image),
            vocabulary=vocab,
        )

    def status(self, name: str) -> str:
        """The status of a normalised name (a vocabulary name or a reference label)."""
        if not name:
            return UNJUDGED
        if any(names_agree(name, o) for o in self.objects):
            return REGION
        if any(names_agree(name, o) for o in self.ignored):
            return IGNORED
        if self.absent and names_agree(name, self.absent):
            return ABSENT
        if self.image and names_agree(name, self.image):
            return IMAGE
        if self.image_known:
            if self.vocabulary.knows(name):
                return ABSENT
            # A label such as "the small purple triangle": the vocabulary names inside its head decide.
            inner = {_status_inner(self, n) for n in _names_in_words(name.split(), self.vocabulary)}
            if inner == {ABSENT}:
                return ABSENT
        return UNJUDGED

    def objects_named(self, name: str) -> list[int]:
        return [g for g, o in enumerate(self.objects) if names_agree(name, o)]


def _status_inner(judge: RegionJudge, name: str) -> str:
    return ABSENT if judge.vocabulary.knows(name) and judge.status(name) == ABSENT else "other"


def _names_in_words(words: Sequence[str], vocab: Vocabulary) -> list[str]:
    out, i = [], 0
    while i < len(words):
        for n in range(min(vocab.max_len, len(words) - i), 0, -1):
            if tuple(words[i : i + n]) in vocab.names:
                out.append(" ".join(words[i : i + n]))
                i += n
                break
        else:
            i += 1
    return out


@dataclass(frozen=True)
class Mention:
    """A named object: ``span`` is its words in the text (a tagged mention's whole unit), ``name`` normalised."""

    name: str
    span: tuple[int, int]
    status: str
    tagged: bool
    #: Index of the unit's first phrase in the parse (tagged mentions, and plain words a bare box grounds).
    phrase: int | None = None
    #: A mention that carries a usable box (a tagged one's own, or the bare box right after plain words).
    boxed: bool = False


def unit_spans(parse: ParseResult) -> list[tuple[int, int]]:
    """The spans of the parse's units (one per reference, shared by its boxes), in text order."""
    return sorted({p.span for p in parse.phrases})


def gaps(text: str, parse: ParseResult) -> list[tuple[int, int]]:
    """The stretches of ``text`` outside every parsed unit: its plain words (and, in JSON answers, the syntax)."""
    out, cursor = [], 0
    for start, end in unit_spans(parse):
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < len(text):
        out.append((cursor, len(text)))
    return out


def plain_mentions(text: str, start: int, end: int, vocab: Vocabulary) -> list[tuple[str, tuple[int, int]]]:
    """``(normalised name, span)`` of every vocabulary name in ``text[start:end]`` (module doc for the rules)."""
    if not vocab.names:
        return []
    known = vocab.words
    words = [(m.start(), m.end(), _word_form(m.group(), known)) for m in _WORD_RE.finditer(text, start, end)]
    joined = [_JOIN_RE.fullmatch(text, words[k][1], words[k + 1][0]) is not None for k in range(len(words) - 1)]

    def match_at(i: int) -> int:
        for n in range(min(vocab.max_len, len(words) - i), 0, -1):
            if all(joined[i : i + n - 1]) and tuple(w for _, _, w in words[i : i + n]) in vocab.names:
                return n
        return 0

    out, i = [], 0
    while i < len(words):
        n = match_at(i)
        if not n or (n == 1 and words[i][2] in NOT_PLAIN_MENTIONS) or _JSON_KEY_RE.match(text, words[i + n - 1][1]):
            i += 1
            continue
        if i + n < len(words) and joined[i + n - 1] and match_at(i + n):
            i += n  # a modifier: "orange cat" names the cat
            continue
        out.append((" ".join(w for _, _, w in words[i : i + n]), (words[i][0], words[i + n - 1][1])))
        i += n
    return out


def bare_units(text: str, parse: ParseResult) -> dict[int, int]:
    """Bare units (boxes without a reference label) by where the words they ground end: the end of the text before
    the unit with white space stripped -> index of the unit's first phrase.

    Why: a box written right after plain words grounds them. GLM-4.xV writes every box so ("a red circle
    <|begin_of_box|>...<|end_of_box|>"), and Qwen or InternVL models write bare boxes after words too. What the box is
    of is what those words say: "a dog [box]" boxes a dog, "a blue square [the red circle's box]" binds a blue square
    to the red circle."""
    out: dict[int, int] = {}
    for i, p in enumerate(parse.phrases):
        if not p.label and not p.malformed:
            end = p.span[0]
            while end > 0 and text[end - 1].isspace():  # no copy of the text before it: linear in hostile texts
                end -= 1
            out.setdefault(end, i)
    return out


def find_mentions(text: str, parse: ParseResult, judge: RegionJudge) -> list[Mention]:
    """Every object ``text`` names, tagged (one per labelled unit) or in plain words, in text order. Plain words
    right before a bare unit are grounded by its boxes (:func:`bare_units`): ``phrase`` points at the unit."""
    out: list[Mention] = []
    boxed: dict[tuple[int, int], bool] = {}
    for p in parse.phrases:
        boxed[p.span] = boxed.get(p.span, False) or p.box is not None
    bare = bare_units(text, parse)
    seen: set[tuple[int, int]] = set()
    statuses: dict[str, str] = {}
    for i, p in enumerate(parse.phrases):
        if p.span in seen or not p.label:
            continue
        seen.add(p.span)
        name = normalize_label(p.label)
        if name not in statuses:
            statuses[name] = judge.status(name)
        out.append(Mention(name, p.span, statuses[name], True, i, boxed[p.span]))
    for start, end in gaps(text, parse):
        for name, span in plain_mentions(text, start, end, judge.vocabulary):
            if name not in statuses:
                statuses[name] = judge.status(name)
            unit = bare.get(span[1])
            grounded = unit is not None and boxed[parse.phrases[unit].span]
            out.append(Mention(name, span, statuses[name], False, unit, grounded))
    return sorted(out, key=lambda m: m.span)


def reading_labels(parse: ParseResult, mentions: Sequence[Mention]) -> list[str]:
    """Each phrase's label as the text reads it: its reference label, or for a bare box the name of the plain words it
    grounds (:func:`bare_units`; ``""`` when no name of the vocabulary stands right before it). Label matching uses
    these, so a bare box binds to an object only if those words name it."""
    bound = {parse.phrases[m.phrase].span: m.name for m in mentions if not m.tagged and m.phrase is not None}
    return [p.label or bound.get(p.span, "") for p in parse.phrases]


#: Debris between units: stray markers, coordinate or number runs (two or more numbers joined by commas or
#: brackets, with every bracket around them: ``[[1, 2, 3, 4]]`` leaves no ``[ ]``), brackets holding nothing but
#: commas (what a removed list leaves), and a JSON object or key cut off before its end. Possessive quantifiers
#: keep it linear.
_DEBRIS_RE = re.compile(
    r"<\|[a-z_]+\|>"
    r"|(?:,\s*+)?(?<![\w.])(?:[(\[]\s*+)*+-?\d++(?:\.\d++)?(?:\s*+[,)\]]\s*+[(\[]?\s*+-?\d++(?:\.\d++)?)++(?:\s*+[)\]])*+"
    r"|\[(?:[\s,]|\[[\s,]*+\])*+\]"
    r'|\[?\s*+\{\s*+"[A-Za-z_0-9]++"\s*+:[^{}]*+$'
    r'|"(?:bbox_2d|point_2d|bbox|label)"\s*+:?'
)
#: Number debris no prose writes, whatever stands around it: half a coordinate pair (``8,)``, ``green9,425)``), brackets
#: of nothing but a comma and numbers (``(,27)``, ``()``), a pair separator (``),(``), digits glued to a word
#: (``green6225``: four or more, so ``A380`` stays), runs of seven digits or more (coordinates run together) and a
#: pair cut off where the text (or the gap before a unit) ends (``(582``).
_NOT_PROSE_RE = re.compile(
    r"(?<=[^\W\d_])\d{4,}+|\d{7,}+|\d++\s*+,\s*+\d*+\s*+\)|,\s*+\d++\s*+\)|\(\s*+(?:\d++\s*+)?,[\d\s,]*+\)|\(\s*+\)"
    r"|\)\s*+,\s*+\(|\(\s*+\d++(?:\s*+,\s*+\d*+)?\s*+$"
)
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CHUNK_RE = re.compile(r"[-\d.,]*\d[-\d.,]*")


def _is_debris(piece: str) -> bool:
    """Whether a matched number run is debris rather than prose ("In 2019, 1,000 people" is prose).

    Brackets make coordinates; otherwise a run counts its numbers (a chunk written like ``1,000`` is one), and it
    is debris from three numbers on, or from two written without a space (``12,40``)."""
    if any(c in piece for c in "()[]") or "<|" in piece:
        return True
    numbers = 0
    for chunk in _CHUNK_RE.findall(piece):
        chunk = chunk.strip(",")
        numbers += 1 if _THOUSANDS_RE.fullmatch(chunk) else len([c for c in chunk.split(",") if c])
    return numbers >= 3 or (numbers == 2 and not any(c.isspace() for c in piece.strip(", ")))


def find_debris(text: str, parse: ParseResult, stray: re.Pattern[str] | None = None) -> list[tuple[int, int]]:
    """Spans of box debris: malformed units (cut off, garbage, out of range) and debris in the plain text.

    ``stray`` is the box format's pattern of marker tokens (:attr:`~spr_plugin.families.box_formats.BoxFormat.stray_re`):
    a family whose markers are not ``<|...|>`` tokens (InternVL's ``</ref>``, ``<box>``) has them counted too
    when they stand outside a unit."""
    bad: dict[tuple[int, int], bool] = {}
    for p in parse.phrases:
        bad[p.span] = bad.get(p.span, False) or p.malformed
    out = [s for s, b in bad.items() if b]
    for start, end in gaps(text, parse):
        found = {(m.start(), m.end()) for m in stray.finditer(text, start, end)} if stray is not None else set()
        for m in _DEBRIS_RE.finditer(text, start, end):
            if not m.group()[:1].isdigit() and m.group()[:1] not in ",-" or _is_debris(m.group()):
                found.add((m.start(), m.end()))
        found.update((m.start(), m.end()) for m in _NOT_PROSE_RE.finditer(text, start, end))
        out += _outermost(found)
    return sorted(out)


def _outermost(spans: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` without those lying inside another one (a marker counted by both patterns counts once); spans that
    overlap (``8,819),(785``: a half pair and a separator) become one piece, so removing them never cuts twice."""
    out: list[tuple[int, int]] = []
    for s in sorted(spans, key=lambda x: (x[0], -x[1])):
        if out and s[0] < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], s[1]))
            continue
        out.append(s)
    return out


@dataclass(frozen=True)
class TextFacts:
    """What one emitted string says, measured with the parser and the mention finder the checks use."""

    boxes: int
    debris: int
    mentions: tuple[Mention, ...] = field(default=())
    dropped: tuple[tuple[str, int], ...] = ()

    def count(self, status: str) -> int:
        return sum(1 for m in self.mentions if m.status == status)

    @property
    def hallucinated(self) -> int:
        """Mentions of categories the annotations say are not in the image."""
        return self.count(ABSENT)

    @property
    def ungrounded(self) -> int:
        """Mentions of the region's objects (tagged or plain) without a box, whose name no box of the text grounds."""
        boxed = {m.name for m in self.mentions if m.boxed}
        grounded: dict[str, bool] = {}
        count = 0
        for m in self.mentions:
            if m.status != REGION or m.boxed:
                continue
            if m.name not in grounded:
                grounded[m.name] = any(names_agree(m.name, (b,)) or names_agree(b, (m.name,)) for b in boxed)
            count += not grounded[m.name]
        return count

    @property
    def hallucination_rate(self) -> float:
        """Share of the judged mentions that name absent categories (CHAIR_i, Rohrbach et al. 2018); 0 without any."""
        judged = [m for m in self.mentions if m.status != UNJUDGED]
        return sum(m.status == ABSENT for m in judged) / len(judged) if judged else 0.0

    def to_dict(self) -> dict[str, int | float]:
        return {
            "boxes": self.boxes,
            "debris": self.debris,
            "hallucinated": self.hallucinated,
            "ungrounded": self.ungrounded,
            **{f"mentions_{s}": self.count(s) for s in STATUSES},
        }


def describe(
    text: str, region: Region, box_format, vocabulary: Vocabulary | None = None, parse: ParseResult | None = None
) -> TextFacts:
    """Parse ``text`` in ``box_format`` and measure it: boxes, debris, and every mention with its status."""
    parse = parse if parse is not None else box_format.parse(text, region.width, region.height)
    return measure(text, parse, RegionJudge.of(region, vocabulary), box_format.stray_re)


def measure(text: str, parse: ParseResult, judge: RegionJudge, stray: re.Pattern[str] | None = None) -> TextFacts:
    """:func:`describe` for a text already parsed and a judge already built (``stray``: the format's markers)."""
    return TextFacts(
        boxes=len(parse.boxes),
        debris=len(find_debris(text, parse, stray)),
        mentions=tuple(find_mentions(text, parse, judge)),
        dropped=tuple(sorted(parse.dropped.items())),
    )
