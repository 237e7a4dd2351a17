"""Hostile and faulty inputs, one module per case class (issue #18).

Each module defines ``CASES: list[HostileCase]``. A case gets a fresh empty folder and must return
normally when spr handles the input well (a one-line error, a counted skip, nothing lost, nothing read
outside the named roots) and raise ``AssertionError`` (or any exception) when it does not. The same cases
run in ``tests/test_hostile.py`` and in ``bench/hostile.py``, which prints a table of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostileCase:
    """One hostile input: its class (a row of the table), a short name and the check."""

    cls: str
    name: str
    run: Callable[[Path], None]

    @property
    def id(self) -> str:
        return f"{self.cls}:{self.name}"


def all_cases() -> list[HostileCase]:
    """Every case of every module in this package, in module order."""
    out: list[HostileCase] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        out.extend(getattr(module, "CASES", []))
    return out
