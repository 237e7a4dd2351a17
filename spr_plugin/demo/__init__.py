"""``spr demo``: a whole build on rendered scenes with a tiny local model, no download.

Library code the demo needs, shipped with the package: ``scenes.py`` (rendered scenes with their COCO json),
``tiny_model.py`` (a tiny local Qwen2-VL), ``warmup.py`` (its SFT warm-up data and run), ``run.py`` (the demo).
Tests and benches use them too (through ``data_builders/``, the repository's source builders, not installed);
``spr_plugin.testing`` keeps what only tests need.
"""
