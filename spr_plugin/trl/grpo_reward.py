"""The SPR score as an online reward for reinforcement learning with verifiable rewards (TRL's GRPO).

Offline SPR turns scores into preference pairs; online, the same score rewards each sampled completion
directly. :class:`SPRReward` has TRL's reward-function signature, ``reward(prompts, completions,
**dataset_columns) -> list[float]``, and scores with the very :class:`~spr_plugin.scoring.scorer.CandidateScorer`
the pair builder uses (``S = λ·S_sem + (1-λ)·S_loc``, box parsing, matching and grounder included), so a
completion earns online exactly what it would score offline. The prompt dataset comes from
``spr export-grpo`` (:mod:`spr_plugin.trl.grpo_export`), whose ``region`` column holds the annotations.

Guards against reward hacking, each tested through the reward:

* **Duplicate and hallucinated boxes earn nothing.** S_loc is the Hungarian soft F1,
  ``2·Σ matched IoU / (n_gt + n_pred)``: a box matches at most one annotated object, so a repeated or invented
  box only grows ``n_pred`` and lowers the reward. The paper's recall-only metric would let a policy spray
  boxes until some land, so the reward refuses ``loc_metric="paper"``.
* **Hallucinated objects cost reward.** S loses ``hallucination_penalty`` times the share of the objects a
  completion names (tagged or in plain words) that the annotations say are absent from the image
  (:mod:`spr_plugin.scoring.mentions`), so appending names of absent objects lowers the reward instead of
  leaving it where it was. The regions' own names (objects, image categories, LVIS lists) and ``vocabulary``
  (the dataset's category names, :meth:`SPRReward.load`) decide what counts as a name.
* **Malformed output scores lowest.** An empty completion, one with a box the parser had to drop (garbage,
  truncated, out of range, reversed, zero area) or with a special token that has no place in an answer
  (``<|image_pad|>``, ``<|im_start|>``, ...), or over the candidate caps of :mod:`spr_plugin.scoring.limits`
  (``too_long``, ``too_many_phrases``: never scored) gets ``malformed_reward`` (-1 by default), strictly below every
  well-formed completion (whose S lies in [-hallucination_penalty, 1], a description without boxes included).

Why completions are decoded again: TRL decodes completions with ``skip_special_tokens=True``, which deletes
Qwen's reference and box tokens and with them every box. TRL also passes the
``completion_ids``; with a ``tokenizer`` the reward decodes those, keeping special tokens. Without
``completion_ids`` (direct calls) the completion texts are scored as given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.frame import DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS
from spr_plugin.core.options import DEFAULT_TEXT_MODEL
from spr_plugin.core.records import Candidate, Region, ScoredCandidate
from spr_plugin.families.profiles import KNOWN_GROUNDING_TOKENS
from spr_plugin.scoring.limits import over_limit
from spr_plugin.scoring.scorer import CandidateScorer
from spr_plugin.settings import ScoringConfig

#: The floor: below every well-formed completion's score, which lies in [-hallucination_penalty, 1] (the penalty is below 1).
MALFORMED_REWARD = -1.0

_SPECIAL_RE = re.compile(r"<\|[a-z_]+\|>")
_GROUNDING_TOKENS = frozenset(KNOWN_GROUNDING_TOKENS)


@dataclass(frozen=True)
class RewardResult:
    """One completion's reward, and why: its scored form, or the reason it got the floor."""

    reward: float
    text: str
    scored: ScoredCandidate | None = None
    malformed: str | None = None


