"""What one candidate may weigh before it is scored: a cap on its length and on its grounded phrases.

Scoring costs grow with a text's phrases (each is embedded, label-matched and assigned), so one hostile or
broken candidate (2.4 MB, 20,000 phrases) used to hold a run for minutes, and a 5 MB text from a candidates
file became the rejected answer of a training pair. Every candidate, generated or read from a file, passes
:func:`over_limit` at the scorer's edge (:func:`spr_plugin.scoring.stage.score_refine_pair`); one that does
not is left out and counted by reason in the summary (``candidates_over_limit``), never scored, never paired.

The caps sit far above real answers: a region holds a few to a few dozen objects, and Qwen-VL's answers are
bounded by ``max_new_tokens`` (a 1024-token answer is about 4,000 characters; 128 phrases in the most verbose
box syntax are about 12,000).
"""

from __future__ import annotations

from spr_plugin.families.box_formats import BoxFormat

#: Longest candidate text scored, in characters (checked before parsing: costs nothing).
MAX_CANDIDATE_CHARS = 20_000
#: Most grounded phrases (boxed or tagged) in one candidate.
MAX_CANDIDATE_PHRASES = 128


def over_limit(text: str, box_format: BoxFormat, width: int, height: int) -> str | None:
    """``None`` for a candidate within the caps, else the reason it is left out (``too_long``, ``too_many_phrases``).

    The length is checked first, so a huge text is never parsed; within it a parse takes milliseconds.
    """
    if len(text) > MAX_CANDIDATE_CHARS:
        return "too_long"
    if len(box_format.parse(text, width, height).phrases) > MAX_CANDIDATE_PHRASES:
        return "too_many_phrases"
    return None
