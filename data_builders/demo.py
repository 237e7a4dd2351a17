"""Alias of :mod:`spr_plugin.demo.run` for scripts run from a clone (see ``data_builders/__init__.py``)."""

from spr_plugin.demo.run import DEMO_DATASET, DEMO_FRAME, DemoResult, run_demo
from spr_plugin.settings import DemoConfig

__all__ = ["DEMO_DATASET", "DEMO_FRAME", "DemoConfig", "DemoResult", "run_demo"]
