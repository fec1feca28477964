"""Item 10: command-line and config mistakes are one `error:` line (exit 2) before any env starts or any
file is written; config.yaml is written only by a run that starts; `eval --video` says when it wrote none."""

import pytest
import yaml

from torch_dreamer.cli import main
from tests.runs.conftest import TINY

BASE = ["train", "--configs", "gym_vector", "--task", "gym_CartPole-v1", "--steps", "40", "--prefill", "20"]

MISTAKES = [
    ["--dataset.batch", "0"], ["--dataset.length", "0"], ["--dataset.batch", "-3"], ["--train_every", "0"],
    ["--train_steps", "0"], ["--eval_every", "0"], ["--log_every", "0"], ["--actor_ent", "linear(1,2)"],
    ["--actor_ent", "lineer(1,2,3)"], ["--actor_ent", "linear(1,2,0)"], ["--actor_grad_mix", "warmup(0,1)"],
    ["--expl_intr_scale", "exp(a,b,c)"], ["--actor.dist", "gausian"], ["--critic.dist", "msee"],
    ["--reward_head.dist", "foo"], ["--precision", "8"], ["--precision", "fp16"], ["--model_opt.lr", "0"],
    ["--actor_opt.lr", "-1e-4"], ["--critic_opt.eps", "0"], ["--model_opt.clip", "-1"], ["--model_opt.wd", "1"],
    ["--model_opt.opt", "sgd"], ["--discount", "0"], ["--discount", "1.5"], ["--discount_lambda", "2"],
    ["--envs", "0"], ["--action_repeat", "0"], ["--steps", "-1"], ["--prefill", "-5"], ["--replay.minlen", "0"],
    ["--replay.capacity", "-1"], ["--imag_horizon", "0"], ["--rssm.deter", "0"], ["--rssm.act", "relux"],
    ["--encoder.norm", "batch"], ["--rssm.std_act", "exp"], ["--clip_rewards", "log"], ["--actor_grad", "foo"],
    ["--expl_behavior", "curious"], ["--eval_policy", "greedy"], ["--disag_target", "foo"],
    ["--grad_heads", "image"], ["--device", "tpu"], ["--dataset.mode", "shuffled"], ["--worker_backend", "slurm"],
    ["--action_kind", "both"], ["--nonfinite_env", "ignore"], ["--checkpoint_every", "-1"],
    ["--checkpoint_minutes", "-1"], ["--max_episode_steps", "-1"], ["--encoder.mlp_keys", "["],
    ["--log_keys_sum", "("], ["--envs_parallel", "thread"], ["--atari_actions", "some"], ["--minigrid_view", "top"],
    ["--minihack_obs", "x"], ["--foo", "1"], ["--rssm.detr", "3"], ["--rssm.deter", "big"], ["--steps", "abc"],
    ["--seed", "1.5"], ["--jit", "maybe"], ["--configs", "atary"], ["--steps"], ["foo"], ["--task", "foo_bar"],
    ["--task", "atari_pongg"], ["--task", "gym_NoSuchEnv-v0"], ["--offline_dir", "x", "--workers", "2"],
    ["--time_limit", "-1"], ["--eval_eps", "-1"], ["--train_ratio", "-1"], ["--policy_refresh", "0"],
    ["--render_size", "0", "64"], ["--kl.balance", "2"], ["--slow_target_fraction", "0"],
    ["--reward_norm.momentum", "2"], ["--[", "1"], ["--.*\\.lr", "0"], ["--expl_every", "-1"], ["--pretrain", "-1"],
    ["--dmc_camera", "-2"], ["--loss_scales.kl", "-1"], ["--kl.free", "-1"], ["--disag_models", "0"],
    ["--slow_target_update", "0"], ["--encoder.cnn_depth", "0"], ["--actor.min_std", "-1"],
    ["--replay.minlen", "40"], ["--replay.ongoing", "True"], ["--workers", "-1"],
]


def test_10_there_are_more_than_sixty():
    assert len(MISTAKES) >= 60 and len({tuple(m) for m in MISTAKES}) == len(MISTAKES)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[" ".join(m) for m in MISTAKES])
def test_10_each_mistake_is_one_line_before_anything_is_touched(tmp_path, capsys, mistake):
    logdir = tmp_path / "run"
    assert main(BASE + ["--logdir", str(logdir)] + TINY + mistake) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.out + captured.err and "Prefill" not in captured.out
    assert not logdir.exists()


@pytest.mark.parametrize("argv", [
    ["train", "--configs", "gym_vector", "--task", "gym_CartPole-v1"],          # no --logdir
    ["eval", "--logdir", "{run}"],                                               # no checkpoint
    ["eval", "--logdir", "{run}", "--episodes", "0"],
    ["eval", "--logdir", "{run}", "--episodes", "x"],
    ["eval"],
    ["eval", "--logdir", "{run}", "--mode", "greedy"],
    ["config", "--rssm.detr", "3"],
    ["fly"],
])
def test_10_other_commands_too(tmp_path, capsys, argv):
    argv = [a.replace("{run}", str(tmp_path / "run")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


TRAIN = ["train", "--configs", "gym_vector", "--task", "gym_CartPole-v1", "--prefill", "20", "--eval_eps", "0",
         "--time_limit", "10", "--replay.minlen", "5", "--dataset.batch", "2", "--dataset.length", "5"] + TINY


def test_10_a_rejected_command_leaves_config_yaml_alone(tmp_path, capsys):
    logdir = tmp_path / "run"
    assert main(TRAIN + ["--logdir", str(logdir), "--steps", "30"]) == 0
    before = (logdir / "config.yaml").read_text()
    capsys.readouterr()
    assert main(TRAIN + ["--logdir", str(logdir), "--steps", "60", "--rssm.deter", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different model config (rssm.deter 32 -> 64)" in err
    assert "config.yaml" not in err
    assert (logdir / "config.yaml").read_text() == before
    assert yaml.safe_load(before)["rssm"]["deter"] == 32


def test_10_eval_video_on_a_vector_task_says_none_was_written(tmp_path, capsys):
    logdir = tmp_path / "run"
    assert main(TRAIN + ["--logdir", str(logdir), "--steps", "30"]) == 0
    capsys.readouterr()
    video = tmp_path / "episode.gif"
    assert main(["eval", "--logdir", str(logdir), "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "Video written" not in out and "No video written" in out and "'image'" in out
    assert not video.exists()
