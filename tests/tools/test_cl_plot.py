"""`dreamer plot` on continual runs: one line per task, task boundaries where the training task changes."""

import json

from torch_dreamer.tools import cl_plot
from torch_dreamer.tools.plot import main
from torch_dreamer.tools.scores import read_metrics


def write_run(folder, boundaries=(100, 200), end=300):
    """A 3-task continual run's metrics.jsonl: training rows with `task`, evals of every task every 50 steps."""
    folder.mkdir(parents=True)
    rows = []
    for step in range(10, end, 10):
        task = sum(step >= b for b in boundaries)
        rows.append({"step": step, "task": task, "train_return": 0.0})
        if step % 50 == 0:
            rows.append({"step": step, **{f"eval_return_{i}": float(i == task) for i in range(3)}})
    (folder / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{partial")


def test_curves_and_boundaries_are_read_from_the_jsonl(tmp_path):
    write_run(tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert cl_plot.task_boundaries(rows, "step") == [100.0, 200.0]
    curves = cl_plot.task_curves(rows, "step", "eval_return")
    assert sorted(curves) == [0, 1, 2]
    xs, ys = curves[1]
    assert list(xs) == [50, 100, 150, 200, 250] and list(ys) == [0, 1, 1, 0, 0]


def test_dreamer_plot_draws_continual_runs(tmp_path, capsys):
    write_run(tmp_path / "runs" / "seed0")
    write_run(tmp_path / "runs" / "seed1", boundaries=(120, 240))
    assert main(["--indir", str(tmp_path / "runs"), "--outdir", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "continual.png").stat().st_size > 1000
    assert "2 continual runs" in capsys.readouterr().out
    panels = cl_plot.continual_panels([str(tmp_path / "runs")], "step", "eval_return")
    assert [p.title for p in panels] == ["seed0", "seed1"] and panels[1].vlines == [120.0, 240.0]
    assert [line.label for line in panels[0].lines] == ["task 0", "task 1", "task 2"]
