"""Printing and writing evaluation reports, and the accuracy-vs-IoU-threshold plot.

Tables are plain text so they paste into issues; JSON reports carry the prompt, the threshold rule
and the decoding settings so numbers are never quoted without the protocol behind them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.jsonl import atomic_write_text, dumps, finite_or_null
from spr_plugin.evaluation.metrics import RecSummary, RegionSummary


def rec_table(rows: Mapping[str, RecSummary]) -> str:
    """One row per model: Acc@t for every threshold (in %), mean IoU, unparseable count."""
    if not rows:
        return ""
    first = next(iter(rows.values()))
    keys = list(first.accuracy)
    head = ["model", *[f"Acc@{k}" for k in keys], "mIoU", "unparsed", "n"]
    body = [
        [name, *[f"{100 * s.accuracy[k]:.1f}" for k in keys], f"{s.mean_iou:.3f}", str(s.unparseable), str(s.n)]
        for name, s in rows.items()
    ]
    return _table(head, body) + f"\n(correct iff IoU {first.convention} threshold; unparseable answers count as wrong)"


def region_table(rows: Mapping[str, RegionSummary]) -> str:
    head = ["model", "P@0.5", "R@0.5", "F1@0.5", "matched mIoU", "boxes/region", "no-box answers", "regions"]
    body = [
        [
            name,
            f"{100 * s.precision:.1f}",
            f"{100 * s.recall:.1f}",
            f"{100 * s.f1:.1f}",
            f"{s.mean_matched_iou:.3f}",
            f"{s.n_pred / s.regions:.2f}" if s.regions else "0",
            str(s.no_box_answers),
            str(s.regions),
        ]
        for name, s in rows.items()
    ]
    return _table(head, body)


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    fmt = " | ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), "-+-".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in body]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> Path:
    path = Path(path)
    atomic_write_text(path, dumps(finite_or_null(obj), indent=2) + "\n")
    return path


def plot_accuracy_curves(
    curves: Mapping[str, RecSummary], path: str | os.PathLike, title: str = "REC accuracy vs IoU threshold"
) -> Path:
    """PNG of Acc@t against t, one line per model (matplotlib, Agg backend: no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise SPRError("plots need matplotlib: pip install 'matplotlib>=3.7'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    styles = ("-", "--", ":", "-.")
    for i, (name, s) in enumerate(curves.items()):
        ts = [float(k) for k in s.accuracy]
        # Line styles differ so models with identical curves stay visible on top of each other.
        ax.plot(
            ts,
            [100 * s.accuracy[k] for k in s.accuracy],
            marker="os^vD"[i % 5],
            linestyle=styles[i % 4],
            label=f"{name} (mIoU {s.mean_iou:.3f})",
        )
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"IoU threshold (correct iff IoU {next(iter(curves.values())).convention} t)" if curves else "IoU threshold")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
