"""Result reports: a Markdown table, a bar chart and the JSON they are drawn from; and a
training run's curves.

A *record* is one evaluated (configuration, task) cell::

    {"label": "echo/mean", "task": "sts-bible", "metrics": {"spearman": 0.61, ...},
     "main_metrics": ["spearman"],          # optional: what the chart shows
     "task_type": "sts"}                    # optional: the chart panel (task family); else the task's own

Labels become table columns and chart rows in first-seen order, so any caller (the
zero-shot runner, a sweep) decides what a configuration is called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global figure state, no display backend to pick
from matplotlib.ticker import MaxNLocator

from echo_base import atomic_file
from evaluation.metrics import main_metric_mean

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

    When every record names its main metrics and there are several tasks, a last row holds
    each label's mean of them (:func:`evaluation.metrics.main_metric_mean`).

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
    means = [_main_metric_mean(records, label) for label in labels]
    if all(mean is not None for mean in means) and len({record["task"] for record in records}) > 1:
        best = max(means)
        cells = [f"**{v:.4f}**" if v == best and len(labels) > 1 else f"{v:.4f}" for v in means]
        lines.append("| mean | main metrics | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _main_metric_mean(records: list[Record], label: str) -> float | None:
    """The mean of ``label``'s main-metric values over its tasks; None when a record names no main metrics."""
    own = [record for record in records if record["label"] == label]
    if not own or any(not record.get("main_metrics") for record in own):
        return None
    return main_metric_mean((record["main_metrics"], record["metrics"]) for record in own)


def plot_bar_chart(records: list[Record], path: Path, title: str = "", label_name: str = "configuration") -> Figure:
    """Horizontal bars, one panel per task family: a row per label, a bar per (task, main metric).

    A record's ``task_type`` is its family (a record without one is a family of its own task);
    each bar is annotated with its value, and the y axis, named ``label_name``, lists the labels
    top down. Saved as PNG at ``path``; the figure is returned for inspection.
    """
    labels = _labels(records)
    values = _value_table(records)
    families: dict[str, dict[tuple[str, str], None]] = {}  # family -> its (task, metric) rows, first-seen order
    for record in records:
        families.setdefault(record.get("task_type", record["task"]), {}).update(
            dict.fromkeys(_rows([record], None, main_only=True)))
    most_bars = max(len(rows) for rows in families.values())
    label_width = 0.07 * max(len(label) for label in labels)  # inches of 8-point tick labels
    figure = Figure(figsize=(1 + label_width + 4 * len(families), 1.5 + 0.25 * len(labels) * most_bars),
                    layout="constrained")
    panels = figure.subplots(1, len(families), sharey=True, squeeze=False)[0]
    positions = np.arange(len(labels))
    for axes, (family, rows) in zip(panels, families.items()):
        height = 0.8 / len(rows)
        for index, (task, metric) in enumerate(rows):
            scores = [values.get((task, metric, label)) for label in labels]
            # A missing score is an empty bar marked "–" (matplotlib leaves a NaN bar unlabelled).
            bars = axes.barh(positions + (index - (len(rows) - 1) / 2) * height, [score or 0.0 for score in scores],
                             height, label=f"{task} · {metric}")
            axes.bar_label(bars, ["–" if score is None else f"{score:.3f}" for score in scores], padding=2, fontsize=7)
        axes.set_xlabel(", ".join(dict.fromkeys(metric for _, metric in rows)))
        axes.margins(x=0.2)  # room for the value labels
        axes.grid(axis="x", alpha=0.3)
        # Above the panel, clear of the bars: the family, then the colour of each task.
        axes.legend(title=family, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    panels[0].set_yticks(positions, labels, fontsize=8)
    panels[0].invert_yaxis()  # the first label on top, as in the table (the axis is shared)
    panels[0].set_ylabel(label_name)
    figure.suptitle(title)
    save_png(figure, path)
    return figure


# The log keys :func:`plot_training` draws in panels of their own, and their axis names.
_TRAINING_CURVES = {"train/loss": "loss", "train/lr": "learning rate", "train/grad_norm": "gradient norm (before clipping)"}


def plot_training(records: list[dict[str, Any]], path: Path, title: str = "") -> Figure:
    """A training run's curves against step from its log records (log.jsonl's lines), one panel each:
    loss, learning rate, gradient norm and the dev metrics, each panel only when the log has it.

    A step logged twice (a resumed run logs again the steps after its last checkpoint) shows
    its last value. Saved as PNG at ``path``; the figure is returned for inspection.
    """
    dev_metrics = list(dict.fromkeys(key for record in records for key in record if key.startswith("dev/")))
    panels = [(name, [key]) for key, name in _TRAINING_CURVES.items() if any(key in record for record in records)]
    if dev_metrics:
        panels.append(("dev score", dev_metrics))
    figure = Figure(figsize=(1 + 3.6 * len(panels), 3.4), layout="constrained")
    for axes, (name, keys) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            series = {record["step"]: record[key] for record in records if key in record}
            # Dev metrics are a few points apart: markers show where they were measured.
            axes.plot(list(series), list(series.values()), marker="o" if key in dev_metrics else None,
                      label=key.removeprefix("dev/"))
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 1.5 on a short run
        axes.set_ylabel(name)
        axes.ticklabel_format(axis="y", scilimits=(-3, 4))  # a learning rate reads 2e-4, not 0.000200
        axes.grid(alpha=0.3)
        if keys == dev_metrics:  # the dev metrics share one panel: the legend names them
            axes.legend(fontsize=7)
    figure.suptitle(title)
    save_png(figure, path)
    return figure


def save_png(figure: Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` as a PNG, atomically (every chart of the project goes through here)."""
    with atomic_file(path) as staging:
        figure.savefig(staging, format="png", dpi=120)  # the staging name has no .png to infer the format from


def write_report(records: list[Record], out_dir: Path, title: str, metadata: dict[str, Any] | None = None,
                 label_name: str = "configuration") -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``; return their paths.

    ``label_name`` says what the labels are, on the chart's axis.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"results.{name}" for name in ("json", "md", "png")}
    paths["json"].write_text(
        json.dumps({"title": title, **(metadata or {}), "records": records}, indent=2) + "\n", encoding="utf-8"
    )
    paths["md"].write_text(f"# {title}\n\n{format_markdown_table(records)}\n", encoding="utf-8")
    plot_bar_chart(records, paths["png"], title, label_name)
    return paths
