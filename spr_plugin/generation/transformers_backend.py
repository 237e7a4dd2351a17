"""Candidate generation in process with a local checkpoint (any family of spr_plugin.families) through transformers.

Prompts are batched with left padding (decoder-only generation continues from the right edge) and
each prompt is sampled ``num_samples`` times in the same ``generate`` call. Memory is bounded by
``max_batch_sequences``: a call never holds more than that many sequences (prompts x samples), so a
large ``num_samples`` splits into several calls instead of running out of memory. Special tokens are
kept when decoding: Qwen's box and reference markers are special tokens and would otherwise vanish,
which is also why LLaMA-Factory inference needs ``skip_special_tokens: false`` for grounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from spr_plugin.core.frame import (
    lf_preprocess_image,
)
from spr_plugin.core.sanitize import sanitize_answer
from spr_plugin.core.sharegpt import content_parts
from spr_plugin.families.profiles import KNOWN_GROUNDING_TOKENS, qwen_resize_rules
from spr_plugin.families.prompts import Prompt
from spr_plugin.generation.model_runner import ModelRunner
from spr_plugin.settings import GenerationConfig

logger = logging.getLogger(__name__)


def to_chat_messages(prompt: Prompt) -> list[dict]:
    """Turn ``<image>`` placeholders into chat-template content parts, keeping their order."""
    return [{"role": "user", "content": content_parts(prompt.text, lambda _: {"type": "image"}, len(prompt.images))}]


def load_rgb(image: Image.Image | str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


def load_model_input(
    image: Image.Image | str, image_max_pixels: int | None, image_min_pixels: int | None, qwen_rules: bool = True
) -> Image.Image:
    """An RGB image as LLaMA-Factory would hand it to the processor (pre-resized, see :mod:`spr_plugin.llamafactory.image`).

    Generation and evaluation must show the model the frame it was trained in; feeding the original
    image would let the processor's ``smart_resize`` pick a different frame for large images.
    """
    if isinstance(image, Image.Image):
        return lf_preprocess_image(image, image_max_pixels, image_min_pixels, qwen_rules)
    with Image.open(image) as im:
        out = lf_preprocess_image(im, image_max_pixels, image_min_pixels, qwen_rules)
        return out.copy() if out is im else out  # the file closes on return


def encode_prompts(processor, prompts: Sequence[Prompt], device: str, image_max_pixels: int | None, image_min_pixels: int | None):
    """Chat-templated, left-padded model inputs (a BatchFeature), images pre-resized like LLaMA-Factory.

    Shared by candidate generation and evaluation so both show the model the training-time frame.
    """
    texts = [processor.apply_chat_template(to_chat_messages(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    rules = qwen_resize_rules(processor)  # LLaMA-Factory's plugin of the processor's family
    images = [load_model_input(img, image_max_pixels, image_min_pixels, rules) for p in prompts for img in p.images]
    inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt", **lf_image_kwargs(processor))
    return inputs.to(device)


def lf_image_kwargs(processor) -> dict:
    """Image-processor settings LLaMA-Factory's plugin uses where the processor's own call would differ.

    A tiling image processor (InternVL's) is configured with ``crop_to_patches`` in its checkpoint, and LLaMA-Factory
    (with its default ``crop_to_patches: false``) calls it with that configured value, while the HF processor's call
    defaults to tiling: without this, generation would see 13 tiles of an image the training saw as one.
    """
    image_processor = getattr(processor, "image_processor", None)
    tiling = getattr(image_processor, "crop_to_patches", None)
    return {} if tiling is None else {"crop_to_patches": bool(tiling)}


@dataclass
class TransformersGenerator:
    """Samples grounded descriptions from a local image-text-to-text checkpoint (through the one
    :class:`~spr_plugin.generation.model_runner.ModelRunner` evaluation uses too)."""

    config: GenerationConfig
    runner: ModelRunner = field(init=False, repr=False)
    #: Sequences (prompts x samples) of every ``model.generate`` call so far, for stats and tests.
    calls: list[int] = field(init=False, default_factory=list)
    #: One torch RNG seed per ``generate`` call (a batch), recorded on each candidate of that batch.
    seed_scope: str = field(init=False, default="batch")

    def __post_init__(self) -> None:
        cfg = self.config
        self.runner = ModelRunner.load(cfg.model, device=resolve_device(cfg.device), dtype=cfg.dtype, what="the generator model")

    @property
    def model(self):
        return self.runner.model

    @property
    def processor(self):
        return self.runner.processor

    @property
    def device(self) -> str:
        return self.runner.device

    @property
    def name(self) -> str:
        return self.config.model

    def encode(self, prompts: Sequence[Prompt]):
        """Chat-templated, left-padded model inputs of a batch of prompts (a BatchFeature)."""
        return self.runner.encode(prompts, self.config.image_max_pixels, self.config.image_min_pixels)

    def generate(self, prompts: Sequence[Prompt], seeds: Sequence[int]) -> list[list[str]]:
        """``num_samples`` texts for each prompt, in prompt order.

        The torch RNG is seeded once with ``seeds[0]`` (sampling in a batch shares one RNG stream), then
        the prompts run in calls of at most ``max_batch_sequences`` sequences.
        """
        import torch

        cfg = self.config
        n, cap = cfg.num_samples, cfg.max_batch_sequences
        torch.manual_seed(int(seeds[0]) if seeds else cfg.seed)
        if n > cap:  # even one prompt is too many sequences: split its samples over several calls
            results = []
            for prompt in prompts:
                texts: list[str] = []
                while len(texts) < n:
                    texts += self._generate([prompt], min(cap, n - len(texts)))[0]
                results.append(texts)
            return results
        per_call = max(1, cap // n)
        results = []
        for start in range(0, len(prompts), per_call):
            results += self._generate(prompts[start : start + per_call], n)
        return results

    def _generate(self, prompts: Sequence[Prompt], n: int) -> list[list[str]]:
        cfg = self.config
        cleaned, sequences = self.runner.generate(
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            image_max_pixels=cfg.image_max_pixels,
            image_min_pixels=cfg.image_min_pixels,
            sampling=None if cfg.greedy else {"temperature": cfg.temperature, "top_p": cfg.top_p},
            num_return_sequences=1 if cfg.greedy else n,  # greedy samples would all be equal
        )
        self.calls.append(sequences)
        if cfg.greedy:
            return [[text] * n for text in cleaned]
        return [cleaned[i * n : (i + 1) * n] for i in range(len(prompts))]

    def close(self) -> None:
        """Nothing to release (the model is garbage-collected); present for the Generator protocol."""


def resolve_device(device: str) -> str:
    """``auto``: this process's accelerator under ``accelerate launch`` (one GPU per process), else
    ``cuda`` if available, else ``cpu``; anything else is passed to torch unchanged."""
    if device != "auto":
        return device
    import torch

    from spr_plugin.generation.sharding import launched_world

    if launched_world() is not None:
        from accelerate import PartialState

        return str(PartialState().device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def clean_output(text: str) -> str:
    """The answer without the chat end marker, padding, media and chat tokens (Qwen's box and reference
    tokens stay; :func:`spr_plugin.scoring.stage.sanitize_candidates` narrows that to the run's box format)."""
    return sanitize_answer(text, KNOWN_GROUNDING_TOKENS)[0]
