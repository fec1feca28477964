"""Continual-learning metrics against hand-computed curves."""

import numpy as np
import pytest

from torch_dreamer.tools import cl_metrics as cl

STEPS = np.array([0, 50, 100, 150, 200])
TASK0 = (STEPS, np.array([0, 0.5, 1.0, 0.5, 0.4]))   # learnt during [0, 100), then partly forgotten
TASK1 = (STEPS, np.array([0, 0, 0.2, 0.8, 1.0]))     # learnt during [100, 200)
REF = (np.array([0, 50, 100]), np.array([0, 0.2, 0.6]))
BOUNDS = [0, 100, 200]


def test_performance_and_forgetting_by_hand():
    assert cl.performance([TASK0, TASK1], 200) == pytest.approx((0.4 + 1.0) / 2)
    # task 0: 1.0 at the end of its training, 0.4 at the end; task 1 is the last task: 0
    assert cl.forgetting([TASK0, TASK1], BOUNDS) == pytest.approx((0.6 + 0.0) / 2)


def test_auc_is_the_step_function_mean_over_the_window():
    assert cl.auc(TASK0, 0, 100) == pytest.approx((50 * 0 + 50 * 0.5) / 100)
    assert cl.auc(TASK1, 100, 200) == pytest.approx((50 * 0.2 + 50 * 0.8) / 100)  # starts from the value at 100
    assert cl.auc(REF, 0, 100) == pytest.approx(0.1)


def test_forward_transfer_divides_by_one_minus_the_reference_auc():
    ft = cl.forward_transfer([TASK0, TASK1], BOUNDS, [REF, REF])
    assert ft == pytest.approx(((0.25 - 0.1) / 0.9 + (0.5 - 0.1) / 0.9) / 2)
    # Continual-Dreamer's notebook divides by (1 - AUC_cl): a different number, which we do not report.
    assert ft != pytest.approx(((0.25 - 0.1) / 0.75 + (0.5 - 0.1) / 0.5) / 2)


def test_values_are_clipped_to_the_unit_interval():
    negative = (np.array([0, 100]), np.array([-0.5, 2.0]))
    assert cl.value_at(negative, 50) == 0.0 and cl.value_at(negative, 100) == 1.0


def test_bootstrap_interval_contains_the_mean():
    result = cl.bootstrap([0.6, 0.7, 0.8, 0.9], reps=500, seed=1)
    assert result["mean"] == pytest.approx(0.75) and result["seeds"] == 4
    assert 0.6 <= result["low"] <= result["mean"] <= result["high"] <= 0.9


def test_reference_curves_average_runs_and_feed_forward_transfer(tmp_path):
    import json

    from torch_dreamer.tools import cl_metrics

    for seed, values in ((0, [0.0, 0.5, 1.0]), (1, [0.0, 0.3, 0.6])):
        folder = tmp_path / f"ref{seed}" / "task_0"
        folder.mkdir(parents=True)
        rows = [{"step": 100 * (k + 1), "eval_success_0": v} for k, v in enumerate(values)]
        (folder / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{partial")
    steps, values = cl_metrics.reference_curve([tmp_path / "ref0", tmp_path / "ref1"], 0)
    assert list(steps) == [100, 200, 300] and np.allclose(values, [0.0, 0.4, 0.8])
    # A continual curve that is 1 from the start of its window has AUC 1: FT = (1 - ref) / (1 - ref) = 1.
    ours = (np.array([0, 100, 200, 300]), np.array([1.0, 1.0, 1.0, 1.0]))
    assert cl_metrics.forward_transfer([ours], [0, 300], [(steps, values)]) == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError):
        cl_metrics.reference_curve([tmp_path / "missing"], 0)
