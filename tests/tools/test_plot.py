"""`dreamer plot` on small hand-made runs: loading, binning, seed and task aggregates, CLI and images."""

import json

import numpy as np
import pytest

from torch_dreamer.errors import UserError
from torch_dreamer.tools import aggregate as A
from torch_dreamer.tools import plot
from torch_dreamer.tools import scores as S
from torch_dreamer.tools.scores import Run


def write_run(root, task, method, seed, rows, tail=""):
    folder = root / task / method / str(seed)
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (folder / "metrics.jsonl").write_text(text)
    return folder / "metrics.jsonl"


def make_run(xs, ys, task="atari_pong", method="m", seed="0"):
    return Run(task, method, seed, np.asarray(xs, float), np.asarray(ys, float))


# ------------------------------------------------------------------------------------------- binning


def test_bin_xy_hand_computed():
    # Bins are (k-1)*size < x <= k*size, labelled k*size; x = 0 is its own bin.
    xs = [0, 0.5e6, 1e6, 1.2e6, 2e6, 3.5e6]
    bx, by = S.bin_xy(xs, [0, 1, 2, 3, 4, 5], 1e6)
    np.testing.assert_allclose(bx, [0, 1e6, 2e6, 4e6])
    np.testing.assert_allclose(by, [0, 1.5, 3.5, 5])


def test_bin_xy_drops_nan_and_keeps_raw_points_without_bins():
    bx, by = S.bin_xy([3, 1, 2], [30, np.nan, 20], 0)
    np.testing.assert_allclose(bx, [2, 3])
    np.testing.assert_allclose(by, [20, 30])


def test_auto_bins_follow_official_defaults():
    assert S.bin_size_for("atari_pong", -1) == 1e6
    assert S.bin_size_for("dmc_walker_walk", -1) == 1e4
    assert S.bin_size_for("crafter_reward", -1) == 1e4
    assert S.bin_size_for("minigrid_empty", -1) == 1e5
    assert S.bin_size_for("atari_pong", 5e5) == 5e5


def test_seed_matrix_and_stats_hand_computed():
    xs, ys = S.seed_matrix([make_run([1, 2], [1, 2]), make_run([1, 3], [3, 5])])
    np.testing.assert_allclose(xs, [1, 2, 3])
    line, low, high = S.seed_stats(ys, "std1")
    np.testing.assert_allclose(line, [2, 2, 5])
    np.testing.assert_allclose(high - line, [1, 0, 0])
    five = np.arange(5.0)[:, None]
    line, low, high = S.seed_stats(five, "per25")
    assert (line[0], low[0], high[0]) == (2, 1, 3)
    line, low, high = S.seed_stats(five, "per0")
    assert (low[0], high[0]) == (0, 4)


def test_final_value_counts_runs_within_one_bin_of_the_step():
    done = make_run([1e6, 2e6, 3e6], [1, 2, 3])
    one_bin_short = make_run([1e6, 2e6], [10, 20])
    stopped = make_run([1e6], [100])
    step, values = S.final_values([done, one_bin_short, stopped], None, 1e6)
    assert step == 3e6
    np.testing.assert_allclose(values, [3, 20])
    step, values = S.final_values([done, stopped], 1.5e6, 1e6)
    np.testing.assert_allclose(values, [1, 100])


# --------------------------------------------------------------------------------------- aggregates

BASE = {
    "atari_a": {"random": 0.0, "human_gamer": 10.0, "human_record": 100.0},
    "atari_b": {"random": 0.0, "human_gamer": 20.0, "human_record": 30.0},
    "atari_c": {"random": 5.0, "human_gamer": 15.0, "human_record": 25.0},
}
FINALS = {
    ("atari_a", "m"): (1e6, np.array([10.0, 30.0])),  # gamer 1, 3 (mean 2); record 0.2
    ("atari_b", "m"): (1e6, np.array([20.0, 60.0])),  # gamer 1, 3 (mean 2); record 4/3, clipped 1
    ("atari_c", "m"): (1e6, np.array([5.0, 5.0])),  # gamer 0, 0; record 0
}


def test_normalise():
    assert A.normalise(14.6, "atari_pong", S.shipped_baselines(), "gamer") == pytest.approx(1.0)
    assert A.normalise(-20.7, "atari_pong", S.shipped_baselines(), "record") == pytest.approx(0.0)
    assert A.normalise(21.0, "atari_pong", S.shipped_baselines(), "record") == pytest.approx(1.0)
    with pytest.raises(KeyError):
        A.normalise(1.0, "dmc_walker_walk", S.shipped_baselines(), "gamer")


