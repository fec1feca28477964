"""An env worker: steps its own envs with the newest published policy and writes finished episodes.

`run_actor` is a plain function of (config, replay URL, policy URL, name, mode, seed), so the same code
runs as a local process (`--workers N`), a Ray task (`--worker_backend ray`), or a command on another
machine, pod or Slurm task (`dreamer actor --replay_dir URL --policy_dir URL ...`).
"""

from __future__ import annotations

import os
import signal
import time

import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.config import Config
from torch_dreamer.data.episodes import save_episode
from torch_dreamer.runs.acting import ExploreSchedule, RandomPolicy, agent_policy
from torch_dreamer.runs.driver import Driver
from torch_dreamer.runs.policy_store import PolicyReader, actor_reports, read_json, stop_requested, write_json
from torch_dreamer.runs.spaces import Spaces
from torch_dreamer.tools.files import join

STEPS_PER_POLL = 20   # env steps between checks for new weights, the stop file and throttling
THROTTLE_SLEEP_S = 0.2
DEFAULT_AHEAD = 1.25  # limit_step_ratio < 0: env steps per update allowed, relative to train_ratio's


def run_actor(config: dict, replay_dir: str, policy_dir: str, name: str = "actor-0", mode: str = "train",
              seed: int = 0, threads: int = 1, parent_pid: int | None = None) -> dict:
    """Acts until the learner writes the stop file (or SIGTERM / Ctrl-C); returns {episodes, steps}.

    mode "train" collects with a random policy until weights are published (the prefill), then with the
    explore schedule of the config; mode "eval" waits for weights and acts greedily (policy mode `eval`).
    Unfinished episodes are written as truncated on every exit path, so a stopped actor loses nothing;
    a killed one loses only its unfinished episodes. With `parent_pid` (local workers) the actor also stops
    when that process is gone: a learner killed with -9 writes no stop file.
    """
    from torch_dreamer.envs import make_vector_env

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    config = Config(config)
    envs = make_vector_env(config, mode, config.envs, seed)
    spaces = Spaces.from_vector_env(envs)
    agent = Agent(config, spaces.obs, spaces.act_dim, spaces.discrete).eval()
    reader = PolicyReader(policy_dir, agent)
    driver = Driver(envs, seed=seed)
    counts = {"episodes": 0, "steps": 0}
    report_path = join(policy_dir, "actors", f"{name}.json")

    def on_episode(episode, worker):
        save_episode(replay_dir, episode)
        counts["episodes"] += 1
        counts["steps"] += len(episode["action"]) - 1
        write_json(report_path, {**counts, "mode": mode, "policy_updates": reader.updates,
                                 "pid": os.getpid(), "time": time.time()})

    driver.on_episode.append(on_episode)
    random_policy = RandomPolicy(spaces.act_dim, spaces.discrete, seed)
    explore = ExploreSchedule(config)
    collect = agent_policy(agent, lambda: explore(reader.step + counts["steps"]))
    last_check = 0.0
    throttle = Throttle(config, policy_dir)
    try:
        while not stop_requested(policy_dir) and not _orphaned(parent_pid):
            if time.time() - last_check >= config.policy_refresh_s or not reader.ready:
                reader.refresh()
                last_check = time.time()
            if mode == "eval" and not reader.ready or mode == "train" and throttle(counts["steps"]):
                time.sleep(THROTTLE_SLEEP_S)
                continue
            policy = (agent_policy(agent, "eval") if mode == "eval" else collect) if reader.ready else random_policy
            driver(policy, steps=STEPS_PER_POLL)
    except KeyboardInterrupt:
        pass
    finally:
        driver.flush()
        driver.close()
    return counts


def step_limit(config) -> float:
    """Env steps an actor may collect per learner update before it pauses (PyDreamer's limit_step_ratio).

    0 never pauses; a negative value (the default) allows 1.25 times the env steps per update that
    `train_ratio` asks for: actors stay a little ahead of the learner (never waiting on it while it
    trains), and with fast envs the achieved replay ratio stays within 20% of the target.
    """
    limit = float(config.limit_step_ratio)
    if limit >= 0:
        return limit
    from torch_dreamer.runs.loops import train_ratio

    return DEFAULT_AHEAD * config.dataset.batch * config.dataset.length / train_ratio(config)


class Throttle:
    """Pauses a train actor while the replay runs more than `step_limit` env steps per update ahead.

    The learner writes `progress.json` ({updates, step}) about once a second; between its writes the
    actor adds the steps it collected itself since it last read the file, so a fast env cannot run
    far past the limit before the learner lists the replay again.
    """

    def __init__(self, config, policy_dir):
        self.config, self.path, self.limit = config, join(policy_dir, "progress.json"), step_limit(config)
        self.seen = (0, 0, 0)  # (learner step, learner updates, own steps when read)

    def __call__(self, own_steps: int) -> bool:
        if self.limit <= 0:
            return False
        progress = read_json(self.path)
        if progress is not None and (progress["step"], progress["updates"]) != self.seen[:2]:
            self.seen = (int(progress["step"]), int(progress["updates"]), own_steps)
        step, updates, own_then = self.seen
        return step + own_steps - own_then > self.config.prefill + self.limit * updates


def _orphaned(parent_pid: int | None) -> bool:
    return parent_pid is not None and os.getppid() != parent_pid


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def actor_status(policy_dir, updates: int) -> dict:
    """Per-actor episode counts and the actors' lag (learner updates not yet in their weights)."""
    reports = actor_reports(policy_dir)
    metrics = {}
    lags = []
    for name, report in sorted(reports.items()):
        metrics[f"actor_{name}_episodes"] = int(report.get("episodes", 0))
        if int(report.get("policy_updates", -1)) >= 0:
            lags.append(updates - int(report["policy_updates"]))
    if lags:
        metrics["actor_lag"] = max(lags)
    return metrics


__all__ = ["run_actor", "actor_status", "read_json"]
