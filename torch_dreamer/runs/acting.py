"""What every actor shares, in this process or in a worker: policy adapters, the explore schedule and
the per-episode metrics with the official names."""

from __future__ import annotations

import re

import numpy as np

from torch_dreamer.runs.driver import RandomPolicy  # noqa: F401  (re-exported for actors)


def agent_policy(agent, mode):
    """`(obs, state) -> (numpy actions, state)` for a Driver; `mode` is a policy mode or a function
    returning one, asked at every call (so `expl_every` can switch policies mid-episode)."""
    def act(obs, state):
        action, state = agent.policy(obs, state, mode() if callable(mode) else mode)
        return action.cpu().numpy(), state
    return act


class ExploreSchedule:
    """Which policy collects data at agent step `step`: explore while step < expl_until (frames;
    0 = no end, the official Until(0)), then train; or, with expl_every N > 0, explore on one policy
    call every N agent steps."""

    def __init__(self, config):
        self.expl_until = config.expl_until / config.action_repeat  # given in frames, as in train.py
        self.expl_every = int(config.expl_every)
        self._next_expl = 0

    def __call__(self, step: int) -> str:
        if self.expl_until and step < self.expl_until:
            return "explore"
        if self.expl_every > 0:
            if step >= self._next_expl:
                self._next_expl = step + self.expl_every
                return "explore"
            return "train"
        return "train" if self.expl_until else "explore"


def episode_metrics(config, episode: dict, mode: str) -> dict:
    """`{mode}_return`, `{mode}_length` and the `log_keys_*` sums/means/maxes of one finished episode."""
    metrics = {f"{mode}_return": float(episode["reward"].astype(np.float64).sum()),
               f"{mode}_length": len(episode["reward"]) - 1}
    for key, value in episode.items():
        if re.match(config.log_keys_sum, key):
            metrics[f"sum_{mode}_{key}"] = value.sum()
        if re.match(config.log_keys_mean, key):
            metrics[f"mean_{mode}_{key}"] = value.mean()
        if re.match(config.log_keys_max, key):
            metrics[f"max_{mode}_{key}"] = value.max(0).mean()
    return metrics
