"""Score data for `dreamer plot`: loading runs and baselines, binning, seed statistics, final scores.

Everything here reads files only; nothing imports torch or the agent, so plotting works on any machine.
A run is one (task, method, seed) learning curve with x in frames. Two inputs are understood:
- our logdirs laid out as `task/method/seed/**/metrics.jsonl`, one JSON object per line;
- run files in the official DreamerV2 format, a JSON list of `{task, method, seed, xs, ys}`.
JSON files shaped `{task: {method: score}}` are baseline files (final scores of published agents).
"""

from __future__ import annotations

import functools
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torch_dreamer.errors import UserError

DATA_DIR = Path(__file__).resolve().parent / "data"
# The three reference scores used for normalisation; the shipped, cited values win over any file's.
REFERENCE_KEYS = ("random", "human_gamer", "human_record")
# Entries of the official DMC file that hold precomputed aggregates (x in percent), not tasks.
SKIP_TASK_PREFIX = "stats_"


@dataclass
class Run:
    task: str
    method: str
    seed: str
    xs: np.ndarray
    ys: np.ndarray
    source: str = ""

    @property
    def name(self) -> str:
        return f"{self.task}/{self.method}/{self.seed}"


@dataclass
class Loaded:
    """What `load_inputs` found: runs, baseline scores and notes for the user (runs without data...)."""

    runs: list[Run] = field(default_factory=list)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sources: dict[tuple[str, str, str], str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- loading


def read_metrics(path: Path) -> list[dict]:
    """Parse a metrics.jsonl file, skipping lines that are not JSON objects.

    A run still writing leaves a partial last line, and a run killed while writing leaves one that a
    resumed run (before torch_dreamer started it on a fresh line) appended to; such lines are skipped
    with one warning per file naming how many, never failing the whole plot.
    """
    rows, skipped = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            skipped.append(number)
            continue
        rows.append(row)
    if skipped:
        import warnings

        warnings.warn(f"{path}: skipped {len(skipped)} unreadable line(s) (first: line {skipped[0]}), "
                      "e.g. a partial line written when the run was killed", stacklevel=2)
    return rows


def run_from_metrics(path: Path, root: Path, xaxis: str, yaxis: str) -> tuple[Run | None, str | None]:
    """One run from `root/task/method/seed/**/metrics.jsonl`; returns (None, note) when it has no y values."""
    parts = path.relative_to(root).parts[:-1]
    if len(parts) >= 3:
        task, method, seed = parts[:3]
    else:
        task, method, seed = _single_run_identity(path)
    rows = read_metrics(path)
    points = [(r[xaxis], r[yaxis]) for r in rows if _number(r.get(xaxis)) and _number(r.get(yaxis))]
    if not points:
        keys = sorted({k for r in rows for k in r} - {xaxis})
        shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "none"
        note = f"{task}/{method}/{seed} has no '{yaxis}' values yet ({len(rows)} metric lines; found: {shown})"
        return None, note
    xs, ys = np.array(points, dtype=float).T
    return Run(task, method, seed, xs, ys, str(path)), None


def _single_run_identity(path: Path) -> tuple[str, str, str]:
    """(task, method, seed) of a run folder given directly (e.g. `--indir logdir/cartpole`), from the
    `config.yaml` that `dreamer train` writes beside metrics.jsonl; the method is the folder's name."""
    config_path = path.parent / "config.yaml"
    if config_path.is_file():
        import yaml

        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError:
            config = {}
        if isinstance(config, dict) and isinstance(config.get("task"), str):
            return config["task"], path.parent.resolve().name, str(config.get("seed", 0))
    raise UserError(f"{path}: expected the layout task/method/seed/**/metrics.jsonl, or a run folder with "
                    "its config.yaml")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None


RUN_KEYS = {"task", "method", "seed", "xs", "ys"}


def file_kind(data) -> str | None:
    """'runs' for an official run list, 'baselines' for {task: {method: score}}, None for other JSON."""
    if isinstance(data, list) and data and all(isinstance(d, dict) and RUN_KEYS <= set(d) for d in data):
        return "runs"
    if isinstance(data, dict) and data and all(isinstance(v, dict) for k, v in data.items() if not k.startswith("_")):
        return "baselines"
    return None


def runs_from_list(data: list, path: Path) -> list[Run]:
    """Runs from an official-format list; precomputed `stats_*` entries are not tasks and are dropped."""
    runs = []
    for i, item in enumerate(data):
        try:
            xs = np.asarray(item["xs"], dtype=float)
            ys = np.asarray([np.nan if y is None else y for y in item["ys"]], dtype=float)
        except (TypeError, ValueError):
            raise UserError(f"{path}: entry {i} ({item['task']}): xs and ys must be lists of numbers") from None
        if xs.shape != ys.shape or xs.ndim != 1:
            raise UserError(f"{path}: entry {i} ({item['task']}) has xs and ys of different lengths")
        if str(item["task"]).startswith(SKIP_TASK_PREFIX):
            continue
        runs.append(Run(str(item["task"]), str(item["method"]), str(item["seed"]), xs, ys, str(path)))
    return runs


def check_baselines(data: dict, path: Path) -> dict[str, dict[str, float]]:
    out = {}
    for task, scores in data.items():
        if task.startswith("_"):
            continue  # metadata such as _source
        if not isinstance(scores, dict):
            raise UserError(f"{path}: expected {{task: {{method: score}}}}; '{task}' maps to {type(scores).__name__}")
        out[task] = {m: float(v) for m, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def add_run(loaded: Loaded, run: Run) -> None:
    """Keep the first of two runs with the same task/method/seed (e.g. a runs.json written inside --indir)."""
    key = (run.task, run.method, run.seed)
    if key in loaded.sources:
        note = f"{run.source}: skipped the runs already read from {loaded.sources[key]}"
        if note not in loaded.notes:
            loaded.notes.append(note)
        return
    loaded.sources[key] = run.source
    loaded.runs.append(run)


def load_json_file(path: Path, loaded: Loaded, explicit: bool, quiet: bool = False) -> bool:
    """Load a run or baselines file; returns whether it was one. JSON files met while walking a folder
    that are neither (configs, our aggregates.json) are ignored; a file named on the command line is not."""
    try:
        data = read_json(path)
    except UserError:
        if explicit:
            raise
        loaded.notes.append(f"{path}: not valid JSON; skipped")
        return False
    kind = file_kind(data)
    if kind == "runs":
        for run in runs_from_list(data, path):
            add_run(loaded, run)
    elif kind == "baselines":
        merge_baselines(loaded, check_baselines(data, path), path, quiet)
    elif explicit:
        raise UserError(
            f"{path}: expected a list of {{task, method, seed, xs, ys}} runs or {{task: {{method: score}}}}"
        )
    return kind is not None


def load_folder(indir: Path, loaded: Loaded, xaxis: str, yaxis: str) -> None:
    found = False
    for path in sorted(indir.rglob("metrics.jsonl")):
        found = True
        run, note = run_from_metrics(path, indir, xaxis, yaxis)
        if run is None:
            loaded.notes.append(note)
        else:
            add_run(loaded, run)
    for path in sorted(indir.rglob("*.json")):
        found = load_json_file(path, loaded, explicit=False) or found
    if not found:
        raise UserError(f"--indir {indir}: no metrics.jsonl files (task/method/seed/**/metrics.jsonl) or run files")


def load_inputs(indirs, xaxis="step", yaxis="eval_return", baseline_files=(), default_files=()) -> Loaded:
    """Load every run and baseline under the given folders or files, over the shipped reference scores.

    `default_files` are baseline files found without being asked for (the official one beside a checkout):
    they load quietly, and only if present.
    """
    loaded = Loaded(baselines=shipped_baselines())
    for indir in map(Path, indirs):
        if not indir.exists():
            raise UserError(f"--indir {indir}: no such file or folder")
        if indir.is_file() and indir.suffix == ".jsonl":
            raise UserError(f"--indir {indir}: give the folder that holds task/method/seed/**/metrics.jsonl")
        if indir.is_file():
            load_json_file(indir, loaded, explicit=True)
        else:
            load_folder(indir, loaded, xaxis, yaxis)
    for path in map(Path, baseline_files):
        if not path.is_file():
            raise UserError(f"--baselines-file {path}: no such file")
        if file_kind(read_json(path)) != "baselines":
            raise UserError(f"--baselines-file {path}: expected {{task: {{method: score}}}}")
        load_json_file(path, loaded, explicit=True)
    for path in map(Path, default_files):
        if path.is_file():
            load_json_file(path, loaded, explicit=False, quiet=True)
    return loaded


# -------------------------------------------------------------------------------------------- baselines


def shipped_baselines() -> dict[str, dict[str, float]]:
    """Per-game random, human gamer and human record scores shipped with the package (see `_source`)."""
    return {task: dict(scores) for task, scores in _read_shipped().items()}


@functools.cache
def _read_shipped() -> dict[str, dict[str, float]]:
    path = DATA_DIR / "atari_baselines.json"
    return check_baselines(json.loads(path.read_text()), path)


def merge_baselines(loaded: Loaded, new: dict[str, dict[str, float]], path: Path, quiet: bool = False) -> None:
    """Add another file's scores. Shipped reference scores are kept where a file disagrees, because the
    official file has a shifted James Bond row; the user is told which tasks differ."""
    reference = _read_shipped()
    differ = []
    for task, scores in new.items():
        target = loaded.baselines.setdefault(task, {})
        for method, value in scores.items():
            ref = reference.get(task, {}).get(method)
            if method in REFERENCE_KEYS and ref is not None:
                if not math.isclose(ref, value, rel_tol=1e-6):
                    differ.append(f"{task} {method} {value:g}->{ref:g}")
                continue
            target[method] = value
    if differ and not quiet:
        loaded.notes.append(f"{path.name}: using the published reference scores where it differs: {', '.join(differ)}")


def select_baselines(baselines, patterns, tasks) -> dict[str, dict[str, float]]:
    """{task: {method: score}} for the given tasks and the baseline methods matching any regex."""
    regexes = compile_all(patterns, "--baselines")
    out = {}
    for task in tasks:
        chosen = {m: v for m, v in baselines.get(task, {}).items() if any(r.search(m) for r in regexes)}
        if chosen:
            out[task] = chosen
    return out


# ------------------------------------------------------------------------------------------- filtering


def compile_all(patterns, flag: str) -> list[re.Pattern]:
    try:
        return [re.compile(p) for p in patterns]
    except re.error as exc:
        raise UserError(f"{flag}: invalid regex ({exc})") from None


def filter_runs(runs: list[Run], tasks=None, methods=None) -> list[Run]:
    """Keep runs whose task and method match any of the regexes (re.search, like the official tool)."""
    task_res = compile_all(tasks or [], "--tasks")
    method_res = compile_all(methods or [], "--methods")
    kept = [
        r
        for r in runs
        if (not task_res or any(p.search(r.task) for p in task_res))
        and (not method_res or any(p.search(r.method) for p in method_res))
    ]
    if runs and not kept:
        have_tasks = ", ".join(sorted({r.task for r in runs})[:10])
        have_methods = ", ".join(sorted({r.method for r in runs}))
        raise UserError(
            f"no runs match --tasks {' '.join(tasks or ['.*'])} --methods {' '.join(methods or ['.*'])}; "
            f"tasks: {have_tasks}; methods: {have_methods}"
        )
    return kept


# -------------------------------------------------------------------------------------------- binning


def auto_bin_size(task: str) -> float:
    """The official defaults: Atari evaluates every 1M frames, DMC and Crafter every 10k."""
    if task.startswith("atari_"):
        return 1e6
    if task.startswith(("dmc_", "crafter_")):
        return 1e4
    return 1e5


def bin_size_for(task: str, bins: float) -> float:
    return auto_bin_size(task) if bins is None or bins < 0 else float(bins)


MIN_BINS = 5  # a task whose runs span fewer official bins than this gets narrower ones
SHORT_RUN_BINS = 20  # about this many bins for such a short run


def short_run_bin_size(span: float) -> float:
    """A round bin width (1, 2 or 5 x 10^k frames) giving about SHORT_RUN_BINS bins over `span` frames."""
    target = span / SHORT_RUN_BINS
    if not np.isfinite(target) or target <= 0:
        return 0.0
    exponent = 10.0 ** np.floor(np.log10(target))
    return float(max(m for m in (1, 2, 5) if m * exponent <= target * (1 + 1e-9)) * exponent)


def task_bin_sizes(runs: list[Run], bins: float | None = -1) -> dict[str, float]:
    """Bin width per task: `bins` when given (>= 0), else the official default for the suite, unless the
    task's longest run spans fewer than MIN_BINS of those: then a round width giving ~20 bins over it, so a
    3000-step CartPole run plots as a curve instead of one point (the default bin would be 1e5 frames).
    All runs of a task share the width, so their seeds and methods stay on one grid."""
    sizes = {}
    for task in {run.task for run in runs}:
        size = bin_size_for(task, bins)
        if bins is None or bins < 0:
            ends = [float(np.nanmax(r.xs)) for r in runs if r.task == task and np.isfinite(r.xs).any()]
            span = max(ends, default=0.0)
            if 0 < span < MIN_BINS * size:
                size = short_run_bin_size(span) or size
        sizes[task] = size
    return sizes


def bin_xy(xs, ys, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Average ys over bins (k-1)*size < x <= k*size, labelled k*size; empty bins are dropped.

    Labels are multiples of the bin size, so every seed of a task lands on the same grid. size <= 0
    keeps the points as they are (sorted by x).
    """
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if size <= 0 or not len(xs):
        order = np.argsort(xs, kind="stable")
        return xs[order], ys[order]
    # The small slack keeps x = k*size in bin k despite float error in x / size.
    index = np.ceil(xs / size - 1e-9).astype(np.int64)
    labels, inverse = np.unique(index, return_inverse=True)
    sums = np.bincount(inverse, weights=ys)
    counts = np.bincount(inverse)
    return labels * size, sums / counts


def bin_runs(runs: list[Run], bins: float | None = -1) -> list[Run]:
    """Bin every run (widths from `task_bin_sizes`); runs left without a finite point (all null) are dropped."""
    sizes = task_bin_sizes(runs, bins)
    out = []
    for run in runs:
        xs, ys = bin_xy(run.xs, run.ys, sizes[run.task])
        if len(xs):
            out.append(Run(run.task, run.method, run.seed, xs, ys, run.source))
    return out


def runs_to_json(runs: list[Run]) -> list[dict]:
    """The official run-file format, so binned runs can be plotted again or shared."""
    return [
        {"task": r.task, "method": r.method, "seed": r.seed, "xs": r.xs.tolist(), "ys": r.ys.tolist()} for r in runs
    ]


# ------------------------------------------------------------------------------------ seed statistics

AGGS = ("std1", "per0", "per5", "per25", "none")


def seed_matrix(runs: list[Run]) -> tuple[np.ndarray, np.ndarray]:
    """Stack runs of one task and method on the union of their x values: (xs, ys[seed, x]) with NaN holes."""
    xs = np.unique(np.concatenate([r.xs for r in runs])) if runs else np.zeros(0)
    ys = np.full((len(runs), len(xs)), np.nan)
    for i, run in enumerate(runs):
        ys[i, np.searchsorted(xs, run.xs)] = run.ys
    return xs, ys


def seed_stats(ys: np.ndarray, agg: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(line, low, high) over axis 0. std1: mean +- one std; perN: median with the N..100-N percentile band."""
    if agg not in AGGS or agg == "none":
        raise ValueError(f"unknown seed aggregation {agg!r}")
    # All-NaN columns (no seed has reached that x) are expected; they stay NaN without warnings.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if agg == "std1":
            mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
            return mean, mean - std, mean + std
        low = float(agg[3:])
        line = np.nanmedian(ys, 0)
        return line, np.nanpercentile(ys, low, 0), np.nanpercentile(ys, 100 - low, 0)


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """{(task, method): runs sorted by seed}."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.method), []).append(run)
    for key in groups:
        groups[key].sort(key=lambda r: (len(r.seed), r.seed))
    return groups


# --------------------------------------------------------------------------------------- final scores


def value_at(run: Run, step: float, tolerance: float) -> float:
    """The run's last value at or before `step`, or NaN if the run has not come within `tolerance` of it.

    The tolerance (one bin) lets a run whose last evaluation fell at 199M frames count at 200M, while a
    run that stopped early (or is still training) is left out rather than scored on its early value.
    """
    done = run.xs <= step + 1e-9 * max(1.0, abs(step))
    if not done.any() or run.xs[done].max() < step - tolerance - 1e-9 * max(1.0, abs(step)):
        return np.nan
    return float(run.ys[done][np.argmax(run.xs[done])])


def final_values(runs: list[Run], step: float | None, tolerance: float) -> tuple[float, np.ndarray]:
    """(step, per-seed values) of one task and method; step defaults to the furthest x any seed reached."""
    if step is None:
        step = max(float(r.xs.max()) for r in runs if len(r.xs))
    values = np.array([value_at(r, step, tolerance) for r in runs if len(r.xs)])
    return step, values[np.isfinite(values)]