def test_aggregate_finals_hand_computed():
    (row,) = A.aggregate_finals(FINALS, BASE, reps=0)
    assert row["tasks"] == 3 and row["runs"] == 6
    assert row["gamer_median"][0] == pytest.approx(2.0)
    assert row["gamer_mean"][0] == pytest.approx(4 / 3)
    assert row["record_mean"][0] == pytest.approx((0.2 + 4 / 3 + 0) / 3)
    assert row["clip_record_mean"][0] == pytest.approx((0.2 + 1 + 0) / 3)
    # Pooled gamer scores [0, 0, 1, 1, 3, 3]: IQM drops one from each end -> mean(0, 1, 1, 3).
    assert row["gamer_iqm"][0] == pytest.approx(1.25)
    # Optimality gap: 1 - mean(min(x, 1)) = 1 - 4/6.
    assert row["gamer_optimality_gap"][0] == pytest.approx(1 / 3)


def test_other_suites_get_mean_and_median_of_raw_scores():
    finals = {("dmc_a", "m"): (1e4, np.array([100.0, 300.0])), ("dmc_b", "m"): (1e4, np.array([900.0]))}
    (row,) = A.aggregate_finals(finals, {}, reps=0)
    assert row["suite"] == "dmc"
    assert row["mean"][0] == pytest.approx(550) and row["median"][0] == pytest.approx(550)


def test_published_agents_are_scored_on_the_same_tasks():
    base = {t: dict(v, agent=v["human_gamer"]) for t, v in BASE.items()}
    rows = A.aggregate_finals(FINALS, base, agents=["agent", "random"], reps=0)
    agent = next(r for r in rows if r["method"] == "agent")
    assert agent["published"] and agent["gamer_median"][0] == pytest.approx(1.0)
    assert [r["method"] for r in rows] == ["m", "agent"]


def test_aggregates_use_the_tasks_all_methods_share():
    finals = dict(FINALS)
    finals[("atari_a", "other")] = (1e6, np.array([10.0]))
    rows = {r["method"]: r for r in A.aggregate_finals(finals, BASE, reps=0)}
    assert rows["m"]["tasks"] == 1 and rows["m"]["gamer_mean"][0] == pytest.approx(2.0)


