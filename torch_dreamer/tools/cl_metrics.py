"""Continual-learning metrics over per-task evaluation curves (Continual World's definitions).

A run trains tasks 0..N-1 one after another, task i during env steps [b_i, b_{i+1}); every task is
evaluated throughout, giving a curve p_i(t) in [0, 1] (success rate, or a normalised return; values are
clipped to [0, 1] as Continual-Dreamer's notebook clips at 0).

- performance      P = 1/N sum_i p_i(t_final)
- forgetting       F = 1/N sum_i [p_i(b_{i+1}) - p_i(t_final)]    (the last task forgets nothing)
- forward transfer FT_i = (AUC_i - AUC_ref,i) / (1 - AUC_ref,i), AUC over task i's own training window
                   (normalised to [0, 1]) against a single-task reference run of the same length;
                   FT = mean_i FT_i. Continual-Dreamer's code divides by (1 - AUC_i) instead; Continual
                   World and the paper divide by (1 - AUC_ref), as here.
"""

from __future__ import annotations

import pathlib

import numpy as np

Curve = tuple[np.ndarray, np.ndarray]  # (steps (K,), values (K,)), steps increasing


def value_at(curve: Curve, step: float) -> float:
    """The last evaluation at or before `step` (the value the agent had then); NaN before the first one."""
    steps, values = curve
    index = np.searchsorted(steps, step, side="right") - 1
    return float(np.clip(values[index], 0, 1)) if index >= 0 else float("nan")


def auc(curve: Curve, start: float, end: float) -> float:
    """Mean of the step function through the curve's points over [start, end] (rectangle rule), in [0, 1].

    Before the window's first evaluation the value is the last one before the window (0 if none).
    """
    steps, values = curve
    values = np.clip(np.asarray(values, np.float64), 0, 1)
    inside = (steps > start) & (steps < end)
    edges = np.concatenate([[start], steps[inside], [end]])
    before = value_at(curve, start)
    levels = np.concatenate([[0.0 if np.isnan(before) else before], values[inside]])
    return float((np.diff(edges) * levels).sum() / max(end - start, 1e-12))


def performance(curves: list[Curve], final_step: float) -> float:
    return float(np.mean([value_at(curve, final_step) for curve in curves]))


def forgetting(curves: list[Curve], boundaries: list[float]) -> float:
    """boundaries: N + 1 steps; task i trains in [boundaries[i], boundaries[i + 1])."""
    final = boundaries[-1]
    drops = [value_at(curve, boundaries[i + 1]) - value_at(curve, final) for i, curve in enumerate(curves)]
    return float(np.mean(drops))


def forward_transfer(curves: list[Curve], boundaries: list[float], references: list[Curve]) -> float:
    """references[i]: task i trained alone from scratch, its steps counted from 0."""
    transfers = []
    for i, (curve, reference) in enumerate(zip(curves, references)):
        start, end = boundaries[i], boundaries[i + 1]
        ours = auc(curve, start, end)
        ref = auc(reference, 0, end - start)
        transfers.append((ours - ref) / max(1 - ref, 1e-12))
    return float(np.mean(transfers))


def cl_metrics(curves: list[Curve], boundaries: list[float], references: list[Curve] | None = None) -> dict:
    result = {"performance": performance(curves, boundaries[-1]), "forgetting": forgetting(curves, boundaries)}
    if references is not None:
        result["forward_transfer"] = forward_transfer(curves, boundaries, references)
    return result


def bootstrap(values, reps: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over seeds with a percentile-bootstrap interval."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(len(values), size=(reps, len(values)))].mean(1)
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "seeds": int(len(values))}


def read_curves(logdir, metric: str, tasks: int, action_repeat: int = 1) -> list[Curve]:
    """Per eval task i, (env steps, values) of `eval_{metric}_{i}` in a run's metrics.jsonl (partial lines
    skipped; logged steps count frames, so they are divided by `action_repeat`)."""
    from torch_dreamer.tools.scores import read_metrics

    points: list[list] = [[] for _ in range(tasks)]
    for row in read_metrics(pathlib.Path(logdir) / "metrics.jsonl"):
        for i in range(tasks):
            if f"eval_{metric}_{i}" in row:
                points[i].append((row["step"] // max(action_repeat, 1), row[f"eval_{metric}_{i}"]))
    return [(np.array([s for s, _ in p]), np.array([v for _, v in p])) for p in points]


def reference_curve(folders, task_id: int, metric: str = "success") -> Curve:
    """Task `task_id`'s single-task reference curve, averaged over the reference runs in `folders` (each
    holding `task_{i}/metrics.jsonl`, as `dreamer continual reference` writes), on the first run's steps."""
    curves = []
    for folder in folders:
        path = pathlib.Path(folder) / f"task_{task_id}"
        if not (path / "metrics.jsonl").exists():
            raise FileNotFoundError(f"{path} holds no metrics.jsonl; make it with `dreamer continual reference`")
        curves.append(read_curves(path, metric, 1)[0])
    steps = curves[0][0]
    return steps, np.mean([np.interp(steps, s, v) for s, v in curves], axis=0)
