"""LlamaBoard with its image pre-resize fields preset to a dataset's frame (``python -m`` of this module).

Why: LlamaBoard's Train tab opens with ``image_max_pixels`` 768*768 and ``image_min_pixels`` 32*32 and sends them
with every multimodal training. A dataset sampled in another frame (the demo's 12544) would then train in the wrong
one, silently: Qwen2.5-VL's pixel boxes point elsewhere and every model sees another visual grid than the one its
preferences were measured on. LlamaBoard fills its fields on page load through ``Engine.resume`` (the language,
the last model, the output folder); this launcher adds the two pixel fields to what that first update sets, so
the UI shows, previews and trains the dataset's frame while the user can still change it. Nothing else differs
from ``llamafactory-cli webui``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

FIELDS = ("train.image_max_pixels", "train.image_min_pixels")


def preset_frame(image_max_pixels: int, image_min_pixels: int) -> None:
    """Make LlamaBoard's page-load update set the two pixel fields (must run before the UI is created)."""
    from llamafactory.webui.engine import Engine

    original = Engine.resume
    if getattr(original, "spr_frame", None) is not None:
        original = original.__wrapped__

    def resume(self):
        updates = original(self)
        first = next(updates)
        values = (str(image_max_pixels), str(image_min_pixels))
        first.update(self._update_component({key: {"value": value} for key, value in zip(FIELDS, values)}))
        yield first
        yield from updates

    resume.__wrapped__ = original  # type: ignore[attr-defined]
    resume.spr_frame = (image_max_pixels, image_min_pixels)  # type: ignore[attr-defined]
    Engine.resume = resume


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-max-pixels", type=int, required=True)
    p.add_argument("--image-min-pixels", type=int, required=True)
    a = p.parse_args(argv)
    preset_frame(a.image_max_pixels, a.image_min_pixels)
    from llamafactory.webui.interface import run_web_ui

    run_web_ui()


if __name__ == "__main__":
    main()
