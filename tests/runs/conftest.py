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
]


def read_metrics(logdir) -> list[dict]:
    path = pathlib.Path(logdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def tiny():
    return list(TINY)
