import json
import pathlib

import pytest

# Network sizes small enough that a debug run takes seconds on 2 CPU cores.
TINY = [
    "--rssm.deter", "32", "--rssm.hidden", "32", "--rssm.stoch", "4", "--rssm.discrete", "4",
    "--encoder.cnn_depth", "4", "--decoder.cnn_depth", "4",
    "--encoder.mlp_layers", "32", "--decoder.mlp_layers", "32",
    "--reward_head.layers", "1", "--reward_head.units", "32",
    "--discount_head.layers", "1", "--discount_head.units", "32",
    "--actor.layers", "1", "--actor.units", "32", "--critic.layers", "1", "--critic.units", "32",
    "--imag_horizon", "3", "--progress", "False", "--precision", "32",
    "--compile", "none",  # compiling takes longer than these runs; tests/agent/test_jit.py tests it
]


def read_metrics(logdir) -> list[dict]:
    path = pathlib.Path(logdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def tiny():
    return list(TINY)


def write_official_episodes(directory, count=6, length=30, seed=0):
    """Episodes as the official DreamerV2 writes them: `discount` instead of the is_* flags, a CartPole-like
    4-vector observation and one-hot actions of size 2, plain np.savez under the official name."""
    import datetime
    import uuid

    import numpy as np

    rng = np.random.default_rng(seed)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        action = np.zeros((length + 1, 2), np.float32)
        action[np.arange(1, length + 1), rng.integers(2, size=length)] = 1
        discount = np.ones(length + 1, np.float32)
        discount[-1] = 0.0
        stamp = (datetime.datetime(2021, 1, 1) + datetime.timedelta(seconds=i)).strftime("%Y%m%dT%H%M%S")
        np.savez(directory / f"{stamp}-{uuid.uuid4().hex}-{length}.npz",
                 vector=rng.normal(size=(length + 1, 4)).astype(np.float32), action=action,
                 reward=rng.integers(0, 2, length + 1).astype(np.float32), discount=discount)
    return directory


@pytest.fixture
def make_official_episodes():
    return write_official_episodes
