"""Result reports: a Markdown table, a bar chart and the JSON they are drawn from.

A *record* is one evaluated (configuration, task) cell::

    {"label": "echo/mean", "task": "sts-bible", "metrics": {"spearman": 0.61, ...},
     "main_metrics": ["spearman"]}          # optional: what the chart shows

Labels become table columns and bar colours in first-seen order, so any caller (the
zero-shot runner, a sweep) decides what a configuration is called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def _labels(records: list[Record]) -> list[str]:
    return list(dict.fromkeys(record["label"] for record in records))


def _rows(records: list[Record], metrics: list[str] | None, main_only: bool) -> list[tuple[str, str]]:
    """(task, metric) pairs in first-seen order, filtered by ``metrics`` or the main metrics."""
    rows: dict[tuple[str, str], None] = {}
    for record in records:
        names = record.get("main_metrics") if main_only and record.get("main_metrics") else record["metrics"]
        for metric in names:
            if metrics is None or metric in metrics:
                rows[(record["task"], metric)] = None
    return list(rows)


def _value_table(records: list[Record]) -> dict[tuple[str, str, str], float]:
    return {
        (record["task"], metric, record["label"]): value
        for record in records
        for metric, value in record["metrics"].items()
    }


def format_markdown_table(records: list[Record], metrics: list[str] | None = None) -> str:
    """One row per (task, metric), one column per label; the best value of each row in bold.

    ``metrics`` keeps only the named metrics; missing cells print as an en dash.
    """
    labels = _labels(records)
    values = _value_table(records)
    lines = ["| task | metric | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for task, metric in _rows(records, metrics, main_only=False):
        row = [values.get((task, metric, label)) for label in labels]
        best = max((v for v in row if v is not None), default=None)
        cells = ["–" if v is None else (f"**{v:.4f}**" if v == best and len(labels) > 1 else f"{v:.4f}") for v in row]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_bar_chart(records: list[Record], path: Path, title: str = "") -> None:
    """Grouped bars: one group per (task, main metric), one bar per label; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt
    import numpy as np

    labels = _labels(records)
    values = _value_table(records)
    rows = _rows(records, None, main_only=True)
    width = 0.8 / max(len(labels), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) * max(1, len(labels) / 3)), 4.5))
    positions = np.arange(len(rows))
    for index, label in enumerate(labels):
        heights = [values.get((task, metric, label), np.nan) for task, metric in rows]
        axes.bar(positions + (index - (len(labels) - 1) / 2) * width, heights, width, label=label)
    axes.set_xticks(positions, [f"{task}\n{metric}" for task, metric in rows], fontsize=8)
    axes.set_ylabel("score")
    axes.set_title(title)
    axes.legend(fontsize=8, ncols=min(len(labels), 3))
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(records: list[Record], out_dir: Path, title: str, metadata: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"results.{name}" for name in ("json", "md", "png")}
    paths["json"].write_text(
        json.dumps({"title": title, **(metadata or {}), "records": records}, indent=2) + "\n", encoding="utf-8"
    )
    paths["md"].write_text(f"# {title}\n\n{format_markdown_table(records)}\n", encoding="utf-8")
    plot_bar_chart(records, paths["png"], title)
    return paths
