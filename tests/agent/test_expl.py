"""Exploration behaviours: names, ensemble disagreement, reward mixing and stream normalisation
against hand-computed values, the Random actor, checkpoints and the observation-only world model."""

import numpy as np
import pytest
import torch

from torch_dreamer.agent import dists, expl
from torch_dreamer.agent.agent import Agent
from torch_dreamer.agent.behavior import StreamNorm
from torch_dreamer.config import resolve
from torch_dreamer.errors import UserError

TINY = [
    "--rssm.deter", "16", "--rssm.hidden", "16", "--rssm.stoch", "4", "--rssm.discrete", "4",
    "--encoder.mlp_layers", "16", "--decoder.mlp_layers", "16",
    "--reward_head.layers", "1", "--reward_head.units", "16", "--discount_head.layers", "1",
    "--discount_head.units", "16", "--actor.layers", "1", "--actor.units", "16",
    "--critic.layers", "1", "--critic.units", "16", "--expl_head.layers", "1", "--expl_head.units", "16",
    "--disag_models", "3", "--imag_horizon", "3", "--precision", "32",
]
OBS = {"vector": ((5,), np.float32)}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_agent(*flags, act_dim=3, discrete=True):
    torch.manual_seed(0)
    return Agent(resolve(["gym_vector"], TINY + list(flags)), OBS, act_dim, discrete)


def batch(T=6, B=4, act_dim=3, discrete=True):
    if discrete:
        action = torch.nn.functional.one_hot(torch.randint(act_dim, (T, B)), act_dim).float()
    else:
        action = torch.rand(T, B, act_dim) * 2 - 1
    false = torch.zeros(T, B, dtype=torch.bool)
    return {"vector": torch.rand(T, B, 5), "action": action, "reward": torch.rand(T, B),
            "is_first": false.clone(), "is_last": false.clone(), "is_terminal": false.clone()}


