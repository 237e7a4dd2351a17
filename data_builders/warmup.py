"""Alias of :mod:`spr_plugin.demo.warmup` for scripts run from a clone (see ``data_builders/__init__.py``)."""

from spr_plugin.demo.warmup import DATASET_NAME, grounded_answer, warmup_sft, write_sft_dataset

__all__ = ["DATASET_NAME", "grounded_answer", "warmup_sft", "write_sft_dataset"]
