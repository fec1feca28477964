"""`dreamer plot`: learning curves, aggregate scores and comparison with published baselines.

Reads only `metrics.jsonl` files (layout `task/method/seed/**/metrics.jsonl`) and run files in the
official DreamerV2 format, so the official score files plot beside our runs. Writes `curves.png`,
`curves.pdf`, `runs.json` (the binned runs, official format) and `aggregates.json`, and prints the
aggregate scores; `--table` prints each task's final scores at a common step.

Library use: `load_inputs`, `filter_runs`, `bin_runs` (scores.py), `final_scores`, `aggregate_finals`,
`aggregate_curves`, `normalise` (aggregate.py) and `plot_curves` below.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torch_dreamer.errors import UserError
from torch_dreamer.tools import aggregate as agg_lib
from torch_dreamer.tools import report
from torch_dreamer.tools.scores import (
    AGGS,
    REFERENCE_KEYS,
    bin_runs,
    filter_runs,
    group_runs,
    load_inputs,
    runs_to_json,
    seed_matrix,
    seed_stats,
    select_baselines,
)

ADD_CHOICES = ("auto", "seeds", "none") + tuple(agg_lib.STATS)
MARKER_POINTS = 12  # lines with at most this many points get a marker on each
DEFAULT_BASELINES = ["random", "human_gamer", "rainbow_sticky", "d4pg", "impala"]
# The official score files beside a source checkout (repo/../shared); read when present, never shipped.
OFFICIAL_BASELINES = (
    Path(__file__).resolve().parents[2].parent / "shared/reference-data/dreamerv2-scores/baselines.json"
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError, so mistakes print as one line like every other CLI error."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


EXAMPLES = """bins: -1 (default) takes the official width (Atari 1e6 frames, DMC/Crafter 1e4, else 1e5), or
about 20 bins over the run when it spans fewer than 5 of those (short runs); 0 plots the points unbinned.

examples:
  dreamer plot --indir logdir/cartpole --outdir plots/cartpole      # one run (layout: any folder works)
  dreamer plot --indir ~/logdir --outdir ~/plots --table            # task/method/seed/**/metrics.jsonl
  dreamer plot --indir logs ../shared/reference-data/dreamerv2-scores --tasks atari_pong --methods ours '^dreamerv2$' --outdir plots
  dreamer plot --indir ~/logdir --yaxis train_return --bins 5e4 --outdir plots/train