def completion_text(completion: Any) -> str:
    """The answer text of a completion: a string, or TRL's conversational ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        out = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else ""
            if isinstance(content, list):  # typed parts
                content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            out.append(str(content))
        return "".join(out)
    return ""


def malformed_reason(text: str, scored: ScoredCandidate | None = None) -> str | None:
    """Why ``text`` is malformed (``empty``, ``foreign_token``, ``box_<reason>``), or None if it is well formed."""
    if not text.strip():
        return "empty"
    if any(tok not in _GROUNDING_TOKENS for tok in _SPECIAL_RE.findall(text)):
        return "foreign_token"
    if scored is not None and scored.parse_dropped:
        return "box_" + "+".join(sorted(scored.parse_dropped))
    return None


def check_reward_config(scoring: ScoringConfig, malformed_reward: float) -> None:
    """Refuse settings under which the reward could be gamed or the floor would not be lowest."""
    if scoring.loc_metric != "hungarian":
        raise ConfigError(
            "the online reward needs --loc-metric hungarian: under the paper's recall-only metric a policy "
            "raises its reward by adding boxes until some land on objects"
        )
    if scoring.score_norm != "none":
        raise ConfigError(
            f"the online reward needs --score-norm none, got {scoring.score_norm!r}: GRPO already normalises rewards "
            "within each prompt's group, and a normalised score could fall below the malformed floor"
        )
    floor = -scoring.hallucination_penalty
    if not malformed_reward < floor:  # also refuses NaN
        raise ConfigError(
            f"the malformed reward must be below {floor:g} (every well-formed score is in [{floor:g}, 1]), got {malformed_reward}"
        )


def _region(value: Any, row: int) -> Region:
    if isinstance(value, Region):
        return value
    try:
        return Region.from_dict(value)
    except (KeyError, TypeError, ValueError) as exc:
        raise SPRError(f"row {row}: the 'region' column does not hold a region ({type(exc).__name__}: {exc})") from None


class SPRReward:
    """A TRL reward function that scores completions with SPR's :class:`CandidateScorer`.

    ``reward(prompts, completions, completion_ids=None, region=..., box_format=None, **other_columns)``:
    ``region`` is the dataset column of ``spr export-grpo`` (one :meth:`Region.to_dict` per completion, as TRL
    repeats columns per generation), ``box_format`` its column, checked against the scorer's format.
    ``tokenizer`` (or a processor) is required when ``completion_ids`` are passed, as TRL does.
    """

    #: TRL names reward functions by ``__name__`` in its logs (``rewards/spr_reward/mean``).
    __name__ = "spr_reward"

    def __init__(self, scorer: CandidateScorer, tokenizer: Any = None, malformed_reward: float = MALFORMED_REWARD) -> None:
        check_reward_config(scorer.config, malformed_reward)
        self.scorer = scorer
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds its tokenizer
        self.malformed_reward = float(malformed_reward)

    @classmethod
    def load(
        cls,
        scoring: ScoringConfig | None = None,
        text_model: str = DEFAULT_TEXT_MODEL,
        tokenizer: Any = None,
        device: str | None = None,
        malformed_reward: float = MALFORMED_REWARD,
        image_max_pixels: int | None = DEFAULT_IMAGE_MAX_PIXELS,
        image_min_pixels: int | None = DEFAULT_IMAGE_MIN_PIXELS,
        vocabulary: Sequence[str] = (),
    ) -> SPRReward:
        """The reward with the scorer a build with ``scoring`` would use (models loaded here, once); the image frame
        is the dataset's (``spr export-grpo --image-max-pixels/--image-min-pixels``), for the Qwen2.5-VL formats.
        ``vocabulary``: the dataset's category names (e.g. :func:`spr_plugin.regions.annotations.category_vocabulary`),
        so names no region of a batch records still count as absent objects."""
        from spr_plugin.core.frame import ImageFrame
        from spr_plugin.families.profiles import get_box_format
        from spr_plugin.scoring.factory import build_candidate_scorer
        from spr_plugin.scoring.mentions import Vocabulary

        scoring = scoring or ScoringConfig()
        check_reward_config(scoring, malformed_reward)  # before loading any model
        box_format = get_box_format(scoring.box_format, ImageFrame(image_max_pixels, image_min_pixels))
        scorer = build_candidate_scorer(scoring, text_model, device, box_format)
        scorer.vocabulary = Vocabulary.of(vocabulary)
        return cls(scorer, tokenizer, malformed_reward)

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        completion_ids: Sequence[Sequence[int]] | None = None,
        region: Sequence[Any] | None = None,
        box_format: Sequence[str] | None = None,
        **columns: Any,
    ) -> list[float]:
        texts = self.completion_texts(completions, completion_ids)
        if region is None:
            raise SPRError("the dataset has no 'region' column: write the GRPO prompts with spr export-grpo")
        if len(region) != len(texts):
            raise SPRError(f"{len(texts)} completions but {len(region)} regions")
        if box_format is not None:
            wrong = sorted({str(f) for f in box_format} - {self.scorer.box_format.name})
            if wrong:
                raise SPRError(
                    f"the prompts were written for box format {', '.join(wrong)} but the reward parses "
                    f"{self.scorer.box_format.name}; build the reward with the dataset's box format"
                )
        self._check_frame(columns.get("image_max_pixels"), columns.get("image_min_pixels"))
        return [r.reward for r in self.score(texts, [_region(r, i) for i, r in enumerate(region)])]

    def _check_frame(self, max_pixels: Sequence[Any] | None, min_pixels: Sequence[Any] | None) -> None:
        """Qwen2.5-VL boxes are pixels of the pre-resized input: the scorer must parse in the rows' frame."""
        resize = getattr(self.scorer.box_format, "resize", None)
        if resize is None or max_pixels is None or min_pixels is None:
            return
        frames = set(zip(max_pixels, min_pixels)) - {(resize.pre_max_pixels, resize.pre_min_pixels)}
        if frames:
            raise SPRError(
                f"the prompts were written for the image frame (image_max_pixels, image_min_pixels) {sorted(frames, key=str)[0]} "
                f"but the reward's {self.scorer.box_format.name} parser uses ({resize.pre_max_pixels}, {resize.pre_min_pixels}); "
                "build the reward with the dataset's frame (SPRReward.load(..., image_max_pixels=, image_min_pixels=))"
            )

    def completion_texts(self, completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None) -> list[str]:
        """The texts to score: ``completion_ids`` decoded with special tokens kept, else the completions as given."""
        if completion_ids is None:
            return [completion_text(c) for c in completions]
        if self.tokenizer is None:
            raise SPRError(
                "SPRReward needs tokenizer= (the model's tokenizer or processor) to read completion_ids: TRL's "
                "completion texts have Qwen's box tokens removed"
            )
        drop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        return [self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False) for ids in completion_ids]

    def score(self, texts: Sequence[str], regions: Sequence[Region]) -> list[RewardResult]:
        """Rewards with their reasons; well-formed texts are scored in one batch of the scorer."""
        results: list[RewardResult | None] = [None] * len(texts)
        todo = []
        fmt = self.scorer.box_format
        for i, text in enumerate(texts):
            # Over the candidate caps (spr_plugin/scoring/limits.py): the floor, never scored, as in pair building.
            reason = malformed_reason(text) or over_limit(text, fmt, regions[i].width, regions[i].height)
            if reason:
                results[i] = RewardResult(self.malformed_reward, text, None, reason)
            else:
                todo.append(i)
        items = [(regions[i], Candidate(regions[i].region_id, "online", i, texts[i], generator="grpo")) for i in todo]
        for i, scored in zip(todo, self.scorer.score(items) if items else []):
            reason = malformed_reason(texts[i], scored)
            reward = self.malformed_reward if reason else float(scored.score)
            results[i] = RewardResult(reward, texts[i], scored, reason)
        return [r for r in results if r is not None]
