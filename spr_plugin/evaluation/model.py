"""Load the model under evaluation: a checkpoint folder, optionally with a LoRA adapter on top.

LLaMA-Factory's LoRA training (SFT or DPO) saves only the adapter; evaluating it means loading the
base checkpoint with ``AutoModelForImageTextToText`` and applying the adapter with
``peft.PeftModel.from_pretrained``. The adapter is merged into the weights for inference (faster
generation, identical outputs). The processor always comes from the base checkpoint, which is what
the adapter was trained against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError


@dataclass
class LoadedModel:
    """A model ready for ``generate`` plus its processor, and the names it was loaded from."""

    model: Any = field(repr=False)
    processor: Any = field(repr=False)
    base: str
    adapter: str | None
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.base if self.adapter is None else f"{self.base}+{self.adapter}"


def load_model(
    base: str | os.PathLike, adapter: str | os.PathLike | None = None, *, device: str = "cpu", dtype: str = "auto"
) -> LoadedModel:
    """Load ``base`` (and merge the LoRA ``adapter`` if given); raises :class:`SPRError` if either cannot be loaded."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base_s = str(base)
    try:
        processor = AutoProcessor.from_pretrained(base_s)
        model = AutoModelForImageTextToText.from_pretrained(base_s, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise SPRError(f"cannot load the model {base_s!r}: {exc}") from None
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
    return LoadedModel(model, processor, base_s, adapter_s, device)
