"""Aggregate scores across tasks: human-normalised Atari statistics, IQM and optimality gap with
stratified-bootstrap confidence intervals, aggregate learning curves and per-task final scores.

IQM and optimality gap follow the definitions of the `rliable` package (Agarwal et al. 2021, "Deep RL at
the edge of the statistical precipice"): IQM is the 25%-trimmed mean of all (run, task) scores pooled;
the optimality gap is `1 - mean(min(score, 1))` over the same pool; intervals are percentile intervals of
a bootstrap that resamples runs within each task. rliable itself is not used: version 1.2.0 pulls in
`arch`, which fails to import next to pandas 3 on numpy 2, and the statistics are a few lines of numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torch_dreamer.tools.scores import REFERENCE_KEYS, Run, bin_size_for, final_values, group_runs, seed_matrix

# Stat name -> (normalisation or None for raw scores, reducer over tasks).
STATS = {
    "gamer_median": ("gamer", "median"),
    "gamer_mean": ("gamer", "mean"),
    "record_mean": ("record", "mean"),
    "clip_record_mean": ("record", "clip_mean"),
    "mean": (None, "mean"),
    "median": (None, "median"),
}
ATARI_STATS = ("gamer_median", "gamer_mean", "record_mean", "clip_record_mean")
ATARI_FINAL = ATARI_STATS + ("gamer_iqm", "gamer_optimality_gap")
OTHER_FINAL = ("mean", "median")
LABELS = {
    "gamer_median": "Gamer Median",
    "gamer_mean": "Gamer Mean",
    "record_mean": "Record Mean",
    "clip_record_mean": "Clip Record Mean",
    "gamer_iqm": "Gamer IQM",
    "gamer_optimality_gap": "Optimality Gap",
    "mean": "Mean",
    "median": "Median",
    "seeds": "Runs Reaching Step",
}
NORM_KEYS = {"gamer": ("random", "human_gamer"), "record": ("random", "human_record")}


# ------------------------------------------------------------------------------------ normalisation


def has_reference(task: str, baselines, kind: str | None) -> bool:
    if kind is None:
        return True
    low, high = NORM_KEYS[kind]
    scores = baselines.get(task, {})
    return low in scores and high in scores and scores[high] != scores[low]


def normalise(scores, task: str, baselines, kind: str | None):
    """(score - random) / (reference - random) with reference human_gamer or human_record; kind None is raw."""
    if kind is None:
        return np.asarray(scores, float)
    if not has_reference(task, baselines, kind):
        raise KeyError(f"no {' and '.join(NORM_KEYS[kind])} scores for {task}")
    low, high = (baselines[task][k] for k in NORM_KEYS[kind])
    return (np.asarray(scores, float) - low) / (high - low)


def reduce_tasks(values: np.ndarray, reducer: str) -> np.ndarray:
    """Reduce the last axis (tasks). clip_mean clips each task at 1 (the record) before averaging."""
    if reducer == "median":
        return np.median(values, -1)
    if reducer == "clip_mean":
        return np.minimum(values, 1.0).mean(-1)
    return values.mean(-1)


# ----------------------------------------------------------------------------- rliable-style statistics


def trimmed_mean(values: np.ndarray, cut: float = 0.25) -> np.ndarray:
    """Mean of the middle of the last axis, dropping int(cut * n) values from each end (scipy's trim_mean)."""
    values = np.sort(values, -1)
    n = values.shape[-1]
    low = int(cut * n)
    return values[..., low : n - low].mean(-1)


def _task_means(samples: list[np.ndarray]) -> np.ndarray:
    return np.stack([s.mean(-1) for s in samples], -1)


def _pooled(samples: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(samples, -1)


# Each takes per-task arrays of shape (reps, runs_of_task) and returns (reps,). Median and means reduce
# the per-task mean over runs (the paper's Table 1); IQM and the gap pool all runs (rliable).
FINAL_FNS = {
    "median": lambda s: np.median(_task_means(s), -1),
    "mean": lambda s: _task_means(s).mean(-1),
    "clip_mean": lambda s: np.minimum(_task_means(s), 1.0).mean(-1),
    "iqm": lambda s: trimmed_mean(_pooled(s), 0.25),
    "optimality_gap": lambda s: 1.0 - np.minimum(_pooled(s), 1.0).mean(-1),
}


def stratified_bootstrap(samples, fn, reps=2000, seed=0, confidence=0.95):
    """(point, low, high): the statistic and a percentile interval from resampling runs within each task."""
    samples = [np.asarray(s, float) for s in samples]
    point = float(fn([s[None] for s in samples])[0])
    if reps <= 0 or all(len(s) < 2 for s in samples):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = [s[rng.integers(0, len(s), size=(reps, len(s)))] for s in samples]
    tail = 50 * (1 - confidence)
    low, high = np.percentile(fn(resampled), [tail, 100 - tail])
    return point, float(low), float(high)


def final_stat_spec(stat: str) -> tuple[str | None, str]:
    """(normalisation, FINAL_FNS key) of a final-score statistic."""
    if stat in STATS:
        return STATS[stat]
    kind, _, name = stat.partition("_")
    return kind, name


# ------------------------------------------------------------------------------------ aggregate curves


@dataclass
class Curve:
    """One method's aggregate over tasks: `line` over `xs`, and one curve per seed index in `seeds`."""

    method: str
    xs: np.ndarray
    line: np.ndarray
    seeds: np.ndarray
    tasks: int


def aggregate_curve(method: str, by_task: dict[str, list[Run]], baselines, stat: str) -> Curve | None:
    """Aggregate binned runs of one method over tasks, at x values where every task has a value.

    The line reduces each task's mean over seeds. For the spread, the k-th seed of every task forms a
    pseudo-run; a task with fewer seeds (or a seed that has not reached x) contributes its seed mean
    there, so a missing run does not make the aggregate jump.
    """
    kind, reducer = STATS[stat]
    tasks = sorted(t for t in by_task if has_reference(t, baselines, kind))
    if not tasks:
        return None
    mats = {t: seed_matrix(by_task[t]) for t in tasks}
    grid = np.unique(np.concatenate([xs for xs, _ in mats.values()]))
    nseeds = max(len(ys) for _, ys in mats.values())
    cube = np.full((nseeds, len(tasks), len(grid)), np.nan)
    for i, task in enumerate(tasks):
        xs, ys = mats[task]
        cube[: len(ys), i, np.searchsorted(grid, xs)] = normalise(ys, task, baselines, kind)
    with np.errstate(all="ignore"):
        counts = np.isfinite(cube).sum(0)
        means = np.where(counts > 0, np.nansum(cube, 0) / np.maximum(counts, 1), np.nan)
    valid = np.isfinite(means).all(0)
    filled = np.where(np.isfinite(cube), cube, means[None])[:, :, valid]
    line = reduce_tasks(means[:, valid].T, reducer)
    seeds = reduce_tasks(np.moveaxis(filled, 1, -1), reducer)
    return Curve(method, grid[valid], line, seeds, len(tasks))


def suite_of(task: str) -> str:
    """The suite prefix of an official task name: atari_pong -> atari, dmc_walker_walk -> dmc."""
    return task.split("_", 1)[0]


def common_tasks(by_method: dict[str, dict]) -> dict[str, dict]:
    """Restrict every method to the tasks all methods have, so aggregates compare like with like
    (our three games against the official 55 are scored on those three). Disjoint sets stay as they are."""
    shared = set.intersection(*(set(tasks) for tasks in by_method.values())) if by_method else set()
    if not shared:
        return by_method
    return {m: {t: v for t, v in tasks.items() if t in shared} for m, tasks in by_method.items()}


def aggregate_curves(runs: list[Run], baselines, stat: str) -> list[Curve]:
    by_method: dict[str, dict[str, list[Run]]] = {}
    for (task, method), group in group_runs(runs).items():
        by_method.setdefault(method, {})[task] = group
    by_method = common_tasks(by_method)
    curves = [aggregate_curve(m, by_task, baselines, stat) for m, by_task in sorted(by_method.items())]
    return [c for c in curves if c is not None and len(c.xs)]


def seed_count_curves(runs: list[Run]) -> list[Curve]:
    """How many runs of each method have reached each x: shows which runs are still training."""
    curves = []
    for method in sorted({r.method for r in runs}):
        ends = np.array([r.xs.max() for r in runs if r.method == method and len(r.xs)])
        grid = np.unique(np.concatenate([[0.0], ends]))
        count = (ends[None, :] >= grid[:, None]).sum(1).astype(float)
        tasks = len({r.task for r in runs if r.method == method})
        curves.append(Curve(method, grid, count, count[None], tasks))
    return curves


# ---------------------------------------------------------------------------------------- final scores


def final_scores(runs: list[Run], bins=-1, step=None) -> dict[tuple[str, str], tuple[float, np.ndarray]]:
    """{(task, method): (step, per-seed final values)}. A run counts if it came within one bin of the step."""
    out = {}
    for (task, method), group in group_runs(runs).items():
        tolerance = bin_size_for(task, bins) or bin_size_for(task, -1)
        out[(task, method)] = final_values(group, step, tolerance)
    return out


def aggregate_finals(finals, baselines, agents=(), reps=2000, seed=0) -> list[dict]:
    """One row per method and per published agent in `agents`: each statistic as (point, low, high).

    Atari tasks get the human-normalised statistics, other tasks the mean and median of raw scores.
    Methods are scored on the tasks they all have (see `common_tasks`), published agents on those too.
    """
    rows = []
    by_suite: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    steps: dict[tuple[str, str], list[float]] = {}
    for (task, method), (step, values) in finals.items():
        if len(values):
            suite = suite_of(task)
            by_suite.setdefault(suite, {}).setdefault(method, {})[task] = values
            steps.setdefault((suite, method), []).append(step)
    for suite, methods in sorted(by_suite.items()):
        methods = common_tasks(methods)
        stats = ATARI_FINAL if suite == "atari" else OTHER_FINAL
        for method, per_task in sorted(methods.items()):
            row = _final_row(method, suite, per_task, baselines, stats, reps, seed)
            row["step"] = [min(steps[suite, method]), max(steps[suite, method])]
            rows.append(row)
        if suite == "atari":
            tasks = set().union(*(set(p) for p in methods.values()))
            rows += _agent_rows(baselines, sorted(tasks), sorted(set(agents) - set(REFERENCE_KEYS)), stats)
    return rows


def _final_row(method, suite, per_task, baselines, stats, reps, seed) -> dict:
    row = {"method": method, "suite": suite, "tasks": len(per_task), "runs": int(sum(map(len, per_task.values())))}
    for stat in stats:
        kind, fn = final_stat_spec(stat)
        tasks = sorted(t for t in per_task if has_reference(t, baselines, kind))
        samples = [normalise(per_task[t], t, baselines, kind) for t in tasks]
        row[stat] = stratified_bootstrap(samples, FINAL_FNS[fn], reps, seed) if samples else None
        if len(tasks) != len(per_task):
            row["tasks_normalised"] = len(tasks)
    return row


def _agent_rows(baselines, tasks, agents, stats) -> list[dict]:
    """Rows for published agents' final scores (one number per task, so no interval)."""
    rows = []
    for agent in agents:
        per_task = {t: np.array([baselines[t][agent]]) for t in tasks if agent in baselines.get(t, {})}
        if not per_task:
            continue
        row = _final_row(agent, "atari", per_task, baselines, stats, 0, 0)
        row["published"] = True
        rows.append(row)
    return rows


def task_table(runs: list[Run], baselines, bins=-1, step=None) -> list[dict]:
    """Per task, every method's final score at one common step: `step`, or the furthest all methods reached."""
    rows = []
    groups = group_runs(runs)
    for task in sorted({t for t, _ in groups}):
        methods = sorted(m for t, m in groups if t == task)
        common = min(max(float(r.xs.max()) for r in groups[(task, m)] if len(r.xs)) for m in methods)
        at = common if step is None else step
        tolerance = bin_size_for(task, bins) or bin_size_for(task, -1)
        cells = {}
        for method in methods:
            _, values = final_values(groups[(task, method)], at, tolerance)
            cells[method] = values
        rows.append({"task": task, "step": at, "methods": cells, "baselines": baselines.get(task, {})})
    return rows
