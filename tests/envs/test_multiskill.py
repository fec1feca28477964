"""MultiSkill (`--eval_skills`): every layout is solvable, and solving it needs each barrier's skill."""

import collections

import numpy as np
import pytest

pytest.importorskip("minigrid")

from torch_dreamer.config import resolve  # noqa: E402
from torch_dreamer.envs import make_vector_env  # noqa: E402
from torch_dreamer.envs.minigrid import registered_ids  # noqa: E402


def reachable(grid, start, passable) -> set:
    """Cells reachable from `start` through cells whose object passes `passable(obj)` (None is floor)."""
    seen, queue = {start}, collections.deque([start])
    while queue:
        x, y = queue.popleft()
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if (nx, ny) not in seen and 0 <= nx < grid.width and 0 <= ny < grid.height and passable(grid.get(nx, ny)):
                seen.add((nx, ny))
                queue.append((nx, ny))
    return seen


@pytest.mark.parametrize("count", [2, 3, 4])
def test_multiskill_layouts_need_every_skill_and_are_solvable(count):
    import gymnasium

    env_id = f"MiniGrid-MultiSkill-N{count}-v0"
    assert env_id in registered_ids()
    env = gymnasium.make(env_id).unwrapped
    for seed in range(10):
        env.reset(seed=seed)
        grid, start = env.grid, tuple(int(v) for v in env.agent_pos)
        cells = {(x, y): grid.get(x, y) for x in range(grid.width) for y in range(grid.height)}
        goal = next(pos for pos, obj in cells.items() if obj is not None and obj.type == "goal")
        types = [obj.type for obj in cells.values() if obj is not None]
        assert types.count("door") == 1 and types.count("key") == 1 and "lava" in types
        key = next(pos for pos, obj in cells.items() if obj is not None and obj.type == "key")
        safe = lambda obj: obj is None or obj.type in ("goal", "key", "door")
        assert key in reachable(grid, start, lambda obj: obj is None or obj.type in ("goal", "key"))
        assert goal in reachable(grid, start, safe)  # solvable: key, door, gaps
        assert goal not in reachable(grid, start, lambda obj: obj is None or obj.type in ("goal", "key"))  # door needed
        # The barriers are full columns but for one opening each: lava blocks unless crossed at its gap.
        lava_columns = {x for (x, _), obj in cells.items() if obj is not None and obj.type == "lava"}
        assert all(sum(1 for y in range(1, grid.height - 1) if grid.get(x, y) is None) == 1 for x in lava_columns)
    env.close()


def test_eval_skills_adds_the_multiskill_env_to_the_eval_tasks(tmp_path):
    from torch_dreamer.runs.continual_cli import build

    config, evals = build("minigrid", ["--cl", "--num_tasks=3", "--eval_skills", f"--logdir={tmp_path}"])
    assert evals[-1] == "minigrid_MiniGrid-MultiSkill-N2-v0" and len(evals) == 4
    envs = make_vector_env(config.update({"task": evals[-1]}), "eval", 1, 0)
    obs, _ = envs.reset(seed=0)
    assert obs["image"].shape == (1, 64, 64, 3) and obs["image"].dtype == np.uint8
    envs.close()
