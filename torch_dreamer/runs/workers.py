"""Env worker pools on existing engines: local processes (multiprocessing, spawn) or Ray tasks.

A pool starts one `run_actor` per spec, `check()`s them from the learner loop (a dead worker is reported
and restarted with a fresh seed; it loses at most its unfinished episodes), and `stop()`s them: the
learner writes the stop file, every actor saves its unfinished episodes and exits.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings

from torch_dreamer.errors import UserError
from torch_dreamer.runs.actor import run_actor

BACKENDS = ("process", "ray")
RESTART_SEED_STRIDE = 1_000_003  # a restarted worker must not replay the episodes of its first life


def actor_specs(config, replay_dir, eval_dir, policy_dir) -> list[dict]:
    """Keyword arguments of `run_actor` for `workers` train and `eval_workers` eval actors."""
    specs = []
    for i in range(int(config.workers)):
        specs.append({"config": dict(config.flat), "replay_dir": str(replay_dir), "policy_dir": str(policy_dir),
                      "name": f"train-{i}", "mode": "train", "seed": config.seed + 100 * (i + 1)})
    for i in range(int(config.eval_workers)):
        specs.append({"config": dict(config.flat), "replay_dir": str(eval_dir), "policy_dir": str(policy_dir),
                      "name": f"eval-{i}", "mode": "eval", "seed": config.seed + 10_000 + 100 * (i + 1)})
    return specs


def make_pool(backend: str, specs: list[dict]):
    if backend == "process":
        return ProcessPool(specs)
    if backend == "ray":
        return RayPool(specs)
    raise UserError(f"worker_backend must be one of {', '.join(BACKENDS)}, not '{backend}'")


class ProcessPool:
    """Workers as spawned processes: a clean interpreter each (no forked torch or env state)."""

    def __init__(self, specs: list[dict]):
        self.specs = specs
        self.context = multiprocessing.get_context("spawn")
        self.procs: dict[str, multiprocessing.Process] = {}
        self.restarts = 0
        self.stopping = False

    def start(self) -> None:
        for spec in self.specs:
            self._launch(spec)

    def _launch(self, spec: dict) -> None:
        proc = self.context.Process(target=run_actor, kwargs={**spec, "parent_pid": os.getpid()},
                                    name=spec["name"], daemon=True)
        proc.start()
        self.procs[spec["name"]] = proc

    def check(self) -> list[str]:
        """Restarts workers that died; returns one line per restart for the log."""
        lines = []
        for spec in self.specs:
            proc = self.procs[spec["name"]]
            if proc.is_alive() or self.stopping:
                continue
            lines.append(f"worker {spec['name']} (pid {proc.pid}) ended with exit code {proc.exitcode}; restarting it")
            self.restarts += 1
            spec["seed"] += RESTART_SEED_STRIDE
            self._launch(spec)
        return lines

    def stop(self, timeout: float = 30.0) -> None:
        """Waits for workers to exit after the stop file; terminates those that do not in time."""
        self.stopping = True
        deadline = time.time() + timeout
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.time()))
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the actor saves its unfinished episodes
                proc.join(5)
            if proc.is_alive():
                proc.kill()


class RayPool:
    """Workers as Ray tasks on the current Ray cluster (`ray.init()` locally when none is configured)."""

    def __init__(self, specs: list[dict]):
        try:
            import ray
        except ImportError:
            raise UserError("--worker_backend ray needs Ray; pip install 'ray[default]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address="auto" if _cluster_configured() else None, ignore_reinit_error=True,
                     log_to_driver=False, include_dashboard=False)
        self.remote = ray.remote(num_cpus=1, max_retries=0)(run_actor)
        self.specs = specs
        self.refs: dict[str, object] = {}
        self.restarts = 0
        self.stopping = False

    def start(self) -> None:
        for spec in self.specs:
            self.refs[spec["name"]] = self.remote.remote(**spec)

    def check(self) -> list[str]:
        lines = []
        for spec in self.specs:
            ref = self.refs[spec["name"]]
            done, _ = self.ray.wait([ref], timeout=0)
            if not done or self.stopping:
                continue
            try:
                self.ray.get(ref)
                reason = "returned"
            except Exception as error:  # noqa: BLE001 - a worker's failure is reported, not fatal
                reason = f"failed ({type(error).__name__})"
            lines.append(f"worker {spec['name']} {reason}; restarting it")
            self.restarts += 1
            spec["seed"] += RESTART_SEED_STRIDE
            self.refs[spec["name"]] = self.remote.remote(**spec)
        return lines

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping = True
        refs = list(self.refs.values())
        done, pending = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in pending:
            self.ray.cancel(ref, force=True)
        if pending:
            warnings.warn(f"{len(pending)} Ray workers did not stop in {timeout:.0f} s and were cancelled")


def _cluster_configured() -> bool:
    import os

    return bool(os.environ.get("RAY_ADDRESS"))
