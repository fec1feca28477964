"""Policy weights shared between the learner and actors through storage (a folder or an fsspec URL).

The learner publishes `policy.pt` (the agent's weights, its spaces, config and counters) and then a small
`policy.json` ({updates, step, time}); actors read the JSON cheaply and reload the weights only when it
changed. Actors report to `actors/{name}.json` ({episodes, steps, policy_updates, ...}); a `stop` file
tells every actor to save its unfinished episodes and exit. Storage is the only channel, so an actor
on another machine needs nothing but the two URLs.
"""

from __future__ import annotations

import io
import json
import time

import torch

from torch_dreamer.tools.files import get_bytes, join, list_names, put_bytes, remove


def publish_policy(policy_dir, agent, spaces, config, updates: int, step: int) -> None:
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in agent.state_dict().items() if isinstance(v, torch.Tensor)}
    torch.save({"agent": state, "spaces": spaces.to_dict(), "config": config.flat,
                "updates": int(updates), "step": int(step)}, buffer)
    put_bytes(join(policy_dir, "policy.pt"), buffer.getvalue())
    write_json(join(policy_dir, "policy.json"), {"updates": int(updates), "step": int(step), "time": time.time()})


def read_json(path) -> dict | None:
    data = get_bytes(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:  # a file being replaced on a store without atomic PUT: read again next time
        return None


def write_json(path, value: dict) -> None:
    put_bytes(path, json.dumps(value).encode())


class PolicyReader:
    """An actor's view of the published policy: `refresh()` reloads the weights when they changed."""

    def __init__(self, policy_dir, agent):
        self.policy_dir, self.agent = policy_dir, agent
        self.updates = -1  # no weights yet: the actor collects with a random policy (prefill)
        self.step = 0

    @property
    def ready(self) -> bool:
        return self.updates >= 0

    def refresh(self) -> bool:
        meta = read_json(join(self.policy_dir, "policy.json"))
        if meta is None or int(meta["updates"]) == self.updates:
            return False
        data = get_bytes(join(self.policy_dir, "policy.pt"))
        if data is None:
            return False
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        missing, unexpected = self.agent.load_state_dict(payload["agent"], strict=False)
        if unexpected or [k for k in missing if not k.endswith("_extra_state")]:
            raise RuntimeError(f"published policy does not fit this actor's model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}); start actors with the learner's config")
        self.updates, self.step = int(payload["updates"]), int(payload["step"])
        return True


def stop_requested(policy_dir) -> bool:
    return get_bytes(join(policy_dir, "stop")) is not None


def request_stop(policy_dir) -> None:
    put_bytes(join(policy_dir, "stop"), b"stop\n")


def clear_stop(policy_dir) -> None:
    remove(join(policy_dir, "stop"))


def actor_reports(policy_dir) -> dict[str, dict]:
    """{actor name: its last report} of every actor that reported to this policy folder."""
    folder = join(policy_dir, "actors")
    reports = {}
    for name in list_names(folder, ".json"):
        report = read_json(join(folder, name))
        if report is not None:
            reports[name[: -len(".json")]] = report
    return reports
