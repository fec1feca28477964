"""`dreamer plot` on short runs: the README quick start (6000 CartPole steps) plots as a visible curve, a
one-point line gets a marker, and tables say the step actually reached (not the end of a 1M bin)."""

import json

import numpy as np
import yaml

from torch_dreamer.tools import plot
from torch_dreamer.tools import scores as S

TAB_BLUE = np.array([31, 119, 180]) / 255  # the first method's colour


def quick_start_run(logdir, steps=6000, every=1000, task="gym_CartPole-v1", seed=0):
    """A metrics.jsonl as `dreamer train --logdir logdir/cartpole ... --steps 6000` writes it, with its config.yaml."""
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "config.yaml").write_text(yaml.safe_dump({"task": task, "seed": seed, "steps": steps}))
    rows = []
    for step in range(0, steps + 1, every):
        rows.append({"step": step, "eval_return": 20.0 + step / 20})
        rows.append({"step": step + 7, "train_return": 15.0 + step / 25, "model_loss": 1.0})
    (logdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return logdir


def _blue_pixels(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)[..., :3]
    return int((np.abs(image - TAB_BLUE).max(-1) < 0.08).sum())


def test_the_quick_start_run_plots_as_a_curve(tmp_path, capsys):
    run = quick_start_run(tmp_path / "logdir" / "cartpole")
    out = tmp_path / "plots"
    # The README's folder given as is: task and seed come from its config.yaml, the method is its name.
    assert plot.main(["--indir", str(run), "--outdir", str(out), "--table"]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert [(r["task"], r["method"], r["seed"]) for r in runs] == [("gym_CartPole-v1", "cartpole", "0")]
    # Bins of 200 frames (about 20 over the run) instead of the default 1e5, which is wider than the run.
    assert runs[0]["xs"] == [0, 1000, 2000, 3000, 4000, 5000, 6000]
    assert runs[0]["ys"] == [20.0, 70.0, 120.0, 170.0, 220.0, 270.0, 320.0]
    assert _blue_pixels(out / "curves.png") > 200  # a drawn line, not an empty panel
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("gym_CartPole-v1"))
    assert line.split()[:4] == ["gym_CartPole-v1", "6k", "320.0", "(1)"]


def test_train_return_of_a_short_run_is_binned_on_one_grid_across_seeds(tmp_path):
    for seed in range(2):
        quick_start_run(tmp_path / "gym_CartPole-v1" / "ours" / str(seed), steps=3000, every=500, seed=seed)
    out = tmp_path / "plots"
    assert plot.main(["--indir", str(tmp_path), "--outdir", str(out), "--yaxis", "train_return"]) == 0
    runs = json.loads((out / "runs.json").read_text())
    assert runs[0]["xs"] == runs[1]["xs"] and len(runs[0]["xs"]) == 7
    assert max(np.diff(runs[0]["xs"])) <= 500  # bins of 100 frames, not 1e5


def test_a_one_point_line_gets_a_marker_and_the_table_says_the_step_reached(tmp_path, capsys):
    # A 2000-frame Pong debug run: one evaluation at 1200 frames. The Atari bin (1M frames) would label it
    # "1M"; the table must say 1.2k, and the plot must show the point.
    folder = tmp_path / "atari_pong" / "debug" / "0"
    folder.mkdir(parents=True)
    rows = [{"step": 400, "train_return": -21.0}, {"step": 1200, "eval_return": -20.0},
            {"step": 2000, "train_return": -20.0}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "plots"
    assert plot.main(["--indir", str(tmp_path), "--outdir", str(out), "--table", "--add", "none"]) == 0
    stdout = capsys.readouterr().out
    line = next(x for x in stdout.splitlines() if x.startswith("atari_pong"))
    assert line.split()[1] == "1.2k" and "1M" not in stdout
    assert _blue_pixels(out / "curves.png") > 10  # the marker


def test_short_run_bins_are_round_and_long_runs_keep_the_official_width():
    assert S.short_run_bin_size(6000) == 200 and S.short_run_bin_size(2000) == 100
    assert S.short_run_bin_size(2e6) == 1e5 and S.short_run_bin_size(0) == 0
    run = lambda task, end: S.Run(task, "m", "0", np.array([0.0, end]), np.array([1.0, 2.0]))
    assert S.task_bin_sizes([run("atari_pong", 2e8)]) == {"atari_pong": 1e6}
    assert S.task_bin_sizes([run("atari_pong", 2e8), run("atari_pong", 2000)]) == {"atari_pong": 1e6}
    assert S.task_bin_sizes([run("dmc_walker_walk", 1e6)]) == {"dmc_walker_walk": 1e4}
    assert S.task_bin_sizes([run("gym_CartPole-v1", 6000)]) == {"gym_CartPole-v1": 200}
    assert S.task_bin_sizes([run("gym_CartPole-v1", 6000)], bins=1e5) == {"gym_CartPole-v1": 1e5}
