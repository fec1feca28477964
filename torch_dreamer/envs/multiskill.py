"""MultiSkill: one MiniGrid task that needs the skills of all three Continual-Dreamer MiniGrid tasks.

Continual-Dreamer's `--eval_skills` evaluates on `MiniGrid-MultiSkill-N2-v0` from its vendored gym-minigrid,
whose source the reference does not describe beyond the name; this is our construction, documented here.

`MiniGrid-MultiSkill-N{k}-v0` (k = 2, 3, 4): a (2k + 5)-square room, the agent on the left, the goal in the
bottom-right corner and k vertical barriers between them, each with one opening at a random row. The
barriers' kinds cycle through the training tasks' skills: a lava river (LavaCrossing: cross at the gap,
touching lava ends the episode), a wall whose opening is a locked yellow door with its key lying on the
agent's side (DoorKey), and a plain wall with a gap (SimpleCrossing). So N2 = lava + door, N3 adds a wall,
N4 another river. Reward as every MiniGrid task: 1 - 0.9 * steps / max_steps on reaching the goal.
"""

from __future__ import annotations

import gymnasium

KINDS = ("lava", "door", "wall")
SKILL_COUNTS = (2, 3, 4)
MISSION = "get the key, open the door, avoid the lava, reach the goal"


def register() -> None:
    for count in SKILL_COUNTS:
        env_id = f"MiniGrid-MultiSkill-N{count}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point="torch_dreamer.envs.multiskill:make_multiskill",
                               kwargs={"num_skills": count})


def make_multiskill(num_skills: int = 2, **kwargs):
    """The env class is built on first use, so importing this module never needs minigrid."""
    from minigrid.core.grid import Grid
    from minigrid.core.mission import MissionSpace
    from minigrid.core.world_object import Door, Goal, Key, Lava, Wall
    from minigrid.minigrid_env import MiniGridEnv

    class MultiSkillEnv(MiniGridEnv):
        def __init__(self, num_skills: int, max_steps: int | None = None, **kwargs):
            if num_skills < 1:
                raise ValueError(f"num_skills must be >= 1, got {num_skills}")
            self.num_skills = num_skills
            size = 2 * num_skills + 5
            mission = MissionSpace(mission_func=lambda: MISSION)
            super().__init__(mission_space=mission, grid_size=size, max_steps=max_steps or 4 * size * size, **kwargs)

        def _gen_grid(self, width, height):
            self.grid = Grid(width, height)
            self.grid.wall_rect(0, 0, width, height)
            self.put_obj(Goal(), width - 2, height - 2)
            columns = [3 + 2 * i for i in range(self.num_skills)]  # barrier columns, regions between them
            for index, column in enumerate(columns):
                kind = KINDS[index % len(KINDS)]
                opening = self._rand_int(1, height - 1)
                for row in range(1, height - 1):
                    if row != opening:
                        self.grid.set(column, row, Lava() if kind == "lava" else Wall())
                if kind == "door":
                    self.grid.set(column, opening, Door("yellow", is_locked=True))
            # Agent and key both left of the first barrier: the key is always reachable.
            self.place_agent(top=(1, 1), size=(columns[0] - 1, height - 2))
            if "door" in KINDS[: self.num_skills]:
                self.place_obj(Key("yellow"), top=(1, 1), size=(columns[0] - 1, height - 2))
            self.mission = MISSION

    return MultiSkillEnv(num_skills, **kwargs)
