"""Text output of `dreamer plot`: the aggregate-score table and the per-task final-score table."""

from __future__ import annotations

import math

import numpy as np

from torch_dreamer.tools.aggregate import LABELS

SUITE_NAMES = {"dmc": "DMC", "atari": "Atari", "minigrid": "MiniGrid", "minihack": "MiniHack"}


def fmt_num(x) -> str:
    """Few digits for a terminal: 20193, 21.4, 2.14; '-' for missing."""
    if x is None or not math.isfinite(x):
        return "-"
    size = abs(x)
    if size >= 1000:
        return f"{x:.0f}"
    return f"{x:.1f}" if size >= 10 else f"{x:.2f}"


def fmt_step(x) -> str:
    """Frames with a suffix: 200M, 1.5M, 30k."""
    if x is None or not math.isfinite(x):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.4g}{suffix}"
    return f"{x:g}"


def fmt_interval(cell) -> str:
    if cell is None:
        return "-"
    point, low, high = cell
    if not math.isfinite(low):
        return fmt_num(point)
    return f"{fmt_num(point)} [{fmt_num(low)}, {fmt_num(high)}]"


def fmt_values(values: np.ndarray) -> str:
    """Mean over seeds, with the std and the number of seeds: '-20.1 +- 0.3 (8)'."""
    if not len(values):
        return "-"
    if len(values) == 1:
        return f"{fmt_num(values[0])} (1)"
    return f"{fmt_num(values.mean())} +- {fmt_num(values.std())} ({len(values)})"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for row in [header] + rows:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def aggregate_report(rows: list[dict], reps: int) -> str:
    """The aggregate table, one block per suite (Atari normalised, others raw)."""
    blocks = []
    for suite in sorted({r["suite"] for r in rows}):
        mine = [r for r in rows if r["suite"] == suite]
        stats = [k for k in LABELS if any(k in r for r in mine)]
        header = ["method", "tasks", "runs", "step"] + [LABELS[s].lower() for s in stats]
        body = []
        for r in mine:
            step = "published" if r.get("published") else "-".join(dict.fromkeys(map(fmt_step, r["step"])))
            tasks = str(r["tasks"]) + (f" ({r['tasks_normalised']} normalised)" if "tasks_normalised" in r else "")
            body.append([r["method"], tasks, str(r["runs"]), step] + [fmt_interval(r.get(s)) for s in stats])
        if suite == "atari":
            title = "Atari final scores, human-normalised"
        else:
            title = (
                f"{SUITE_NAMES.get(suite, suite.capitalize())} final scores (raw returns; mean and median over tasks)"
            )
        if reps > 0:
            title += f"; [95% CI]: percentile bootstrap, {reps} resamples of runs within each task"
        blocks.append(title + "\n" + format_table(header, body))
    return "\n\n".join(blocks)


def task_report(rows: list[dict], baseline_names: list[str]) -> str:
    """Per task, each method's final score at the common step (mean +- std (seeds)), then baselines."""
    methods = sorted({m for r in rows for m in r["methods"]})
    header = ["task", "step"] + methods + baseline_names
    body = []
    for r in rows:
        cells = [fmt_values(r["methods"][m]) if m in r["methods"] else "" for m in methods]
        refs = [fmt_num(r["baselines"].get(b)) for b in baseline_names]
        body.append([r["task"], fmt_step(r["step"])] + cells + refs)
    note = (
        "Final score of each method at one step per task (--step, else the furthest all reached): mean +- std (runs)."
    )
    return note + "\n" + format_table(header, body)
