"""The hostile-input suite of bench/hostile_cases/ (issue #18), one test per case."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from hostile_cases import all_cases  # noqa: E402

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(case, tmp_path):
    case.run(tmp_path)
