"""`dreamer train/eval/config` end to end on every suite, and the one-line errors for bad input."""

import importlib.util
import pathlib

import pytest

from torch_dreamer.cli import main
from tests.runs.conftest import TINY, read_metrics

SHORT = ["--steps", "120", "--prefill", "60", "--eval_every", "60", "--log_every", "40", "--train_every", "20",
         "--eval_eps", "1", "--time_limit", "30", "--replay.minlen", "5", "--dataset.batch", "2",
         "--dataset.length", "5"]

SUITES = [
    ("gym_vector", "gym_CartPole-v1", "gymnasium"),
    ("atari", "atari_pong", "ale_py"),
    ("dmc_vision", "dmc_cartpole_balance", "dm_control"),
    ("dmc_proprio", "dmc_walker_walk", "dm_control"),
    ("crafter", "crafter_reward", "crafter"),
    ("minigrid", "minigrid_MiniGrid-DoorKey-5x5-v0", "minigrid"),
    ("minihack", "minihack_MiniHack-Room-5x5-v0", "minihack"),
]


@pytest.mark.parametrize("configs,task,module", SUITES, ids=[s[1] for s in SUITES])
def test_train_each_suite_writes_metrics_episodes_checkpoint(tmp_path, configs, task, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed")
    logdir = tmp_path / "run"
    code = main(["train", "--logdir", str(logdir), "--configs", configs, "debug", "--task", task] + TINY + SHORT)
    assert code == 0
    metrics = read_metrics(logdir)
    names = set().union(*metrics)
    assert {"train_return", "eval_return", "model_loss", "kl_loss", "actor_loss", "critic_loss", "fps"} <= names
    assert max(m["step"] for m in metrics) >= 120 * (4 if configs == "atari" else 2 if configs.startswith("dmc") else 1)
    assert list((logdir / "train_episodes").glob("*.npz"))
    assert list((logdir / "eval_episodes").glob("*.npz"))
    assert (logdir / "checkpoint.pt").exists() and (logdir / "config.yaml").exists()
    if configs == "crafter":
        assert any(name.startswith("max_train_log_achievement_") for name in names)


def test_eval_command_prints_return_and_writes_video(tmp_path, capsys):
    logdir = tmp_path / "run"
    assert main(["train", "--logdir", str(logdir), "--configs", "minigrid", "debug",
                 "--task", "minigrid_MiniGrid-Empty-5x5-v0"] + TINY + SHORT) == 0
    capsys.readouterr()
    video = tmp_path / "episode.gif"
    assert main(["eval", "--logdir", str(logdir), "--episodes", "2", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "return" in out and "over 2 episodes" in out
    import imageio.v3 as iio

    frames = iio.imread(video, index=None)
    assert frames.ndim == 4 and frames.shape[1:3] == (64, 64)


def test_config_command_applies_configs_in_order_and_overrides(capsys):
    assert main(["config", "--configs", "atari", "debug", "--rssm.deter", "200", "--replay.capacity", "1e6"]) == 0
    out = capsys.readouterr().out
    assert "deter: 200" in out and "capacity: 1000000.0" in out
    assert "train_every: 16" in out  # from atari
    assert "prefill: 100" in out  # debug applied after atari


@pytest.mark.parametrize("argv,message", [
    (["config", "--configs", "atari", "--rssm.detr", "3"], "did you mean 'rssm.deter'"),
    (["config", "--configs", "atari", "--rssm.deter", "big"], "expects int"),
    (["config", "--configs", "atary"], "unknown config 'atary'"),
    (["train", "--logdir", "{tmp}", "--task", "atari_pongg"], "did you mean atari_pong"),
    (["train", "--logdir", "{tmp}", "--task", "foo_bar"], "foo_bar"),
    (["train", "--task", "gym_CartPole-v1"], "--logdir"),
    (["eval", "--logdir", "{tmp}"], "no checkpoint"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path / "run")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err
    assert len(err.splitlines()) == 1


def test_unknown_command_and_help(capsys):
    assert main(["fly"]) == 2
    assert main(["--help"]) == 0
    assert "dreamer" in capsys.readouterr().out