"""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dreamer plot", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--indir", nargs="+", required=True, help="run folders (task/method/seed/**/metrics.jsonl) or run files"
    )
    p.add_argument("--outdir", help="where curves.png, curves.pdf, runs.json and aggregates.json go")
    p.add_argument("--xaxis", default="step", help="x key in metrics.jsonl (frames)")
    p.add_argument("--yaxis", default="eval_return", help="y key in metrics.jsonl")
    p.add_argument(
        "--bins", type=float, default=-1, help="bin width in frames; -1: Atari 1e6, DMC/Crafter 1e4, else 1e5; 0: none"
    )
    p.add_argument("--tasks", nargs="+", default=[], metavar="REGEX")
    p.add_argument("--methods", nargs="+", default=[], metavar="REGEX")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=DEFAULT_BASELINES,
        metavar="NAME",
        help="baseline names (regexes) drawn as lines and scored; give none to draw none",
    )
    p.add_argument("--baselines-file", nargs="+", default=[], metavar="FILE", help="{task: {method: score}} files")
    p.add_argument(
        "--agg", choices=AGGS, default="std1", help="over seeds: mean+-std, median with percentile band, or none"
    )
    p.add_argument("--add", nargs="+", choices=ADD_CHOICES, default=["auto"], help="extra panels")
    p.add_argument("--cols", type=int, default=6)
    p.add_argument("--size", nargs=2, type=float, default=[4.0, 3.0], metavar=("W", "H"), help="inches per panel")
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--xlim", nargs=2, type=float, metavar=("A", "B"))
    p.add_argument("--ylim", nargs=2, type=float, metavar=("A", "B"), help="y range of the task panels")
    p.add_argument("--step", type=float, help="score final values at this frame count (default: the last reached)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples for confidence intervals")
    p.add_argument("--table", action="store_true", help="print each task's final scores at a common step")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0


def run(args) -> int:
    if not args.outdir and not args.table:
        raise UserError("dreamer plot: give --outdir (to draw) or --table (to print final scores)")
    if args.cols < 1:
        raise UserError("dreamer plot: --cols must be at least 1")
    continual = draw_continual(args)
    try:
        loaded = load_inputs(args.indir, args.xaxis, args.yaxis, args.baselines_file, [OFFICIAL_BASELINES])
    except UserError:
        if continual:  # continual runs only: their per-task figure is all there is to draw
            return 0
        raise
    if not loaded.runs and continual:
        return 0  # continual runs only: the notes would say they lack the plain key, which they always do
    for note in dict.fromkeys(loaded.notes):
        print(f"note: {note}", file=sys.stderr)
    if not loaded.runs:
        raise UserError(f"no run under {' '.join(args.indir)} has '{args.yaxis}' values yet")
    selected = filter_runs(loaded.runs, args.tasks, args.methods)
    runs = bin_runs(selected, args.bins)
    if not runs:
        raise UserError(f"the selected runs have no finite '{args.yaxis}' values")
    tasks = sorted({r.task for r in runs})
    chosen = select_baselines(loaded.baselines, args.baselines, tasks)
    names = sorted({m for scores in chosen.values() for m in scores}, key=_baseline_order)
    ends = run_ends(selected)
    finals = agg_lib.final_scores(runs, args.bins, args.step)
    if args.step is None:  # label final scores with the step reached, not the end of its bin
        finals = {key: (min(step, ends.get(key, step)), values) for key, (step, values) in finals.items()}
    if args.step is not None and not any(len(values) for _, values in finals.values()):
        print(f"note: no run has reached --step {report.fmt_step(args.step)} (within one bin)", file=sys.stderr)
    rows = agg_lib.aggregate_finals(finals, loaded.baselines, names, args.reps)
    if rows:
        print(report.aggregate_report(rows, args.reps))
    if args.table:
        table = agg_lib.task_table(runs, loaded.baselines, args.bins, args.step)
        if args.step is None:
            for row in table:
                reached = [ends[(row["task"], m)] for m in row["methods"] if (row["task"], m) in ends]
                row["step"] = min([row["step"], *reached])
        print("\n" + report.task_report(table, names))
    if args.outdir:
        try:
            write_outputs(Path(args.outdir), runs, chosen, loaded.baselines, rows, args)
        except OSError as exc:
            raise UserError(f"--outdir {args.outdir}: {exc.strerror or exc}") from None
    return 0


def draw_continual(args) -> int:
    """`continual.png`/`.pdf`: per-task curves of every continual run, task boundaries dotted. Returns the
    number of continual runs found (their per-task `{yaxis}_{i}` keys)."""
    from torch_dreamer.tools.cl_plot import continual_panels

    panels = continual_panels(args.indir, args.xaxis, args.yaxis)
    if panels and args.outdir:
        fig = plot_curves(panels, args.cols, tuple(args.size), args.xlim, args.ylim)
        outdir = Path(args.outdir)
        try:
            outdir.mkdir(parents=True, exist_ok=True)
            save_figure(fig, outdir / "continual", args.dpi)
        except OSError as exc:
            raise UserError(f"--outdir {args.outdir}: {exc.strerror or exc}") from None
        print(f"Wrote {outdir / 'continual.png'} ({len(panels)} continual runs, one line per task)")
    return len(panels)


def run_ends(runs) -> dict[tuple[str, str], float]:
    """{(task, method): the furthest step with a finite value any of its seeds reached}, before binning.

    Binned points are labelled with the end of their bin, so a 2000-frame run lands in the bin labelled
    with the bin width (1M for Atari); the tables say the step actually reached instead.
    """
    ends: dict[tuple[str, str], float] = {}
    for run in runs:
        ok = np.isfinite(run.xs) & np.isfinite(run.ys)
        if ok.any():
            key = (run.task, run.method)
            ends[key] = max(ends.get(key, -math.inf), float(run.xs[ok].max()))
    return ends


def _baseline_order(name: str):
    return (REFERENCE_KEYS.index(name) if name in REFERENCE_KEYS else len(REFERENCE_KEYS), name)


def write_outputs(outdir: Path, runs, chosen, baselines, rows, args) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    panels = task_panels(runs, chosen, args.agg) + extra_panels(runs, baselines, rows, args.add, args.agg)
    save_figure(plot_curves(panels, args.cols, args.size, args.xlim, args.ylim), outdir / "curves", args.dpi)
    (outdir / "runs.json").write_text(json.dumps(runs_to_json(runs)))
    (outdir / "aggregates.json").write_text(json.dumps(_jsonable(rows), indent=1))
    print(f"\nwrote {outdir}/curves.png, curves.pdf, runs.json, aggregates.json ({len(panels)} panels)")


def save_figure(fig, stem: Path, dpi: int) -> None:
    """`stem`.png and `stem`.pdf."""
    for suffix in ("png", "pdf"):
        fig.savefig(stem.with_suffix(f".{suffix}"), dpi=dpi)


def _jsonable(value):
    """Tuples to lists and NaN to null, so aggregates.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------- panels