class Fixed(torch.nn.Module):
    """A head whose prediction is `fn(input)`, a unit-variance Normal over its last axis."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return dists.MSEDist(self.fn(x), 0)


def member(value, dims=2):
    return Fixed(lambda x: torch.full(x.shape[:-1] + (dims,), value))


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize("name, canonical", [
    ("greedy", "greedy"), ("Greedy", "greedy"), ("plan2explore", "plan2explore"), ("Plan2Explore", "plan2explore"),
    ("PLAN2EXPLORE", "plan2explore"), ("model_loss", "model_loss"), ("ModelLoss", "model_loss"),
    ("modelloss", "model_loss"), ("random", "random"), ("Random", "random")])
def test_names_any_case_and_official_class_names(name, canonical):
    assert expl.canonical_name(name) == canonical


def test_agent_builds_each_behaviour_and_rejects_unknown():
    assert make_agent("--expl_behavior", "Greedy").expl_behavior is None
    assert isinstance(make_agent("--expl_behavior", "Plan2Explore").expl_behavior, expl.Plan2Explore)
    assert isinstance(make_agent("--expl_behavior", "ModelLoss").expl_behavior, expl.ModelLoss)
    assert isinstance(make_agent("--expl_behavior", "Random").expl_behavior, expl.Random)
    with pytest.raises(UserError, match="greedy, plan2explore, model_loss, random") as info:
        make_agent("--expl_behavior", "curious")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="eval_policy"):
        make_agent("--eval_policy", "both")
    with pytest.raises(UserError, match="disag_target"):
        make_agent("--expl_behavior", "plan2explore", "--disag_target", "image")


@pytest.mark.parametrize("target, size", [("stoch", 16), ("deter", 16), ("embed", 16), ("feat", 32)])
def test_disag_target_sizes_for_discrete_latents(target, size):
    p2e = make_agent("--expl_behavior", "plan2explore", "--disag_target", target).expl_behavior
    assert p2e.target_size == size
    data = batch()
    agent = p2e._agent
    _, _, outputs = agent.wm.loss_outputs(data)
    post = outputs["post"]
    assert p2e.targets(post, outputs).shape == (6, 4, size)
    assert p2e.heads[0].head.out.in_features == 16 and p2e.heads[0].trunk[0].in_features == 32 + 3
    assert torch.isfinite(p2e.model_loss(post, outputs, data))


def test_embed_target_is_the_world_models_embedding():
    """As the official (context['embed']): the embedding the world-model loss computed, before its update,
    with no second encoder pass."""
    p2e = make_agent("--expl_behavior", "plan2explore", "--disag_target", "embed").expl_behavior
    agent, data = p2e._agent, batch()
    _, _, outputs = agent.wm.loss_outputs(data)
    with torch.no_grad():
        expected = agent.wm.encoder(agent.wm.preprocess(data))
    assert torch.equal(p2e.targets(outputs["post"], outputs), expected)
    assert not outputs["embed"].requires_grad


# ----------------------------------------------------------------------------- arithmetic


def test_stream_norm_by_hand():
    norm = StreamNorm((), momentum=0.9, scale=2.0, eps=1e-8)
    out, metrics = norm(torch.tensor([1.0, -3.0]))           # mean |x| = 2: mag = 0.9 * 1 + 0.1 * 2 = 1.1
    assert torch.allclose(out, torch.tensor([1.0, -3.0]) / 1.1 * 2)
    assert torch.allclose(norm.mag, torch.tensor(1.1))
    out, _ = norm(torch.tensor([[4.0, 4.0], [4.0, 4.0]]))   # mag = 0.9 * 1.1 + 0.1 * 4 = 1.39
    assert torch.allclose(out, torch.full((2, 2), 4.0 / 1.39 * 2))
    assert torch.allclose(metrics["mean"], torch.tensor(-1.0)) and torch.allclose(metrics["normed_mean"], torch.tensor(-2 / 1.1))
    identity = StreamNorm((), momentum=1.0, scale=1.0)      # the official default changes nothing
    for _ in range(3):
        out, _ = identity(torch.tensor([5.0, -7.0]))
    assert torch.allclose(out, torch.tensor([5.0, -7.0])) and identity.mag.item() == 1.0


def test_reward_mixing_and_normalisation_by_hand():
    agent = make_agent("--expl_behavior", "plan2explore", "--expl_intr_scale", "0.5", "--expl_extr_scale", "2.0",
                       "--expl_reward_norm.momentum", "0.5")
    p2e = agent.expl_behavior
    p2e.heads = torch.nn.ModuleList(member(float(i)) for i in (1, 3, 5))  # std over {1, 3, 5} = sqrt(8/3)
    agent.wm.heads["reward"] = Fixed(lambda x: torch.tensor([2.0, -2.0]))
    seq = {"feat": torch.zeros(2, 32), "action": torch.zeros(2, 3)}
    disag = (8 / 3) ** 0.5
    assert torch.allclose(p2e.intrinsic(seq), torch.full((2,), disag))
    reward = p2e.reward(seq)
    # intr: mag = 0.5 + 0.5 * disag; extr: mean |r| = 2, mag = 0.5 + 0.5 * 2 = 1.5.
    expected = 0.5 * disag / (0.5 + 0.5 * disag) + 2.0 * torch.tensor([2.0, -2.0]) / 1.5
    assert torch.allclose(reward, expected)
    assert torch.allclose(p2e._reward_metrics["expl_intr_mean"], torch.tensor(disag))
    assert torch.allclose(p2e._reward_metrics["expl_extr_normed_mean"], torch.tensor(0.0))
    # disag_log takes the log before normalising; expl_extr_scale 0 leaves the extrinsic part out.
    agent = make_agent("--expl_behavior", "plan2explore", "--disag_log", "True", "--expl_intr_scale", "3")
    p2e = agent.expl_behavior
    p2e.heads = torch.nn.ModuleList(member(float(i)) for i in (1, 3, 5))
    assert torch.allclose(p2e.reward(seq), torch.full((2,), 3 * np.log(disag)), atol=1e-6)
    assert not any(key.startswith("expl_extr") for key in p2e._reward_metrics)


def test_model_loss_reward_is_the_predicted_kl():
    agent = make_agent("--expl_behavior", "ModelLoss", "--expl_intr_scale", "2", "--expl_opt.lr", "1e-2")
    behavior = agent.expl_behavior
    feat = torch.randn(8, 6, 32)
    post = {"deter": feat[..., 16:], "stoch": feat[..., :16].reshape(8, 6, 4, 4)}
    kl = feat[..., 0].abs() + 1.0                           # a learnable function of the features
    for _ in range(300):
        behavior.opt(behavior.model_loss(post, {"kl": kl}, {}))
    seq = {"feat": agent.wm.rssm.feat(post).reshape(48, 32)}
    assert torch.allclose(behavior.reward(seq), 2 * kl.reshape(48), atol=0.3)


def test_disagreement_higher_off_the_training_data():
    agent = make_agent("--expl_behavior", "plan2explore", "--disag_models", "5", "--expl_head.layers", "2",
                       "--expl_head.units", "32", "--expl_opt.lr", "3e-3", "--disag_offset", "0")
    p2e = agent.expl_behavior
    torch.manual_seed(1)

    def posterior(low, high, n=64):
        deter = torch.empty(1, n, 16).uniform_(low, high)
        logits = deter[..., :4].repeat(1, 1, 4).reshape(1, n, 4, 4) * 3
        stoch = torch.nn.functional.one_hot(logits.argmax(-1), 4).float()
        return {"deter": deter, "stoch": stoch}

    data = {"action": torch.zeros(1, 64, 3)}
    for _ in range(300):
        post = posterior(-1.0, 1.0)
        p2e.opt(p2e.model_loss(post, {}, data))

    def disagreement(post):
        with torch.no_grad():
            return p2e.disagreement(p2e._inputs(agent.wm.rssm.feat(post), data["action"])).mean().item()

    seen, unseen = disagreement(posterior(-1.0, 1.0)), disagreement(posterior(3.0, 5.0))
    assert unseen > 3 * seen, (seen, unseen)


# ----------------------------------------------------------------------------- behaviours


@pytest.mark.parametrize("discrete", [True, False])
def test_random_actor_is_uniform(discrete):
    agent = make_agent("--expl_behavior", "random", discrete=discrete, act_dim=4)
    assert agent.expl_behavior.optimizers() == {} and list(agent.expl_behavior.parameters()) == []
    torch.manual_seed(0)
    dist = agent.expl_behavior.actor(torch.zeros(4000, 32))
    for sample in (dist.sample(), dists.mode(dist)):
        assert sample.shape == (4000, 4)
        if discrete:
            assert torch.equal(sample.sum(-1), torch.ones(4000)) and set(sample.unique().tolist()) == {0.0, 1.0}
            assert torch.allclose(sample.mean(0), torch.full((4,), 0.25), atol=0.03)
        else:
            assert sample.min() >= -1 and sample.max() <= 1
            assert torch.allclose(sample.mean(0), torch.zeros(4), atol=0.05)
            assert torch.allclose(sample.var(0), torch.full((4,), 1 / 3), atol=0.03)
    obs = {"vector": torch.rand(3, 5), "is_first": torch.ones(3)}
    action, _ = agent.policy(obs, None, "explore")
    assert action.shape == (3, 4)


@pytest.mark.parametrize("name", ["plan2explore", "model_loss", "random"])
@pytest.mark.parametrize("discrete", [True, False])
def test_train_step_metrics_and_checkpoint_state(name, discrete):
    agent = make_agent("--expl_behavior", name, discrete=discrete)
    _, metrics = agent.train_step(batch(discrete=discrete))
    keys = {k for k in metrics if k.startswith("expl_")}
    if name == "random":
        assert not keys and set(agent.optimizers()) == {"model", "actor", "critic"}
        return
    assert {"expl_intr_mean", "expl_intr_std", "expl_model_loss", "expl_actor_loss", "expl_critic_loss",
            "expl_actor_ent", "expl_reward_mean"} <= keys
    assert all(torch.isfinite(metrics[k]) for k in keys)
    assert set(agent.optimizers()) == {"model", "actor", "critic", "expl_model", "expl_actor", "expl_critic"}
    # Every exploration module, normaliser and optimiser round-trips through the agent's state.
    state = agent.state_dict()
    assert any(k.startswith("expl_behavior.ac.actor.") for k in state)
    assert "expl_behavior.intr_rewnorm.mag" in state and "expl_behavior.ac._extra_state" in state
    optimizers = agent.optimizer_state()
    fresh = make_agent("--expl_behavior", name, discrete=discrete)
    fresh.load_state_dict(state)
    fresh.load_optimizer_state(optimizers)
    assert fresh.expl_behavior.ac.updates == 1
    for key, value in fresh.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state[key]), key
    assert fresh.optimizers()["expl_model"].opt.state_dict()["state"].keys() == \
        agent.optimizers()["expl_model"].opt.state_dict()["state"].keys() != set()


def test_task_actor_keeps_training_on_extrinsic_reward():
    agent = make_agent("--expl_behavior", "plan2explore")
    task_before = [p.clone() for p in agent.task_behavior.actor.parameters()]
    expl_before = [p.clone() for p in agent.expl_behavior.actor.parameters()]
    agent.train_step(batch())
    assert any(not torch.equal(a, b) for a, b in zip(task_before, agent.task_behavior.actor.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(expl_before, agent.expl_behavior.actor.parameters()))


def test_eval_policy_picks_the_actor():
    obs = {"vector": torch.rand(2, 5), "is_first": torch.ones(2)}
    agent = make_agent("--expl_behavior", "random", "--eval_policy", "explore", "--eval_state_mean", "True",
                       discrete=False)
    torch.manual_seed(0)
    a1, _ = agent.policy(obs, None, "eval")
    a2, _ = agent.policy(obs, None, "eval")
    assert not torch.equal(a1, a2)                          # the random explorer acts in evaluation
    agent = make_agent("--expl_behavior", "random", "--eval_state_mean", "True", discrete=False)
    a1, _ = agent.policy(obs, None, "eval")
    a2, _ = agent.policy(obs, None, "eval")
    assert torch.equal(a1, a2)                              # default: the task actor's mode


def latent_grads(agent, data):
    torch.manual_seed(0)
    loss = agent.wm.loss(data)[0]
    params = list(agent.wm.encoder.parameters()) + list(agent.wm.rssm.parameters())
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, allow_unused=False)])


@pytest.mark.parametrize("full_recon", [True, False])
def test_full_or_observation_only_reconstruction(full_recon):
    """Continual-Dreamer's --rssm_full_recon: on, the reward (and discount) losses shape the latent;
    off (grad_heads [decoder], pred_discount False), only the observation and KL terms do."""
    flags = [] if full_recon else ["--grad_heads", "[decoder]", "--pred_discount", "False"]
    agent = make_agent("--expl_behavior", "plan2explore", *flags)
    assert ("discount" in agent.wm.heads) == full_recon
    data = batch()
    other = {**data, "reward": data["reward"] + 1.0}
    changed = not torch.allclose(latent_grads(agent, data), latent_grads(agent, other))
    assert changed == full_recon
    _, metrics = agent.train_step(data)
    assert ("discount_loss" in metrics) == full_recon and torch.isfinite(metrics["expl_actor_loss"])
