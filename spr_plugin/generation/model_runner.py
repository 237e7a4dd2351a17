"""One model runner for generation and evaluation: load a checkpoint (and a LoRA adapter), encode prompts in
LLaMA-Factory's frame, decode with special tokens kept.

Candidate generation (:class:`~spr_plugin.generation.transformers_backend.TransformersGenerator`, sampled) and
evaluation (:mod:`spr_plugin.evaluation.runner`, greedy) show the model the same inputs because they call the
same code: a frame or chat-template fix lands in both. LLaMA-Factory's LoRA training saves only the adapter;
it is applied with ``peft`` and merged (identical outputs, faster). The processor always comes from the base
checkpoint, which is what the adapter was trained against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.families.prompts import Prompt


@dataclass
class ModelRunner:
    """A model ready for ``generate`` plus its processor, and the names it was loaded from."""

    model: Any = field(repr=False)
    processor: Any = field(repr=False)
    base: str
    adapter: str | None
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.base if self.adapter is None else f"{self.base}+{self.adapter}"

    @classmethod
    def load(
        cls,
        base: str | os.PathLike,
        adapter: str | os.PathLike | None = None,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        what: str = "the model",
    ) -> ModelRunner:
        """Load ``base`` (and merge the LoRA ``adapter`` if given); :class:`SPRError` if either cannot be loaded."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        base_s = str(base)
        try:
            processor = AutoProcessor.from_pretrained(base_s)
            model = AutoModelForImageTextToText.from_pretrained(base_s, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise SPRError(f"cannot load {what} {base_s!r}: {exc}") from None
        adapter_s = None
        if adapter is not None:
            adapter_s = str(adapter)
            if not (Path(adapter_s) / "adapter_config.json").is_file():
                raise SPRError(f"{adapter_s} is not a LoRA adapter folder (no adapter_config.json); pass it as --model instead")
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, adapter_s).merge_and_unload()
            except (OSError, ValueError, RuntimeError) as exc:
                raise SPRError(f"cannot apply the adapter {adapter_s!r} to {base_s!r}: {exc}") from None
        model.to(device).eval()
        processor.tokenizer.padding_side = "left"  # decoder-only batches continue from the right edge
        return cls(model, processor, base_s, adapter_s, device)

    def encode(self, prompts: Sequence[Prompt], image_max_pixels: int | None, image_min_pixels: int | None):
        """Chat-templated, left-padded model inputs (a BatchFeature), images pre-resized like LLaMA-Factory."""
        from spr_plugin.generation.transformers_backend import encode_prompts

        return encode_prompts(self.processor, prompts, self.device, image_max_pixels, image_min_pixels)

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int,
        image_max_pixels: int | None,
        image_min_pixels: int | None,
        sampling: dict[str, float] | None = None,
        num_return_sequences: int | None = None,
    ) -> tuple[list[str], int]:
        """The cleaned answers (``num_return_sequences`` per prompt, in prompt order; greedy when ``sampling`` is
        None) and how many sequences the ``generate`` call held."""
        import torch

        from spr_plugin.generation.transformers_backend import clean_output

        inputs = self.encode(prompts, image_max_pixels, image_min_pixels)
        kwargs: dict[str, Any] = {"do_sample": sampling is not None, **(sampling or {})}
        if num_return_sequences is not None:
            kwargs["num_return_sequences"] = num_return_sequences
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, **kwargs, max_new_tokens=max_new_tokens, pad_token_id=self.processor.tokenizer.pad_token_id
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return [clean_output(t) for t in decoded], int(out.shape[0])
