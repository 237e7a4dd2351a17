"""Candidate generation in process with a local Qwen2-VL checkpoint through transformers.

Prompts are batched with left padding (decoder-only generation continues from the right edge) and
each prompt is sampled ``num_samples`` times in the same ``generate`` call. Special tokens are kept
when decoding: Qwen's box and reference markers are special tokens and would otherwise vanish, which
is also why LLaMA-Factory inference needs ``skip_special_tokens: false`` for grounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from .errors import ConfigError, SPRError
from .prompts import IMAGE_TOKEN, VARIANTS, Prompt

logger = logging.getLogger(__name__)

_STRIP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; every candidate records the variant, seed and temperature that made it."""

    model: str
    num_samples: int = 4
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 256
    batch_size: int = 4
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("num_samples, batch_size and max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 (SPR needs diverse samples)")
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ConfigError(f"unknown prompt variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")


def _to_messages(prompt: Prompt) -> list[dict]:
    """Turn ``<image>`` placeholders into chat-template content parts, keeping their order."""
    content: list[dict] = []
    pieces = prompt.text.split(IMAGE_TOKEN)
    if len(pieces) - 1 != len(prompt.images):
        raise ValueError(f"prompt has {len(pieces) - 1} image placeholders for {len(prompt.images)} images")
    for i, piece in enumerate(pieces):
        if i > 0:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


def _load_image(image: Image.Image | str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


@dataclass
class TransformersGenerator:
    """Samples grounded descriptions from a local image-text-to-text checkpoint."""

    config: GenerationConfig
    model: object = field(init=False, repr=False)
    processor: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(self.config.model)
            self.model = AutoModelForImageTextToText.from_pretrained(self.config.model, dtype=self.config.dtype)
        except (OSError, ValueError) as exc:
            raise SPRError(f"cannot load the generator model {self.config.model!r}: {exc}") from None
        self.model.to(self.config.device).eval()  # type: ignore[attr-defined]
        self.processor.tokenizer.padding_side = "left"  # type: ignore[attr-defined]

    @property
    def name(self) -> str:
        return self.config.model

    def generate(self, prompts: Sequence[Prompt], seed: int) -> list[list[str]]:
        """``num_samples`` texts for each prompt, in prompt order."""
        import torch

        proc = self.processor
        texts = [proc.apply_chat_template(_to_messages(p), add_generation_prompt=True, tokenize=False) for p in prompts]  # type: ignore[attr-defined]
        images = [_load_image(img) for p in prompts for img in p.images]
        inputs = proc(text=texts, images=images or None, padding=True, return_tensors="pt").to(self.config.device)  # type: ignore[operator]
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(  # type: ignore[attr-defined]
                **inputs,
                do_sample=True,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                max_new_tokens=self.config.max_new_tokens,
                num_return_sequences=self.config.num_samples,
                pad_token_id=proc.tokenizer.pad_token_id,  # type: ignore[attr-defined]
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = proc.batch_decode(new_tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # type: ignore[attr-defined]
        cleaned = [_clean(t) for t in decoded]
        n = self.config.num_samples
        return [cleaned[i * n : (i + 1) * n] for i in range(len(prompts))]


def _clean(text: str) -> str:
    for tok in _STRIP_TOKENS:
        text = text.split(tok)[0] if tok == "<|im_end|>" else text.replace(tok, "")
    return text.strip()
