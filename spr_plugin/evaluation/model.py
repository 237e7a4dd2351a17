"""Load the model under evaluation: a checkpoint folder, optionally with a LoRA adapter on top.

The one :class:`~spr_plugin.generation.model_runner.ModelRunner` candidate generation uses too (loading,
the adapter merge, the frame and chat template of the inputs, decoding).
"""

from __future__ import annotations

import os

from spr_plugin.generation.model_runner import ModelRunner


def load_model(
    base: str | os.PathLike, adapter: str | os.PathLike | None = None, *, device: str = "cpu", dtype: str = "auto"
) -> ModelRunner:
    """Load ``base`` (and merge the LoRA ``adapter`` if given); raises :class:`SPRError` if either cannot be loaded."""
    return ModelRunner.load(base, adapter, device=device, dtype=dtype)