def test_trimmed_mean_matches_the_iqm_definition():
    assert A.trimmed_mean(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert A.trimmed_mean(np.arange(10.0)) == pytest.approx(np.mean([2, 3, 4, 5, 6, 7]))


def test_bootstrap_interval_is_deterministic_and_brackets_the_point():
    rng = np.random.default_rng(1)
    samples = [rng.normal(i, 1, size=5) for i in range(4)]
    a = A.stratified_bootstrap(samples, A.FINAL_FNS["iqm"], reps=500, seed=3)
    b = A.stratified_bootstrap(samples, A.FINAL_FNS["iqm"], reps=500, seed=3)
    assert a == b and a[1] < a[0] < a[2]
    point, low, high = A.stratified_bootstrap([np.ones(3), np.ones(3)], A.FINAL_FNS["mean"], reps=100)
    assert point == low == high == 1.0
    assert np.isnan(A.stratified_bootstrap([np.ones(1)], A.FINAL_FNS["mean"], reps=100)[1])


def test_iqm_and_gap_agree_with_rliable_when_installed():
    metrics = pytest.importorskip("rliable.metrics")
    scores = np.random.default_rng(0).gamma(1.5, size=(5, 7))
    samples = [scores[:, t] for t in range(scores.shape[1])]
    assert A.FINAL_FNS["iqm"]([s[None] for s in samples])[0] == pytest.approx(metrics.aggregate_iqm(scores))
    gap = metrics.aggregate_optimality_gap(scores)
    assert A.FINAL_FNS["optimality_gap"]([s[None] for s in samples])[0] == pytest.approx(gap)


def test_aggregate_curve_fills_a_missing_seed_with_the_task_mean():
    runs = [
        make_run([1e6, 2e6], [10, 20], "atari_a", seed="0"),
        make_run([1e6], [30], "atari_a", seed="1"),
        make_run([1e6, 2e6], [20, 40], "atari_b", seed="0"),
    ]
    (curve,) = A.aggregate_curves(runs, BASE, "gamer_mean")
    np.testing.assert_allclose(curve.xs, [1e6, 2e6])
    # 1M: a = mean(1, 3) = 2, b = 1 -> 1.5; 2M: a = 2, b = 2 -> 2.
    np.testing.assert_allclose(curve.line, [1.5, 2.0])
    # Seed 1 of task a is missing at 2M and contributes a's mean there.
    np.testing.assert_allclose(curve.seeds[:, 1], [2.0, 2.0])


def test_task_table_scores_every_method_at_the_common_step():
    runs = [make_run([1e6, 2e6, 3e6], [1, 2, 3], method="ref"), make_run([1e6, 2e6], [5, 6], method="ours")]
    (row,) = A.task_table(runs, {})
    assert row["step"] == 2e6
    assert row["methods"]["ref"].tolist() == [2.0] and row["methods"]["ours"].tolist() == [6.0]


# ---------------------------------------------------------------------------------- loading and data


def test_shipped_reference_scores_have_the_james_bond_correction():
    raw = json.loads((S.DATA_DIR / "atari_baselines.json").read_text())
    assert "Toromanoff" in raw["_source"] and "Mnih" in raw["_source"]
    base = S.shipped_baselines()
    assert base["atari_james_bond"]["random"] == 29.0 and base["atari_james_bond"]["human_gamer"] == 302.8
    assert sum("human_gamer" in v for v in base.values()) == 57


def test_partial_lines_are_skipped_with_a_warning(tmp_path):
    rows = [{"step": 1e6, "eval_return": 1.0}, {"step": 2e6, "train_return": 0.5}]
    path = write_run(tmp_path, "atari_pong", "m", 0, rows, tail='{"step": 3000000, "eval_ret')
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        assert len(S.read_metrics(path)) == 2
    # A killed run's partial line that a resumed run appended after (issue 10, item 11): skipped, not fatal.
    path.write_text('{"step": 1}\n{"step": 2, "eval_ret{"step": 3}\n{"step": 4}\n')
    with pytest.warns(UserWarning, match="line 2"):
        assert [row["step"] for row in S.read_metrics(path)] == [1, 4]


def test_load_inputs_reads_both_formats_and_reports_runs_without_eval(tmp_path):
    write_run(
        tmp_path, "atari_pong", "ours", 0, [{"step": 1e6, "eval_return": -20.0}, {"step": 2e6, "eval_return": -10}]
    )
    write_run(tmp_path, "atari_pong", "ours", 1, [{"step": 1e4, "train_return": -21.0}])
    official = [
        {"task": "atari_pong", "method": "ref", "seed": "1", "xs": [1e6], "ys": [5.0]},
        {"task": "stats_normalized_mean", "method": "ref", "seed": "0", "xs": [1], "ys": [1]},
    ]
    (tmp_path / "ref.json").write_text(json.dumps(official))
    (tmp_path / "agents.json").write_text(json.dumps({"atari_pong": {"agent_x": 3.0, "random": -99}}))
    (tmp_path / "atari_pong" / "ours" / "0" / "config.json").write_text(json.dumps({"seed": 0}))
    loaded = S.load_inputs([tmp_path])
    assert sorted(r.name for r in loaded.runs) == ["atari_pong/ours/0", "atari_pong/ref/1"]
    assert any("atari_pong/ours/1 has no 'eval_return'" in n for n in loaded.notes)
    assert loaded.baselines["atari_pong"]["agent_x"] == 3.0
    assert loaded.baselines["atari_pong"]["random"] == -20.7  # the published value wins
    assert any("agents.json" in n and "random" in n for n in loaded.notes)


def test_a_runs_json_inside_indir_does_not_double_the_runs(tmp_path):
    write_run(tmp_path, "atari_pong", "ours", 0, [{"step": 1e6, "eval_return": 1.0}])
    runs = S.load_inputs([tmp_path]).runs
    (tmp_path / "runs.json").write_text(json.dumps(S.runs_to_json(runs)))
    assert len(S.load_inputs([tmp_path]).runs) == 1


def test_filters_are_regexes(tmp_path):
    runs = [make_run([1], [1], "atari_pong", "a"), make_run([1], [1], "dmc_walker_walk", "b")]
    assert [r.task for r in S.filter_runs(runs, tasks=["pong"])] == ["atari_pong"]
    assert [r.method for r in S.filter_runs(runs, methods=["^b$"])] == ["b"]
    with pytest.raises(UserError, match="no runs match"):
        S.filter_runs(runs, tasks=["breakout"])


# ------------------------------------------------------------------------------------- CLI and images


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("empty", [], "no metrics.jsonl"),
        ("missing", [], "no such file"),
        ("malformed", [], "not valid JSON"),
        ("no_eval", [], "has 'eval_return' values yet"),
        ("ok", ["--tasks", "("], "invalid regex"),
        ("ok", ["--xlim", "1"], "expected 2 arguments"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, setup, args, message):
    indir = tmp_path / "in"
    indir.mkdir()
    if setup == "missing":
        indir = tmp_path / "nope"
    elif setup == "malformed":
        (indir / "runs.json").write_text('[{"task": ')
        indir = indir / "runs.json"
    elif setup == "no_eval":
        write_run(indir, "atari_pong", "m", 0, [{"step": 1, "train_return": 1}])
    elif setup == "ok":
        write_run(indir, "atari_pong", "m", 0, [{"step": 1, "eval_return": 1}])
    code = plot.main(["--indir", str(indir), "--outdir", str(tmp_path / "out")] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]


def synthetic_logs(root):
    rng = np.random.default_rng(0)
    for task in ("atari_pong", "atari_breakout"):
        for method, speed in (("ours", 1.0), ("other", 0.5)):
            for seed in range(2):
                rows = [
                    {"step": s, "eval_return": speed * s / 1e5 + rng.normal()} for s in range(0, 2_000_001, 100_000)
                ]
                write_run(root, task, method, seed, rows, tail='{"step": 2100000, "eval_re')


def test_plot_writes_images_that_are_not_blank(tmp_path, capsys):
    import matplotlib.image

    synthetic_logs(tmp_path / "logs")
    out = tmp_path / "out"
    assert (
        plot.main(["--indir", str(tmp_path / "logs"), "--outdir", str(out), "--cols", "3", "--add", "auto", "seeds"])
        == 0
    )
    image = matplotlib.image.imread(out / "curves.png")[..., :3]
    ink = (image.mean(-1) < 0.9).mean()
    assert image.std() > 0.05 and 0.01 < ink < 0.6
    assert (out / "curves.pdf").read_bytes().startswith(b"%PDF")
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 8 and set(runs[0]) == {"task", "method", "seed", "xs", "ys"}
    # A 2M-frame run spans fewer than 5 official 1M bins: auto bins are 100k wide (about 20 over the run).
    pong = next(r for r in runs if r["task"] == "atari_pong" and r["method"] == "ours")
    assert pong["xs"][:3] == [0.0, 1e5, 2e5]
    # 100k evaluations in 1M bins: bin 1M averages the points at 0.1M .. 1M.
    assert plot.main(["--indir", str(tmp_path / "logs"), "--outdir", str(out), "--bins", "1e6"]) == 0
    runs = json.loads((out / "runs.json").read_text())
    pong = next(r for r in runs if r["task"] == "atari_pong" and r["method"] == "ours")
    assert pong["xs"][:3] == [0.0, 1e6, 2e6]
    stdout = capsys.readouterr().out
    assert "gamer median" in stdout and "curves.png" in stdout
    rows = json.loads((out / "aggregates.json").read_text())
    assert {r["method"] for r in rows} >= {"ours", "other"}


def test_table_prints_final_scores_at_a_common_step(tmp_path, capsys):
    write_run(tmp_path, "atari_pong", "ref", 0, [{"step": s * 1e6, "eval_return": float(s)} for s in range(1, 6)])
    write_run(tmp_path, "atari_pong", "ours", 0, [{"step": s * 1e6, "eval_return": 10.0 * s} for s in range(1, 3)])
    assert plot.main(["--indir", str(tmp_path), "--table", "--baselines", "random"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("atari_pong"))
    assert line.split()[:6] == ["atari_pong", "2M", "20.0", "(1)", "2.00", "(1)"] and "-20.7" in line


def test_suites_are_aggregated_separately():
    finals = {("dmc_a", "m"): (1e4, np.array([100.0])), ("crafter_reward", "m"): (1e4, np.array([10.0]))}
    rows = A.aggregate_finals(finals, {}, reps=0)
    assert sorted((r["suite"], r["mean"][0]) for r in rows) == [("crafter", 10.0), ("dmc", 100.0)]


def test_bad_run_files_and_null_values(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"task": "atari_pong", "method": "m", "seed": 0, "xs": ["a"], "ys": [1]}]))
    with pytest.raises(UserError, match="lists of numbers"):
        S.load_inputs([bad])
    nulls = tmp_path / "nulls.json"
    nulls.write_text(json.dumps([{"task": "atari_pong", "method": "m", "seed": 0, "xs": [1e6], "ys": [None]}]))
    assert plot.main(["--indir", str(nulls), "--table"]) == 2
    assert "no finite 'eval_return'" in capsys.readouterr().err
    # The same file given twice is read once.
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"task": "atari_pong", "method": "m", "seed": 0, "xs": [1e6], "ys": [1.0]}]))
    assert len(S.load_inputs([good, good]).runs) == 1


def test_table_at_a_given_step_and_help(tmp_path, capsys):
    write_run(tmp_path, "dmc_walker_walk", "m", 0, [{"step": s * 1e4, "eval_return": float(s)} for s in range(1, 9)])
    assert plot.main(["--indir", str(tmp_path), "--table", "--step", "5e4"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("dmc_walker_walk"))
    assert line.split()[:4] == ["dmc_walker_walk", "50k", "5.00", "(1)"]
    assert plot.main(["--help"]) == 0
