"""Continual-Dreamer's `--state_bonus`: a count-based exploration bonus on MiniGrid training rewards.

Every step adds 1 / sqrt(n(x, y)) to the reward, n counting the visits of the agent's cell (direction
ignored). The counts live in a `VisitCounts` table: a new table per task resets them (our default);
passing one table to every task's envs keeps them, as the original did (`--state_bonus_keep`).
Training envs only: evaluation measures the task's own reward.
"""

from __future__ import annotations

import collections

import gymnasium


class VisitCounts(collections.Counter):
    """Visits per (x, y) cell, shared by the envs that hold it."""


class StateBonus(gymnasium.Wrapper):
    def __init__(self, env, counts: VisitCounts | None = None):
        super().__init__(env)
        self.counts = counts if counts is not None else VisitCounts()

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        cell = tuple(int(v) for v in self.env.unwrapped.agent_pos)
        self.counts[cell] += 1
        return obs, float(reward) + self.counts[cell] ** -0.5, terminated, truncated, info
