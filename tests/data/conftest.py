"""Shared fixtures for the replay tests: small synthetic episodes in the official layout."""

import numpy as np
import pytest


def _episode(length, ident=0, image=(8, 8, 3), actions=4, terminal=True, seed=0):
    """Episode with ``length`` steps, arrays ``(length + 1, ...)``.

    ``marker[t] = ident * 100_000 + t`` identifies episode and row, so tests can check which rows a
    chunk or batch came from.
    """
    rng = np.random.default_rng(seed + ident)
    rows = length + 1
    action = np.zeros((rows, actions), np.float32)
    action[np.arange(1, rows), rng.integers(actions, size=length)] = 1.0  # reset step keeps zeros
    is_first = np.zeros(rows, bool)
    is_first[0] = True
    is_last = np.zeros(rows, bool)
    is_last[-1] = True
    return {
        "image": rng.integers(0, 256, (rows, *image), dtype=np.uint8),
        "marker": (ident * 100_000 + np.arange(rows)).astype(np.int32),
        "action": action,
        "reward": rng.normal(size=rows).astype(np.float32),
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_last.copy() if terminal else np.zeros(rows, bool),
    }


@pytest.fixture
def make_episode():
    """Factory ``make_episode(length, ident=0, image=(8, 8, 3), actions=4, terminal=True)``."""
    return _episode
