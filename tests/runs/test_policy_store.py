"""Weights travel from the learner to actors through storage only (a folder or an fsspec URL)."""

import numpy as np
import torch

from torch_dreamer.agent.agent import Agent
from torch_dreamer.config import resolve
from torch_dreamer.runs import policy_store
from torch_dreamer.runs.spaces import Spaces
from tests.runs.conftest import TINY


def agents(seed_a, seed_b):
    config = resolve(["gym_vector"], TINY)
    spaces = Spaces({"vector": ((4,), np.dtype(np.float32))}, 2, True)
    torch.manual_seed(seed_a)
    a = Agent(config, spaces.obs, spaces.act_dim, spaces.discrete)
    torch.manual_seed(seed_b)
    b = Agent(config, spaces.obs, spaces.act_dim, spaces.discrete)
    return config, spaces, a, b


def test_published_weights_reach_the_actor_only_when_they_change(tmp_path):
    for where in (tmp_path / "policy", "memory://policy-test"):
        config, spaces, learner, actor = agents(0, 1)
        reader = policy_store.PolicyReader(where, actor)
        assert not reader.ready and not reader.refresh()          # nothing published yet: act randomly
        policy_store.publish_policy(where, learner, spaces, config, updates=7, step=120)
        assert reader.refresh() and reader.updates == 7 and reader.step == 120
        for key, value in learner.state_dict().items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, actor.state_dict()[key]), key
        assert not reader.refresh()                                # same version: nothing reloaded


def test_stop_file_and_actor_reports(tmp_path):
    policy_store.clear_stop(tmp_path)
    assert not policy_store.stop_requested(tmp_path)
    policy_store.request_stop(tmp_path)
    assert policy_store.stop_requested(tmp_path)
    policy_store.write_json(tmp_path / "actors" / "train-0.json", {"episodes": 3, "policy_updates": 5})
    (tmp_path / "actors" / "junk.json").write_text("{half")       # a torn report is skipped, not fatal
    assert policy_store.actor_reports(tmp_path) == {"train-0": {"episodes": 3, "policy_updates": 5}}
