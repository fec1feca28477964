"""The head registry, the two-hot categorical reward/critic head and the probes (map, goal) with their MiniGrid targets."""

import json
import pathlib

import numpy as np
import pytest
import torch

from torch_dreamer import config as config_lib
from torch_dreamer.agent import dists
from torch_dreamer.agent import heads as heads_lib
from torch_dreamer.agent.agent import Agent
from torch_dreamer.agent.heads import TwoHotDist, register, twohot
from torch_dreamer.agent.nets import MLP
from torch_dreamer.agent.world_model import WorldModel
from torch_dreamer.errors import UserError

BASELINE = pathlib.Path(__file__).with_name("wm_state_keys.json")
SIDE = 5  # a 5 x 5 map: 75 codes


# ----------------------------------------------------------------------------- registry and checkpoint keys


@pytest.mark.parametrize("name, blocks, shapes, act_dim", [
    ("defaults", [], {"image": (64, 64, 3)}, 6),
    ("defaults_vector", [], {"image": (64, 64, 3), "vector": (5,), "direction": ()}, 3),
    ("atari", ["atari"], {"image": (64, 64, 1)}, 6),
    ("dmc_proprio", ["dmc_proprio"], {"position": (14,), "velocity": (9,)}, 6),
    ("gym_vector", ["gym_vector"], {"vector": (4,)}, 2),
])
def test_state_dict_keys_unchanged_by_the_registry(one_thread, name, blocks, shapes, act_dim):
    """Keys and shapes recorded from the world model before heads became a registry (old checkpoints load)."""
    expected = json.loads(BASELINE.read_text())[name]
    wm = WorldModel(config_lib.resolve(blocks, []), shapes, act_dim)
    assert {k: list(v.shape) for k, v in wm.state_dict().items()} == expected
    assert list(wm.heads) == (["decoder", "reward", "discount"] if name != "dmc_proprio" else ["decoder", "reward"])


def test_a_head_by_config_and_one_class(tiny, space, batch, one_thread):
    @register("speed")
    class SpeedHead(MLP):
        keys = ("speed",)

        def __init__(self, config, shapes, feat_size):
            super().__init__(feat_size, shapes["speed"], layers=1, units=8)

    try:
        shapes = {"image": (64, 64, 3), "speed": (2,)}
        flags = ["--heads", "speed", "--grad_heads", "decoder,reward,discount,speed", "--encoder.mlp_keys", "$^",
                 "--decoder.mlp_keys", "$^"]
        wm = WorldModel(tiny(*flags), shapes, 3)
        assert list(wm.heads) == ["decoder", "reward", "discount", "speed"]
        data = batch(T=3, B=2)
        data["speed"] = torch.ones(3, 2, 2)
        loss, _, metrics, _ = wm.loss(data)
        assert "speed_loss" in metrics
        loss.backward()
        assert wm.heads["speed"].head.out.weight.grad is not None
    finally:
        heads_lib.HEADS.pop("speed")
    with pytest.raises(UserError, match="unknown head 'nope'"):
        WorldModel(tiny("--heads", "nope"), {"image": (64, 64, 3)}, 3)


# ----------------------------------------------------------------------------- two-hot categorical


def test_twohot_round_trip():
    low, high, bins = -20.0, 20.0, 255
    support = torch.linspace(low, high, bins)
    values = torch.tensor([-20.0, -3.3, -0.5, 0.0, 0.01, 0.777, 1.0, 19.99, 20.0])
    weights = twohot(values, low, high, bins)
    assert torch.allclose(weights.sum(-1), torch.ones(len(values)))
    assert ((weights > 0).sum(-1) <= 2).all()
    assert torch.allclose((weights * support).sum(-1), values, atol=1e-5)
    clipped = twohot(torch.tensor([-50.0, 50.0]), low, high, bins)  # outside: all weight on the end bins
    assert clipped[0, 0] == 1 and clipped[1, -1] == 1
    # The categorical whose probabilities are a value's two-hot has that value as mean and mode.
    dist = TwoHotDist(torch.log(weights.clamp_min(1e-12)), low, high)
    assert torch.allclose(dist.mean, values, atol=1e-4) and torch.allclose(dist.mode, values, atol=1e-4)
    # With symlog the two-hot lives in symlog space; mean and mode come back in the original space.
    big = torch.tensor([-300.0, 0.0, 5.0, 1000.0])
    target = twohot(heads_lib.symlog(big), low, high, bins)
    dist = TwoHotDist(torch.log(target.clamp_min(1e-12)), low, high, symlog=True)
    assert torch.allclose(dist.mean, big, rtol=1e-3, atol=1e-4)