@dataclass
class Line:
    label: str
    xs: np.ndarray
    ys: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    seeds: np.ndarray | None = None  # drawn thin instead of a band with --agg none
    step: bool = False  # a staircase (counts) rather than a curve


@dataclass
class Panel:
    title: str
    lines: list[Line] = field(default_factory=list)
    hlines: dict[str, float] = field(default_factory=dict)
    task: bool = True  # --ylim applies to task panels only: aggregates have their own scale
    vlines: list[float] = field(default_factory=list)  # continual runs: steps where the training task changes


def pretty(task: str) -> str:
    """atari_ms_pacman -> Atari Ms Pacman, dmc_walker_walk -> DMC Walker Walk."""
    suite, _, rest = task.partition("_")
    return f"{report.SUITE_NAMES.get(suite, suite.capitalize())} {rest.replace('_', ' ').title()}".strip()


def make_line(label: str, xs, ys: np.ndarray, agg: str) -> Line:
    """A method's line from a (seeds, x) matrix: a band from the seed spread, or every seed with 'none'."""
    if agg == "none":
        with np.errstate(all="ignore"):
            mean = np.nanmean(ys, 0) if np.isfinite(ys).any() else np.full(len(xs), np.nan)
        return Line(label, xs, mean, seeds=ys)
    line, low, high = seed_stats(ys, agg)
    return Line(label, xs, line, low, high)


def task_panels(runs, chosen, agg: str) -> list[Panel]:
    groups = group_runs(runs)
    panels = []
    for task in sorted({t for t, _ in groups}):
        panel = Panel(pretty(task), hlines=dict(chosen.get(task, {})))
        for (t, method), group in sorted(groups.items()):
            if t == task:
                xs, ys = seed_matrix(group)
                panel.lines.append(make_line(method, xs, ys, agg))
        panels.append(panel)
    return panels


def expand_add(add: list[str], tasks: list[str]) -> list[str]:
    """'auto': the Atari human-normalised panels when Atari runs are present, mean and median when another
    suite has two or more tasks."""
    suites = [agg_lib.suite_of(t) for t in tasks]
    names = []
    for name in add:
        if name == "auto":
            if "atari" in suites:
                names += list(agg_lib.ATARI_STATS)
            if any(suites.count(s) > 1 for s in set(suites) - {"atari"}):
                names += ["mean", "median"]
        elif name != "none":
            names.append(name)
    return list(dict.fromkeys(names))


def extra_panels(runs, baselines, rows, add: list[str], agg: str) -> list[Panel]:
    panels = []
    for stat in expand_add(add, sorted({r.task for r in runs})):
        if stat == "seeds":
            lines = [Line(c.method, c.xs, c.line, step=True) for c in agg_lib.seed_count_curves(runs)]
            panels.append(Panel(agg_lib.LABELS["seeds"], lines, task=False))
            continue
        # Normalised stats need reference scores (Atari); raw means are taken per suite, never across suites.
        normalised = agg_lib.STATS[stat][0] is not None
        suites = ["atari"] if normalised else sorted({agg_lib.suite_of(r.task) for r in runs} - {"atari"})
        for suite in suites:
            mine = [r for r in runs if agg_lib.suite_of(r.task) == suite]
            panel = aggregate_panel(mine, baselines, rows, stat, agg, "" if normalised else suite)
            if panel is not None:
                panels.append(panel)
    return panels


