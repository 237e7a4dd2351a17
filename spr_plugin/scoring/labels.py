"""Label agreement: does the phrase a box grounds name the annotated object the box overlaps?

Why: matching boxes by IoU alone lets a description write "blue triangle" with the red circle's exact
box and be rewarded for it; refinement would then *snap* that box and the chosen answer would teach the
model to bind "blue triangle" to the red circle. A predicted box may therefore match an annotated object
only when its phrase agrees with the object's category. A bare box takes the name of the words right before it
(:func:`spr_plugin.scoring.mentions.reading_labels`); after no such name it matches by IoU alone.

Agreement is decided in order, cheapest and surest first:

1. **Names**: the phrase equals the category or one of its synonyms after normalisation (lower case,
   ``_`` as space, LVIS qualifiers such as ``bat_(animal)`` dropped, simple plurals folded), or the
   phrase *contains* every word of a name ("the small red circle" names "red circle"; "a black dog"
   names "dog"), or the phrase is a shorter form of a name that keeps its head noun ("table" names
   "dining table"). Objects365-style names ``Cabinet/shelf`` count each part as a synonym.
2. **Similarity**: otherwise the cosine of the run's text model between the phrase and the category's
   names must reach ``threshold``. The default (0.8) is deliberately strict: with all-MiniLM-L6-v2,
   "red square" vs "red circle" is 0.72 and "blue circle" vs "red circle" 0.74 (wrong labels), while
   "couch" vs "sofa" is 0.86 and "car" vs "vehicle" 0.87. A missed synonym costs one snapped box; a
   wrong agreement teaches a wrong binding, which is what this module exists to prevent.

Everything here is a pure function of the strings, except that :class:`LabelMatcher` calls an embedding
function for the pairs the name rules leave open (one batched call per chunk of candidates).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.options import DEFAULT_LABEL_THRESHOLD
from spr_plugin.core.records import AnnotatedObject

#: Words that never decide what a phrase names.
_STOPWORDS = frozenset("a an the some this these those its his her their".split())
#: Words where a noun phrase's head part ends ("the car *on* the left", "a person *riding* a horse"):
#: only the words before them say what the phrase names.
_HEAD_CUT = frozenset(
    "on in at with near next beside behind under over above below by from to of for that which who "
    "holding riding wearing carrying sitting standing lying playing using eating".split()
)
_QUALIFIER_RE = re.compile(r"\([^()]*\)")
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

Embedder = Callable[[Sequence[str]], Mapping[str, np.ndarray]]


def _singular(word: str) -> str:
    """Fold simple English plurals so "circles" names "circle" (applied to both sides alike)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize_label(text: str) -> str:
    """Lower case, ``_`` as space, parenthesised qualifiers dropped, plurals folded, stopwords removed."""
    text = _QUALIFIER_RE.sub(" ", text.replace("_", " ").lower())
    return " ".join(_singular(w) for w in _WORD_RE.findall(text) if w not in _STOPWORDS)


def category_names(obj: AnnotatedObject) -> tuple[str, ...]:
    """The category and its synonyms (``Cabinet/shelf`` gives both parts), normalised, without repeats."""
    raw: list[str] = [obj.category, *obj.synonyms]
    for name in list(raw):
        if "/" in name:
            raw.extend(name.split("/"))
    return tuple(n for n in dict.fromkeys(normalize_label(r) for r in raw) if n)


def head_words(phrase: str) -> list[str]:
    """The words of a normalised phrase before its first preposition or participle (all, if it starts with one)."""
    words = phrase.split()
    for i, w in enumerate(words):
        if w in _HEAD_CUT and i > 0:
            return words[:i]
    return words


def names_agree(phrase: str, names: Iterable[str]) -> bool:
    """Rule 1 of the module doc, on normalised strings."""
    word_set = set(head_words(phrase))
    if not word_set:
        return False
    for name in names:
        name_words = name.split()
        if not name_words:
            continue
        if phrase == name or set(name_words) <= word_set:
            return True
        # A shorter form that keeps the head noun: "table" for "dining table", "circle" for "red circle".
        if word_set <= set(name_words) and name_words[-1] in word_set:
            return True
    return False


@dataclass(frozen=True)
class LabelMatcher:
    """Decides which annotated objects each phrase label may be matched to.

    ``embed`` maps texts to unit-norm vectors (e.g. :meth:`spr_plugin.scoring.semantic.TextSemanticScorer.embed`);
    without it only the name rules apply.
    """

    embed: Embedder | None = None
    threshold: float = DEFAULT_LABEL_THRESHOLD

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"label threshold must lie in [0, 1], got {self.threshold}")

    def agreement(self, items: Sequence[tuple[Sequence[AnnotatedObject], Sequence[str]]]) -> list[np.ndarray]:
        """For each ``(objects, labels)`` item a boolean matrix ``(len(objects), len(labels))``.

        An empty label (a bare box) agrees with every object. All similarity look-ups of the batch share
        one ``embed`` call over the unique strings.
        """
        names_per_item = [[category_names(o) for o in objects] for objects, _ in items]
        pending: list[tuple[int, int, int, str, tuple[str, ...]]] = []
        out: list[np.ndarray] = []
        for k, ((objects, labels), names) in enumerate(zip(items, names_per_item)):
            agree = np.zeros((len(objects), len(labels)), dtype=bool)
            for j, label in enumerate(labels):
                phrase = normalize_label(label)
                if not label.strip():
                    agree[:, j] = True
                    continue
                for g, obj_names in enumerate(names):
                    if names_agree(phrase, obj_names):
                        agree[g, j] = True
                    elif phrase and obj_names:
                        pending.append((k, g, j, phrase, obj_names))
            out.append(agree)
        if pending and self.embed is not None:
            vectors = self.embed([s for _, _, _, phrase, names in pending for s in (phrase, *names)])
            for k, g, j, phrase, names in pending:
                sim = max(float(np.dot(vectors[phrase], vectors[n])) for n in names)
                out[k][g, j] = sim >= self.threshold
        return out
