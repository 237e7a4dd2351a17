"""Which generator a run uses, and what its candidates depend on: typed configs in, no command-line state.

The command line (``spr generate``, ``spr build``) and the library (``pipeline``, ``spr demo``) call these
alike, so a generator and a candidates file's fingerprint are made one way whatever the caller.
"""

from __future__ import annotations

import os

from spr_plugin.settings import GenerationConfig, ServerConfig


def make_generator(cfg: GenerationConfig, server: ServerConfig | None = None):
    """The in-process transformers back end, or the OpenAI-compatible server ``server`` names (checked before
    returning: URL and served model)."""
    if server is None:
        from spr_plugin.generation.transformers_backend import TransformersGenerator

        return TransformersGenerator(cfg)
    from spr_plugin.generation.server_backend import OpenAIServerGenerator

    return OpenAIServerGenerator(server)


def generation_fingerprint(cfg, box_format: str) -> dict:
    """What a candidates file depends on besides its regions: sampling settings, model and box format.

    Settings that only change speed or memory (batch size, device, sequences per call) are left out, so
    a resumed run may use other ones.
    """
    from spr_plugin.core.manifest import settings

    gen = settings(cfg.to_dict())  # the frame's bounds flat, as candidates manifests record them
    for key in ("batch_size", "device", "max_batch_sequences"):
        gen.pop(key, None)
    served = gen.pop("served_model", None)
    if served is not None:  # the generator's name, whichever back end ran it (as recorded before served_model existed)
        gen["model"] = served
    if os.path.exists(str(gen.get("model", ""))):
        gen["model"] = os.path.abspath(gen["model"])
    return {"generation": gen, "box_format": box_format}