def test_twohot_mean_matches_the_target_in_expectation(one_thread):
    """Cross-entropy training on noisy targets drives the mean to E[y] (two-hot is linear in y)."""
    torch.manual_seed(0)
    logits = torch.zeros(41, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for step in range(1000):
        y = torch.where(torch.rand(1024) < 0.3, torch.full((1024,), -1.0), 2.5 + 0.2 * torch.randn(1024))  # E[y] = 1.45
        loss = -TwoHotDist(logits.expand(1024, 41), -5.0, 5.0).log_prob(y).mean()
        opt.zero_grad()
        loss.backward()
        opt.param_groups[0]["lr"] = 0.05 if step < 600 else 0.005
        opt.step()
    assert TwoHotDist(logits, -5.0, 5.0).mean.item() == pytest.approx(1.45, abs=0.03)
    # The minimiser in closed form: the average two-hot target has exactly the targets' mean.
    y = torch.where(torch.rand(10000) < 0.3, torch.full((10000,), -1.0), 2.5 + 0.2 * torch.randn(10000))
    best = twohot(y, -5.0, 5.0, 41).mean(0)
    assert TwoHotDist(best.log(), -5.0, 5.0).mean.item() == pytest.approx(y.mean().item(), abs=1e-4)


def test_categorical_reward_and_critic_feed_imagination_as_numbers(tiny, space, batch, one_thread):
    flags = ["--reward_head.dist", "categorical", "--reward_head.bins", "21", "--reward_head.low", "-2",
             "--reward_head.high", "2", "--critic.dist", "categorical", "--critic.bins", "31", "--critic.symlog", "True"]
    agent = Agent(tiny(*flags), space(), 3, True)
    reward = agent.wm.heads["reward"]
    assert reward.head.out.out_features == 21 and reward.head.dist == "categorical"
    assert agent.task_behavior.critic.head.out.out_features == 31
    data = batch(T=4, B=3)
    _, post, metrics, _ = agent.wm.loss(data)
    feat = agent.wm.rssm.feat(post)
    assert dists.mode(reward(feat)).shape == (4, 3)  # what the agent's reward_fn reads
    assert metrics["reward_loss"] > 0
    state, metrics = agent.train_step(data)
    assert np.isfinite(float(metrics["critic_loss"])) and np.isfinite(float(metrics["actor_loss"]))
    assert np.isfinite(float(metrics["model_loss"]))


# ----------------------------------------------------------------------------- probes


def _probe_batch(batch, T=4, B=3, seed=0):
    data = batch(T=T, B=B)
    g = torch.Generator().manual_seed(seed)
    data["probe_map"] = torch.randint(0, 11, (T, B, SIDE * SIDE * 3), generator=g).float()
    data["probe_goal"] = torch.rand((T, B, 3), generator=g)
    return data


PROBE_SHAPES = {"image": (64, 64, 3), "vector": (4,), "probe_map": (SIDE * SIDE * 3,), "probe_goal": (3,)}


def test_probe_targets_never_reach_the_encoder_or_decoder(tiny):
    wm = WorldModel(tiny("--probes", "map,goal"), PROBE_SHAPES, 3)  # mlp_keys '.*' would match every vector
    assert wm.encoder.mlp_keys == ["vector"] and wm.heads["decoder"].mlp_keys == ["vector"]
    plain = WorldModel(tiny(), PROBE_SHAPES, 3)  # without --probes too: targets are never inputs
    assert plain.encoder.mlp_keys == ["vector"] and "map" not in plain.heads


def test_detached_probes_send_no_gradient_into_the_world_model(tiny, batch, one_thread):
    wm = WorldModel(tiny("--probes", "map,goal"), PROBE_SHAPES, 3)
    data = _probe_batch(batch)
    data["vector"] = torch.randn(4, 3, 4)
    loss, post, metrics, _ = wm.loss(data)
    assert "probe_map_loss" not in metrics  # not part of the world-model loss
    probe_params = {id(p) for name in ("map", "goal") for p in wm.heads[name].parameters()}
    assert all(id(p) not in probe_params for p in wm.model_parameters())
    assert len(wm.model_parameters()) + len(probe_params) == len(list(wm.parameters()))
    metrics = wm.train_probes(post, data)
    assert {"probe_map_loss", "probe_goal_loss", "probe_map_acc", "probe_loss", "probe_grad_norm"} <= set(metrics)
    for name in ("encoder", "rssm", "decoder", "reward", "discount"):
        module = wm.heads[name] if name in wm.heads else getattr(wm, name)
        assert all(p.grad is None for p in module.parameters()), name
    assert all(p.grad is not None for name in ("map", "goal") for p in wm.heads[name].parameters())
    # probe_grad True: the probes are ordinary heads of the loss and reach the RSSM.
    wm = WorldModel(tiny("--probes", "map,goal", "--probe_grad", "True"), PROBE_SHAPES, 3)
    assert wm.probe_opt is None and len(wm.model_parameters()) == len(list(wm.parameters()))
    loss, post, metrics, _ = wm.loss(data)
    assert "probe_map_loss" in metrics
    wm.heads["map"](wm.rssm.feat(post))["probe_map"].log_prob(data["probe_map"]).mean().backward()
    assert wm.rssm.obs_post[-1].weight.grad.abs().sum() > 0


def test_detached_probes_leave_the_world_model_update_unchanged(tiny, batch, one_thread):
    """Same seed, with and without probes: the world model's weights after an update are identical."""
    data = _probe_batch(batch)
    space = {"image": ((64, 64, 3), np.uint8), "probe_map": ((SIDE * SIDE * 3,), np.float32),
             "probe_goal": ((3,), np.float32)}
    weights = []
    for flags in ([], ["--probes", "map,goal"]):
        torch.manual_seed(0)
        agent = Agent(tiny(*flags), space, 3, True)
        torch.manual_seed(1)
        _, metrics = agent.train_step(data)
        assert ("probe_map_loss" in metrics) == bool(flags)
        weights.append({k: v.clone() for k, v in agent.wm.state_dict().items() if not k.startswith("heads.map")
                        and not k.startswith("heads.goal")})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert set(agent.optimizers()) >= {"model", "probe"}


def test_map_probe_report_is_an_image_for_tensorboard(tiny, batch, tmp_path):
    space = {"image": ((64, 64, 3), np.uint8), "probe_map": ((SIDE * SIDE * 3,), np.float32),
             "probe_goal": ((3,), np.float32)}
    agent = Agent(tiny("--probes", "map,goal"), space, 3, True)
    videos = agent.report(_probe_batch(batch, B=2))
    image = videos["probe_map"]
    assert image.dtype == np.uint8 and image.shape == (1, 2 * SIDE * 8 + 2, 2 * SIDE * 8 + 2, 3)  # true over predicted
    from torch_dreamer.tools.logger import Logger, TensorBoardOutput

    with Logger(tmp_path, outputs=[TensorBoardOutput(tmp_path)]) as logger:
        logger.add(videos, prefix="train")
        logger.write(1)
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_probe_without_its_target_is_a_clear_error(tiny):
    with pytest.raises(UserError, match="probe_map"):
        WorldModel(tiny("--probes", "map"), {"image": (64, 64, 3)}, 3)
    with pytest.raises(UserError, match="not a probe"):
        WorldModel(tiny("--probes", "reward"), {"image": (64, 64, 3)}, 3)


# ----------------------------------------------------------------------------- MiniGrid probe targets


def _minigrid_env(env_id, **flags):
    pytest.importorskip("minigrid")
    from torch_dreamer.envs import make_env

    args = ["--task", f"minigrid_{env_id}", "--probes", "map,goal"]
    for key, value in flags.items():
        args += [f"--{key}", str(value)]
    return make_env(config_lib.resolve(["minigrid"], args))


def test_minigrid_map_target_uses_minigrids_own_codes_and_pads_rectangles():
    from minigrid.core.constants import OBJECT_TO_IDX

    env = _minigrid_env("MiniGrid-DoorKey-6x6-v0")
    obs, _ = env.reset()
    codes = obs["probe_map"].reshape(6, 6, 3).astype(int)
    base = env.unwrapped
    assert codes[..., 0][base.agent_pos[1], base.agent_pos[0]] == OBJECT_TO_IDX["agent"]
    assert codes[..., 2][base.agent_pos[1], base.agent_pos[0]] == base.agent_dir
    assert (codes[..., 0] == OBJECT_TO_IDX["goal"]).sum() == 1 and (codes[..., 0] == OBJECT_TO_IDX["key"]).sum() == 1
    assert (codes[0, :, 0] == OBJECT_TO_IDX["wall"]).all()
    door = codes[codes[..., 0] == OBJECT_TO_IDX["door"]]
    assert door[0, 2] == 2  # locked: MiniGrid's STATE_TO_IDX, not silently invisible
    assert obs["probe_goal"][2] == 1.0 and np.abs(obs["probe_goal"][:2]).max() <= 1
    # Unlock is 11 x 6: padded with "unseen" (0) rows to 11 x 11.
    obs, _ = _minigrid_env("MiniGrid-Unlock-v0").reset()
    codes = obs["probe_map"].reshape(11, 11, 3)
    assert (codes[6:] == 0).all() and (codes[:6, :, 0] > 0).all()
    assert obs["probe_goal"].tolist() == [0, 0, 0]  # no goal object in Unlock


def test_every_minigrid_env_emits_the_probe_targets():
    pytest.importorskip("minigrid")
    from torch_dreamer.envs.minigrid import registered_ids

    checked = 0
    for env_id in registered_ids():
        if "-WFC-" in env_id:
            continue  # the minigrid wheel may lack the WFC pattern images
        env = _minigrid_env(env_id, minigrid_view="symbolic", **{"encoder.cnn_keys": "$^", "decoder.cnn_keys": "$^"})
        obs, _ = env.reset()
        side = int(round((obs["probe_map"].size / 3) ** 0.5))
        base = env.unwrapped
        assert side == max(base.width, base.height), env_id
        assert obs["probe_map"].max() < 16 and obs["probe_goal"].shape == (3,), env_id
        assert env.observation_space["probe_map"].shape == obs["probe_map"].shape
        env.close()
        checked += 1
    assert checked > 50