def aggregate_panel(runs, baselines, rows, stat: str, agg: str, suite: str) -> Panel | None:
    curves = agg_lib.aggregate_curves(runs, baselines, stat)
    if not curves:
        return None
    lines = [make_line(c.method, c.xs, c.seeds, agg) for c in curves]
    for line, curve in zip(lines, curves, strict=True):
        line.ys = curve.line
    # Published agents' aggregates, as horizontal lines, e.g. Rainbow's gamer median of 1.47.
    hlines = {r["method"]: r[stat][0] for r in rows if r.get("published") and r.get(stat)}
    ntasks = max(c.tasks for c in curves)
    name = f"{report.SUITE_NAMES.get(suite, suite.capitalize())} " if suite else ""
    title = f"{name}{agg_lib.LABELS[stat]} ({ntasks} task{'s' if ntasks > 1 else ''})"
    return Panel(title, lines, hlines, task=False)


# -------------------------------------------------------------------------------------------- drawing


def _step_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: report.fmt_step(x) if x else "0")


def plot_curves(panels: list[Panel], cols=6, size=(4.0, 3.0), xlim=None, ylim=None):
    """Draw the panels on a grid and return the matplotlib Figure (Agg canvas; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows + 0.6))
    FigureCanvasAgg(fig)
    colors = _colors(panels)
    handles = {}
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_panel(ax, panel, colors, handles)
        ax.xaxis.set_major_formatter(_step_formatter())
        ax.yaxis.set_major_formatter(_step_formatter())
        if xlim:
            ax.set_xlim(*xlim)
        if ylim and panel.task:
            ax.set_ylim(*ylim)
    # Methods first, then baselines, whatever panel each first appeared in.
    handles = {k: handles[k] for k in sorted(handles, key=lambda k: k in _hline_names(panels))}
    legend_rows = math.ceil(len(handles) / min(6, max(1, len(handles))))
    bottom = min(0.4, (0.35 + 0.25 * legend_rows) / fig.get_figheight())
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=min(6, max(1, len(handles))), frameon=False
    )
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def _hline_names(panels) -> set[str]:
    methods = {line.label for p in panels for line in p.lines}
    return {name for p in panels for name in p.hlines} - methods


def _colors(panels) -> dict[str, str]:
    """One color per method across all panels; baselines get dark, dashed lines of their own."""
    import matplotlib

    methods = list(dict.fromkeys(line.label for p in panels for line in p.lines))
    palette = matplotlib.colormaps["tab10"].colors
    colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    greys = ["#222222", "#777777", "#a0522d", "#6b8e23", "#483d8b", "#b8860b"]
    names = list(dict.fromkeys(name for p in panels for name in p.hlines))
    colors.update({n: greys[i % len(greys)] for i, n in enumerate(names) if n not in colors})
    return colors


def _draw_panel(ax, panel: Panel, colors, handles) -> None:
    for line in panel.lines:
        color = colors[line.label]
        if line.seeds is not None:
            for seed in line.seeds:
                ok = np.isfinite(seed)
                ax.plot(line.xs[ok], seed[ok], color=color, lw=1, alpha=0.6)
        # Empty bins are skipped rather than drawn as gaps: evaluations every 30k frames with 10k bins
        # would otherwise leave isolated points.
        ok = np.isfinite(line.ys)
        draw = ax.step if line.step else ax.plot
        # A line of one or a few points (a short run) would be invisible or easy to miss without markers.
        style = {"where": "post"} if line.step else ({"marker": "o", "ms": 4} if ok.sum() <= MARKER_POINTS else {})
        (handle,) = draw(line.xs[ok], line.ys[ok], color=color, lw=1.5, **style)
        handles.setdefault(line.label, handle)
        if line.low is not None:
            band = ok & np.isfinite(line.low) & np.isfinite(line.high)
            ax.fill_between(line.xs[band], line.low[band], line.high[band], color=color, alpha=0.2, lw=0)
    for name, value in panel.hlines.items():
        handles.setdefault(name, ax.axhline(value, color=colors[name], ls="--", lw=1))
    for step in panel.vlines:
        handles.setdefault("task boundary", ax.axvline(step, color="black", ls=":", lw=1))
    ax.set_title(panel.title)
    ax.grid(alpha=0.3)


if __name__ == "__main__":
    raise SystemExit(main())
