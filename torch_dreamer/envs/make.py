"""Builds `config.task` as a contract env, and vectors of them."""

from __future__ import annotations

import difflib
import functools
import multiprocessing
import sys

import gymnasium

from torch_dreamer.envs.wrappers import SeedOnFirstReset, wrap_env
from torch_dreamer.errors import UserError

SUITES = ("atari", "dmc", "crafter", "minigrid", "minihack", "gym")
MODES = ("train", "eval")
# Evaluation envs get seeds far from the training ones so their episodes differ.
EVAL_SEED_OFFSET = 1_000_000
PARALLEL = ("none", "process")
# Workers are forked from a clean fork server, never from the trainer itself: forking a
# parent that holds torch thread pools or a MuJoCo GL context can deadlock or crash the
# child. With the heavy imports preloaded into the server, a worker starts in ~10 ms
# instead of ~2 s with spawn, which re-imports torch in every worker (docs/envs.md).
MP_CONTEXT = "forkserver"
SUITE_MODULES = {"atari": "ale_py", "dmc": "dm_control.suite", "crafter": "crafter", "minigrid": "minigrid", "minihack": "minihack"}


def split_task(task: str) -> tuple[str, str]:
    suite, _, name = task.partition("_")
    if suite not in SUITES or not name:
        close = difflib.get_close_matches(suite, SUITES, n=1)
        hint = f"; did you mean {close[0]}_...?" if close else ""
        raise UserError(
            f"unknown task '{task}': tasks look like <suite>_<name> with suite one of {', '.join(SUITES)}{hint}"
        )
    return suite, name


def env_seed(config, mode: str, seed: int | None) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    seed = int(config.seed if seed is None else seed)
    return seed + (EVAL_SEED_OFFSET if mode == "eval" else 0)


def make_env(config, mode: str = "train", seed: int | None = None) -> gymnasium.Env:
    """Builds `config.task` (atari_*, dmc_*, crafter_*, minigrid_*, minihack_*, gym_*) as a contract env.

    The first reset without a seed uses `seed` (default `config.seed`), offset for eval envs.
    """
    suite, name = split_task(config.task)
    seed = env_seed(config, mode, seed)
    env, repeats_itself = _make_suite(suite, name, config, seed)
    env = wrap_env(env, config, action_repeat=1 if repeats_itself else None)
    return SeedOnFirstReset(env, seed)


def _make_suite(suite: str, name: str, config, seed: int) -> tuple[gymnasium.Env, bool]:
    """The raw suite env and whether it already repeats actions (then wrap_env must not)."""
    if suite == "atari":
        from torch_dreamer.envs.atari import make_atari

        return make_atari(name, config), True
    if suite == "dmc":
        from torch_dreamer.envs.dmc import make_dmc

        return make_dmc(name, config, seed), True
    if suite == "crafter":
        from torch_dreamer.envs.crafter import make_crafter

        return make_crafter(name, config, seed), False
    if suite == "minigrid":
        from torch_dreamer.envs.minigrid import make_minigrid

        return make_minigrid(name, config, seed), False
    if suite == "minihack":
        from torch_dreamer.envs.minihack import make_minihack

        return make_minihack(name, config, seed), False
    return make_gym(name), False


def make_gym(env_id: str) -> gymnasium.Env:
    """`gym_<id>`: any registered gymnasium id, also `module:Id` to import the registering module."""
    try:
        return gymnasium.make(env_id)
    except (gymnasium.error.Error, ModuleNotFoundError) as e:
        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('gym_' + c for c in close)}?" if close else ""
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot make gymnasium env '{env_id}': {message}{hint}") from None


AUTORESET = gymnasium.vector.AutoresetMode.SAME_STEP


def make_vector_env(config, mode: str = "train", num_envs: int | None = None, seed: int | None = None):
    """`num_envs` contract envs (default `config.envs`), copy i seeded `seed + i`.

    SyncVectorEnv for one env in this process; AsyncVectorEnv (worker processes) when
    `envs_parallel == "process"` or more than one env. Both use (not gymnasium's default)
    SAME_STEP autoreset: a done step returns the next episode's first observation and puts the
    last one in `info["final_obs"]`, so the driver never spends a policy call on a reset.
    """
    num_envs = int(config.envs if num_envs is None else num_envs)
    if num_envs < 1:
        raise UserError(f"the number of envs must be at least 1, got {num_envs}")
    if config.envs_parallel not in PARALLEL:
        raise UserError(f"envs_parallel must be one of {', '.join(PARALLEL)}, got '{config.envs_parallel}'")
    split_task(config.task)  # fail on a bad task name here, not inside a worker
    seed = int(config.seed if seed is None else seed)
    fns = [functools.partial(make_env, config, mode, seed + i) for i in range(num_envs)]
    if num_envs == 1 and config.envs_parallel == "none":
        return gymnasium.vector.SyncVectorEnv(fns, autoreset_mode=AUTORESET)
    # forkserver exists on Linux and macOS; elsewhere spawn is the safe choice.
    context = MP_CONTEXT if MP_CONTEXT in multiprocessing.get_all_start_methods() else "spawn"
    if context == "forkserver":
        _preload_fork_server(split_task(config.task)[0])
    return gymnasium.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=AUTORESET)


def _preload_fork_server(suite: str) -> None:
    """Imports torch (if the parent has it), this package and the suite once in the fork server.

    Workers re-run the main module's imports; with these already loaded that costs nothing.
    Only the first call in a process takes effect, as the server then keeps running.
    """
    if suite == "dmc":
        from torch_dreamer.envs.dmc import choose_gl_backend

        choose_gl_backend()  # the server inherits the environment; dm_control reads it on import
    preload = [name for name in ("torch",) if name in sys.modules] + ["torch_dreamer.envs"]
    if suite in SUITE_MODULES:
        preload.append(SUITE_MODULES[suite])
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
