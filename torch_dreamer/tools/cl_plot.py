"""Continual-learning curves for `dreamer plot`: one panel per continual run, one line per task, the task
boundaries marked.

A continual run (`dreamer continual ...`) logs every task's evaluation under `{yaxis}_{i}` (for example
`eval_return_0`, `eval_success_2`) and the training task of every training episode under `task`; a boundary
is the first step at which `task` changes. Runs are the folders holding a `metrics.jsonl`; partial lines
(a run still writing) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from torch_dreamer.tools.scores import read_metrics


def metrics_files(indirs: list[str]) -> list[Path]:
    files = []
    for indir in map(Path, indirs):
        if indir.is_file() and indir.name == "metrics.jsonl":
            files.append(indir)
        elif indir.is_dir():
            files += sorted(indir.rglob("metrics.jsonl"))
    return files


def task_curves(rows: list[dict], xaxis: str, yaxis: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{task i: (xs, ys)} of the `{yaxis}_{i}` values, in step order."""
    pattern = re.compile(rf"^{re.escape(yaxis)}_(\d+)$")
    points: dict[int, list] = {}
    for row in rows:
        for key, value in row.items():
            match = pattern.match(key)
            if match and xaxis in row and isinstance(value, (int, float)) and np.isfinite(value):
                points.setdefault(int(match.group(1)), []).append((row[xaxis], value))
    return {task: tuple(np.array(v, dtype=float) for v in zip(*sorted(p))) for task, p in sorted(points.items())}


def task_boundaries(rows: list[dict], xaxis: str) -> list[float]:
    """Steps at which the training task changes (the first row of each new task)."""
    edges, current = [], None
    for row in sorted((r for r in rows if "task" in r and xaxis in r), key=lambda r: r[xaxis]):
        if current is not None and row["task"] != current:
            edges.append(float(row[xaxis]))
        current = row["task"]
    return edges


def continual_panels(indirs: list[str], xaxis: str, yaxis: str) -> list:
    """Panels (`tools.plot.Panel`) of every continual run under `indirs`; [] when there is none."""
    from torch_dreamer.tools.plot import Line, Panel

    panels = []
    for path in metrics_files(indirs):
        rows = read_metrics(path)
        curves = task_curves(rows, xaxis, yaxis)
        if not curves:
            continue
        lines = [Line(f"task {task}", xs, ys) for task, (xs, ys) in curves.items()]
        panels.append(Panel(_title(path, indirs), lines, vlines=task_boundaries(rows, xaxis)))
    return panels


def _title(path: Path, indirs: list[str]) -> str:
    for indir in map(Path, indirs):
        try:
            relative = path.parent.relative_to(indir)
        except ValueError:
            continue
        return str(relative) if str(relative) != "." else path.parent.name
    return path.parent.name
