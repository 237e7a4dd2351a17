"""Alias of :mod:`spr_plugin.demo.scenes` for scripts run from a clone (see ``data_builders/__init__.py``)."""

from spr_plugin.demo.scenes import CATEGORY_NAMES, COLOURS, SCENE_WORDS, SHAPES, render_scenes

__all__ = ["CATEGORY_NAMES", "COLOURS", "SCENE_WORDS", "SHAPES", "render_scenes"]
