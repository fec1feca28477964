"""A replay that mixes official-format episode files (`discount`, no is_* flags) with our own files that
carry an extra key (MiniGrid's `direction`) trains to the end: batches carry the keys the model uses."""

import numpy as np

from torch_dreamer.cli import main
from torch_dreamer.data import list_episodes, save_episode
from tests.runs.conftest import TINY, read_metrics, write_official_episodes


def _minigrid_like_episodes(directory, count=4, length=30, seed=1):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        rows = length + 1
        action = np.zeros((rows, 2), np.float32)
        action[np.arange(1, rows), rng.integers(2, size=length)] = 1
        flags = np.zeros(rows, bool)
        first, last = flags.copy(), flags.copy()
        first[0], last[-1] = True, True
        save_episode(directory, {
            "vector": rng.normal(size=(rows, 4)).astype(np.float32), "direction": rng.integers(0, 4, rows),
            "action": action, "reward": np.zeros(rows, np.float32),
            "is_first": first, "is_last": last, "is_terminal": last.copy()})


def test_official_and_extra_key_files_train_beside_our_own_episodes(tmp_path, one_thread):
    logdir = tmp_path / "run"
    replay = logdir / "train_episodes"
    write_official_episodes(replay, count=6, length=30)
    _minigrid_like_episodes(replay)
    # Variable-length sequences (minlen 5, maxlen 12) make chunks span files of both kinds and our new ones.
    code = main(["train", "--logdir", str(logdir), "--configs", "gym_vector", "--task", "gym_CartPole-v1",
                 "--steps", "500", "--prefill", "100", "--train_every", "10", "--log_every", "100",
                 "--eval_every", "1000", "--eval_eps", "0", "--replay.minlen", "5", "--replay.maxlen", "12",
                 "--dataset.batch", "4", "--dataset.length", "8", "--seed", "0", *TINY])
    assert code == 0
    assert len(list_episodes(replay)) > 10  # our own CartPole episodes arrived and were trained on
    rows = read_metrics(logdir)
    losses = [r["model_loss"] for r in rows if "model_loss" in r]
    assert losses and all(np.isfinite(losses))
    assert (logdir / "checkpoint.pt").exists()
