"""Item 9: env exceptions, SIGTERM and never-ending envs save first, then report one line naming the env,
the call and the key; `--checkpoint_every` bounds what a kill -9 can lose."""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from torch_dreamer.data import list_episodes, load_episode
from torch_dreamer.errors import UserError
from torch_dreamer.runs.checkpoint import load_checkpoint
from tests.reliability.conftest import Chain, at_call, make_trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def disk_steps(directory):
    return sum(len(load_episode(p)["action"]) - 1 for p in list_episodes(directory))


def raise_in(call, when=55):
    def fault(env, name, out):
        if name == call and (env.calls >= when):
            raise RuntimeError("boom")
        return out
    return fault


# A reset fails inside the vector env's step that ends an episode (autoreset), so that step never returns.
@pytest.mark.parametrize("call,steps", [("step", 54), ("reset", 59)])
def test_09_env_exceptions_save_first_then_one_line(tmp_path, call, steps):
    with pytest.raises(UserError) as error:
        make_trainer(tmp_path, 200, env=Chain(fault=raise_in(call))).run()
    message = str(error.value)
    assert "\n" not in message and f"env chain raised in {call}(): RuntimeError: boom" in message
    assert "episodes and checkpoint saved" in message
    assert load_checkpoint(tmp_path / "checkpoint.pt")["counters"]["updates"] > 0
    assert disk_steps(tmp_path / "train_episodes") == steps


def shape(out):
    obs, *rest = out
    return ({"vector": np.zeros(7, np.float32)}, *rest)


def dtype(out):
    obs, *rest = out
    return ({"vector": np.full(6, 0.5, np.float64).astype(object)}, *rest)


def reward(value):
    def change(out):
        obs, _, *rest = out
        return (obs, value, *rest)
    return change


@pytest.mark.parametrize("change,text", [
    (shape, "observation 'vector' of shape (7,) from step(); its observation space says (6,)"),
    (dtype, "observation 'vector' of dtype object"),
    (reward(None), "reward of None"),
    (reward(np.ones(2)), "reward of float64 of shape (2,)"),
    (reward("1"), "reward of <U1"),
])
def test_09_misbehaving_envs_are_one_line_naming_env_and_key(tmp_path, change, text):
    with pytest.raises(UserError) as error:
        make_trainer(tmp_path, 200, env=Chain(fault=at_call(55, change))).run()
    message = str(error.value)
    assert "\n" not in message and "env chain" in message and text in message
    assert disk_steps(tmp_path / "train_episodes") == 54


def test_09_final_observation_of_wrong_shape_is_caught_too(tmp_path):
    with pytest.raises(UserError, match="observation 'vector' of shape"):
        make_trainer(tmp_path, 200, env=Chain(fault=at_call(60, shape))).run()  # the step that ends an episode


def test_09_an_env_that_never_ends_is_one_line(tmp_path):
    with pytest.raises(UserError) as error:
        make_trainer(tmp_path, 200, env=Chain(length=10**9), extra=["--max_episode_steps", "30"]).run()
    message = str(error.value)
    assert "\n" not in message and "ran 30 steps without ending an episode" in message and "--time_limit" in message
    assert disk_steps(tmp_path / "train_episodes") == 30  # kept, as truncated


def test_09_sigterm_is_handled_like_ctrl_c(tmp_path, capsys):
    def term(env, call, out):
        if call == "step" and env.calls == 55:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh Python process
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, 200, env=Chain(fault=term)).run()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    signal.signal(signal.SIGTERM, previous)
    # Delivered inside the env's 55th step, before it returned: 54 steps were taken, all of them saved.
    assert "Interrupted at step 54; episodes and checkpoint saved" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "checkpoint.pt")["counters"]["step"] == 54
    assert disk_steps(tmp_path / "train_episodes") == 54


KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.reliability.conftest import Chain, make_trainer

def kill(env, call, out):
    if call == "step" and env.calls == 38:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

make_trainer(sys.argv[1], 200, env=Chain(fault=kill), extra=sys.argv[2:]).run()
"""


@pytest.mark.parametrize("every", ["0", "2"])
def test_09_checkpoint_every_bounds_what_kill_9_loses(tmp_path, every):
    script = KILLED.format(root=str(ROOT))
    extra = ["--checkpoint_every", every, "--checkpoint_minutes", "0", "--eval_every", "1000"]
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), *extra], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    path = tmp_path / "checkpoint.pt"
    if every == "0":
        assert not path.exists()  # every update since the start is lost
    else:
        # 37 steps were taken: pretrain 1 + updates at steps 25, 30 and 35; checkpoints at 2 and 4 updates.
        assert load_checkpoint(path)["counters"]["updates"] == 4
