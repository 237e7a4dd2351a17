"""Run the hostile-input suite (bench/hostile_cases/) and print a table: class, cases, handled, failed.

    python bench/hostile.py            # every class
    python bench/hostile.py writes     # classes whose name contains 'writes'

A case is *handled* when spr answers it well (one-line error, counted skip, nothing lost, nothing read
outside the named roots); anything else is a *failure*, listed under the table with its message.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_cases import all_cases  # noqa: E402


def main(argv: list[str]) -> int:
    wanted = argv[0] if argv else ""
    cases = [c for c in all_cases() if wanted in c.cls]
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    failures: list[tuple[str, str]] = []
    for case in cases:
        row = rows[case.cls]
        row[0] += 1
        with tempfile.TemporaryDirectory() as tmp:
            try:
                case.run(Path(tmp))
                row[1] += 1
            except Exception as exc:  # a failure of the case, reported, never fatal for the suite
                row[2] += 1
                last = traceback.format_exception_only(exc)[-1].strip()
                failures.append((case.id, last[:300]))
    print(f"{'class':<28}{'cases':>7}{'handled':>9}{'failed':>8}")
    for cls, (n, ok, bad) in rows.items():
        print(f"{cls:<28}{n:>7}{ok:>9}{bad:>8}")
    total = [sum(r[i] for r in rows.values()) for i in range(3)]
    print(f"{'total':<28}{total[0]:>7}{total[1]:>9}{total[2]:>8}")
    for case_id, msg in failures:
        print(f"FAILED {case_id}: {msg}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
