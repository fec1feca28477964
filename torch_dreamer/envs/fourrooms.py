"""The FourRooms interference experiment Continual-Dreamer described but never released (reference §2).

`MiniGrid-FourRoomsInterference-S{seed}-G{k}-v0`: MiniGrid's FourRooms with its layout (door positions)
and start fixed by `seed`, the agent starting in the top-left room, and goal k in the top-right (k = 0)
or the bottom-left room (k = 1). The two tasks share layout and start and differ only in where the goal
is, so what one task rewards the other does not: learning the second interferes with the first.
`MiniGrid-FourRooms-v0` (random layout, start and goal every episode) is the procedurally generated
training task of `--proc`.
"""

from __future__ import annotations

import re

import gymnasium

PATTERN = re.compile(r"^MiniGrid-FourRoomsInterference-S(\d+)-G([01])-v0$")
START = (2, 2)
GOALS = ((16, 2), (2, 16))


def is_interference(env_id: str) -> bool:
    return PATTERN.match(env_id) is not None


def interference_id(seed: int, goal: int) -> str:
    return f"MiniGrid-FourRoomsInterference-S{int(seed)}-G{int(goal)}-v0"


def make_interference(env_id: str) -> gymnasium.Env:
    from minigrid.envs.fourrooms import FourRoomsEnv

    seed, goal = (int(x) for x in PATTERN.match(env_id).groups())
    return FixedLayout(FourRoomsEnv(agent_pos=START, goal_pos=GOALS[goal]), seed)


class FixedLayout(gymnasium.Wrapper):
    """Resets with the same seed every episode, so the doors (and the start direction) never change."""

    def __init__(self, env, layout_seed: int):
        super().__init__(env)
        self.layout_seed = layout_seed

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=self.layout_seed, options=options)
