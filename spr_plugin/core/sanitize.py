"""One sanitiser for every text that crosses into prompts or training data.

Category names, referring expressions, candidate descriptions and server replies come from other people's
files and from sampled model output. A special token in any of them changes what the model or LLaMA-Factory
sees: ``<image>`` in an answer breaks LLaMA-Factory's placeholder count, ``<|image_pad|>`` crashes the
Qwen2-VL processor, ``<|im_end|><|im_start|>user`` opens a new chat turn inside a rejected answer, and a
box token inside a category name plants a box marker in a prompt. So every such text passes through
:func:`sanitize` at the boundary where it enters, and the number of removed tokens is counted in the summary.

What is removed, to a fixed point (``<im<image>age>`` leaves nothing, not ``<image>``):

* every ``<|...|>`` token (Qwen's chat, vision and grounding tokens, Llama 3's, Phi's, ...);
* media placeholders (``<image>``, ``<video>``, ``<audio>``, Qwen-VL's and InternVL's ``<img>``/``</img>``,
  InternVL's ``<IMG_CONTEXT>``) and other
  chat-template markers (``<s>``, ``</s>``, ``<start_of_turn>``, ``[INST]``, ``<<SYS>>``, Qwen-VL's
  ``<ref>``/``<box>``/``<quad>`` tags, ...), case-insensitively.

``keep`` names tokens that stay where they occur: a candidate written in a Qwen token box format keeps the
format's own grounding tokens (they are the answer), everything else goes. Texts that are one phrase
(names, expressions) also lose control characters and have their white space collapsed.

The removal is a single left-to-right pass with a stack (a token can only be completed by its closing
``>`` or ``]``, and tokens hold no ``<``/``>``/``[``/``]`` inside), so it is linear in the text length
whatever the nesting; removing tokens repeatedly with ``str.replace`` would be quadratic on
``<<<<image>image>image>...``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from spr_plugin.core.serialize import field_dict

#: Tokens that end an answer: whatever a model wrote after one is not part of its answer.
END_OF_TURN_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")

_NAMED_TAGS = (
    "image|video|audio|img|/img|ref|/ref|box|/box|quad|/quad|s|/s|unk|pad|bos|eos|mask|cls|sep"
    "|start_of_turn|end_of_turn|start_of_image|end_of_image|image_soft_token|think|/think|img_context|answer|/answer"
)
#: One token, anchored at its start; none holds ``<``, ``>``, ``[`` or ``]`` inside.
_TOKEN_RE = re.compile(
    r"<\|[^<>\[\]|\s]{1,64}\|>"  # <|im_start|>, <|image_pad|>, <|eot_id|>, ...
    rf"|</?(?:{_NAMED_TAGS})>"  # <image>, </s>, <img>, <start_of_turn>, ...
    r"|<</?SYS>>"  # Llama 2 system block
    r"|\[/?(?:INST|IMG|AVAILABLE_TOOLS|TOOL_CALLS|SYSTEM_PROMPT)\]",  # Mistral / Llama 2 markers
    re.IGNORECASE,
)
_MAX_TOKEN_LEN = 72  # longest text _TOKEN_RE can match: <| + 64 + |>, with room to spare
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


def remove_tokens(text: str, keep: Iterable[str] = ()) -> tuple[str, int]:
    """``text`` with every special token not in ``keep`` removed to a fixed point, and how many were removed.

    Works like a stack over the output: the next token to complete is either one that spans the junction
    between what was already written and the rest of the text (it formed because a token in between was
    removed, as in ``<im<image>age>``) or the next token of the rest, found by a regex search. Tokens hold
    no ``<``/``[`` inside, so a spanning token starts at the last opener of the output's tail, and the
    output never holds a removable token. Linear in the text length, however deep the nesting.
    """
    if "<" not in text and "[" not in text:
        return text, 0
    kept = frozenset(keep)
    buf: list[str] = []  # output characters (a list, so dropping a token's tail is O(token length))
    removed = 0
    pos = 0
    search, match = _TOKEN_RE.search, _TOKEN_RE.match
    while True:
        tail = "".join(buf[-_MAX_TOKEN_LEN:])
        opener = max(tail.rfind("<"), tail.rfind("["))
        spanning = None
        if opener >= 0:
            window = tail + text[pos : pos + _MAX_TOKEN_LEN]
            for start in (opener, opener - 1):  # opener - 1: the first "<" of "<<SYS>>"
                m = match(window, start) if start >= 0 else None
                if m is not None and m.end() > len(tail):
                    spanning = m
                    break
        if spanning is not None:
            consumed = spanning.end() - len(tail)
            if spanning.group() in kept:
                buf.extend(text[pos : pos + consumed])
            else:
                del buf[len(buf) - (len(tail) - spanning.start()) :]
                removed += 1
            pos += consumed
            continue
        m = search(text, pos)
        if m is None:
            break
        buf.extend(text[pos : m.start()])
        if m.group() in kept:
            buf.extend(m.group())
        else:
            removed += 1
        pos = m.end()
    buf.extend(text[pos:])
    return "".join(buf), removed


def cut_at_end_of_turn(text: str) -> str:
    """The text before the first end-of-turn token: anything after it is a new turn, not the answer."""
    cut = len(text)
    for tok in END_OF_TURN_TOKENS:
        i = text.find(tok)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


def sanitize_phrase(text: str, max_len: int = 200) -> tuple[str, int]:
    """A one-line phrase (a category name, a referring expression) safe for prompts and reference texts.

    Tokens and control characters are removed, underscores kept (see :func:`readable_name` for names),
    white space collapsed, and the result cut to ``max_len`` characters. Returns the text and the number
    of removed tokens.
    """
    text = unicodedata.normalize("NFC", str(text))
    text = _CONTROL_RE.sub(" ", text)
    text, removed = remove_tokens(text)
    text = " ".join(text.split())
    if len(text) > max_len:
        text = text[:max_len].rstrip()
    return text, removed


_THINK_END_RE = re.compile(r"</think>", re.IGNORECASE)
_THINK_START_RE = re.compile(r"<think>", re.IGNORECASE)


def drop_reasoning(text: str) -> str:
    """The answer of a reasoning model's reply: what follows its last ``</think>``; nothing if the reply opened a
    ``<think>`` block that never closed (generation stopped inside the reasoning). Why: thinking checkpoints
    (Qwen3-VL-Thinking, GLM-4.1V-Thinking) write their reasoning first; as part of a description it would be scored
    and taught as if the model had said it, and LLaMA-Factory's reasoning templates write the think block themselves."""
    ends = list(_THINK_END_RE.finditer(text))
    if ends:
        return text[ends[-1].end() :]
    return "" if _THINK_START_RE.search(text) else text


def sanitize_answer(text: str, keep: Iterable[str] = ()) -> tuple[str, int]:
    """A model answer (candidate or server reply): cut at the first end-of-turn token, a reasoning model's think
    block dropped (:func:`drop_reasoning`), then every special token except ``keep`` removed to a fixed point
    (``<answer>`` tags too). Returns the text and how many tokens were removed."""
    text = str(text).replace("\x00", "")
    cut = drop_reasoning(cut_at_end_of_turn(text))
    removed = int(len(cut) != len(text))
    cut, n = remove_tokens(cut, keep)
    return cut.strip(), removed + n


_QUALIFIER_RE = re.compile(r"\s*\(([^()]*)\)\s*$")


def readable_name(raw: str) -> str:
    """A category name as a person writes it: ``aerosol_can`` -> ``aerosol can``,
    ``bat_(animal)`` -> ``bat (animal)``; anything else (``Cabinet/shelf``, ``traffic light``) unchanged
    apart from white space. The parenthesised qualifier stays: it is what tells the model which bat."""
    return " ".join(str(raw).replace("_", " ").split())


@dataclass
class SanitizeStats:
    """How many tokens the sanitiser removed, per kind of text; reported in every stage's summary."""

    removed: Counter = field(default_factory=Counter)
    texts_changed: Counter = field(default_factory=Counter)

    def add(self, kind: str, removed: int) -> None:
        if removed:
            self.removed[kind] += removed
            self.texts_changed[kind] += 1

    def to_dict(self) -> dict[str, dict[str, int]]:
        return field_dict(self, keys={"removed": "tokens_removed"})
