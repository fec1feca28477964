"""End-to-end tests of torch_dreamer.agent.agent.Agent on tiny configurations: the official metric
names, policy modes, is_first resets, Gaussian latents, ensembles and bf16 (reference §4 Acting, §7)."""

import math

import pytest
import torch

from torch_dreamer.agent.agent import Agent

OFFICIAL_METRICS = [
    "kl_loss", "image_loss", "reward_loss", "discount_loss", "model_kl", "prior_ent", "post_ent",
    "model_loss", "model_grad_norm", "actor_loss", "actor_grad_norm", "critic_loss", "critic_grad_norm",
    "reward_mean", "reward_std", "critic_slow", "critic_target", "critic", "actor_ent", "actor_ent_scale",
]
IMAGE_ONLY = ("--encoder.mlp_keys", "$^", "--decoder.mlp_keys", "$^")


def _obs(B=2, is_first=True, seed=0, vector=None):
    g = torch.Generator().manual_seed(seed)
    obs = {"image": torch.randint(0, 256, (B, 64, 64, 3), dtype=torch.uint8, generator=g),
           "is_first": torch.full((B,), bool(is_first)) if isinstance(is_first, bool) else torch.tensor(is_first),
           "reward": torch.zeros(B)}
    if vector:
        obs["vector"] = torch.randn((B, vector), generator=g)
    return obs


def _agent(tiny, space, *flags, act_dim=3, discrete=True, vector=None, image=(64, 64, 3)):
    torch.manual_seed(0)
    return Agent(tiny(*flags), space(image, vector), act_dim, discrete)


def _finite(metrics):
    bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
    assert not bad, bad


def test_train_step_reports_official_metrics(tiny, space, batch):
    agent = _agent(tiny, space, *IMAGE_ONLY)
    torch.manual_seed(0)
    _, metrics = agent.train_step(batch(T=4, B=2))
    missing = [k for k in OFFICIAL_METRICS if k not in metrics]
    assert not missing
    _finite(metrics)
    assert all(torch.as_tensor(v).dim() == 0 for v in metrics.values())
    assert metrics["actor_ent_scale"].item() == pytest.approx(2e-3)
    # The model loss has the default scales (all 1): kl + image + reward + discount.
    parts = metrics["kl_loss"] + metrics["image_loss"] + metrics["reward_loss"] + metrics["discount_loss"]
    assert metrics["model_loss"].item() == pytest.approx(parts.item(), rel=1e-5)
    assert agent.task_behavior.updates == 1
    assert agent.task_behavior.actor_grad == "reinforce"


def test_train_step_changes_every_trained_module(tiny, space, batch):
    agent = _agent(tiny, space, *IMAGE_ONLY)
    before = {name: p.detach().clone() for name, p in agent.named_parameters()}
    agent.train_step(batch())
    changed = {name for name, p in agent.named_parameters() if not torch.equal(before[name], p)}
    for prefix in ("wm.encoder.", "wm.rssm.", "wm.heads.decoder.", "wm.heads.reward.", "wm.heads.discount.",
                   "task_behavior.actor.", "task_behavior.critic."):
        assert any(name.startswith(prefix) for name in changed), prefix
    # The slow critic is hard-copied at update 0, after the critic's own step.
    slow = dict(agent.task_behavior.target_critic.named_parameters())
    for name, p in agent.task_behavior.critic.named_parameters():
        assert torch.equal(slow[name], p)
        assert not torch.equal(slow[name], before["task_behavior.critic." + name])


def test_policy_modes_and_shapes(tiny, space):
    agent = _agent(tiny, space, *IMAGE_ONLY, "--eval_state_mean", "True")
    obs = _obs()
    for mode in ("train", "eval", "explore"):
        action, (latent, prev) = agent.policy(obs, None, mode)
        assert action.shape == (2, 3)
        assert torch.equal(action.sum(-1), torch.ones(2)) and set(action.flatten().tolist()) <= {0.0, 1.0}
        assert torch.equal(prev, action)
        assert latent["deter"].shape == (2, 16)
    # eval with eval_state_mean: posterior mode and actor mode, independent of the RNG.
    torch.manual_seed(1)
    a1, s1 = agent.policy(obs, None, "eval")
    torch.manual_seed(2)
    a2, s2 = agent.policy(obs, None, "eval")
    assert torch.equal(a1, a2) and torch.equal(s1[0]["stoch"], s2[0]["stoch"])
    # Without an exploration behaviour, explore samples from the task actor like train (with
    # eval_state_mean off: with it on, explore takes the posterior mean and train samples it).
    agent = _agent(tiny, space, *IMAGE_ONLY)
    torch.manual_seed(3)
    a_train, _ = agent.policy(obs, None, "train")
    torch.manual_seed(3)
    a_explore, _ = agent.policy(obs, None, "explore")
    assert torch.equal(a_train, a_explore)
    with pytest.raises(ValueError):
        agent.policy(obs, None, "greedy")


def test_is_first_resets_the_latent(tiny, space):
    agent = _agent(tiny, space, *IMAGE_ONLY)
    _, state = agent.policy(_obs(seed=1), None, "train")
    for seed in (2, 3):
        _, state = agent.policy(_obs(is_first=False, seed=seed), state, "train")
    assert state[0]["deter"].abs().sum() > 0 and state[1].abs().sum() > 0
    obs = _obs(is_first=True, seed=4)
    torch.manual_seed(7)
    a_reset, (l_reset, _) = agent.policy(obs, state, "train")
    torch.manual_seed(7)
    a_fresh, (l_fresh, _) = agent.policy(obs, None, "train")
    assert torch.equal(a_reset, a_fresh)
    for key in l_fresh:
        assert torch.allclose(l_reset[key], l_fresh[key], atol=1e-6), key
    # A reset in one environment leaves the other's memory intact.
    obs = _obs(is_first=[True, False], seed=4)
    torch.manual_seed(7)
    _, (l_mixed, _) = agent.policy(obs, state, "train")
    torch.manual_seed(7)
    _, (l_kept, _) = agent.policy(_obs(is_first=False, seed=4), state, "train")
    assert torch.allclose(l_mixed["deter"][0], l_fresh["deter"][0], atol=1e-6)
    assert torch.allclose(l_mixed["deter"][1], l_kept["deter"][1], atol=1e-6)
    assert not torch.allclose(l_mixed["deter"][1], l_fresh["deter"][1])


def test_action_noise(tiny, space):
    agent = _agent(tiny, space, *IMAGE_ONLY, "--expl_noise", "0.9")
    torch.manual_seed(0)
    actions = torch.stack([agent.policy(_obs(), None, "train")[0] for _ in range(20)])
    assert torch.equal(actions.sum(-1), torch.ones(20, 2))   # still one-hot after epsilon mixing
    cont = _agent(tiny, space, *IMAGE_ONLY, "--expl_noise", "5.0", act_dim=2, discrete=False)
    action, _ = cont.policy(_obs(), None, "train")
    assert action.shape == (2, 2) and action.abs().max() <= 1.0


def test_continuous_latents_and_actions(tiny, space, batch):
    agent = _agent(tiny, space, *IMAGE_ONLY, "--rssm.discrete", "0", act_dim=2, discrete=False)
    assert agent.task_behavior.actor_grad == "dynamics"
    assert agent.wm.rssm.feat_size == 4 + 16
    _, metrics = agent.train_step(batch(act_dim=2, discrete=False))
    assert not [k for k in OFFICIAL_METRICS if k not in metrics]
    _finite(metrics)
    action, (latent, _) = agent.policy(_obs(), None, "train")
    assert set(latent) == {"deter", "stoch", "mean", "std"}
    assert action.shape == (2, 2) and action.abs().max() < 1.0
    action, _ = agent.policy(_obs(), None, "eval")
    assert action.abs().max() <= 1.0


def test_ensemble_prior(tiny, space, batch):
    agent = _agent(tiny, space, *IMAGE_ONLY, "--rssm.ensemble", "3")
    assert len(agent.wm.rssm.img_out) == 3
    _finite(agent.train_step(batch())[1])


def test_vector_observations(tiny, space, batch):
    agent = _agent(tiny, space, "--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^", image=None, vector=5)
    _, metrics = agent.train_step(batch(image=None, vector=5))
    assert "vector_loss" in metrics and "image_loss" not in metrics
    _finite(metrics)
    action, _ = agent.policy({"vector": torch.randn(2, 5), "is_first": torch.ones(2, dtype=torch.bool)})
    assert action.shape == (2, 3)


def test_bf16_precision_on_cpu(tiny, space, batch):
    agent = _agent(tiny, space, *IMAGE_ONLY, "--precision", "bf16")
    _, metrics = agent.train_step(batch())
    _finite(metrics)
    assert all(p.dtype == torch.float32 for p in agent.parameters())   # autocast keeps fp32 weights
    action, _ = agent.policy(_obs(), None, "train")
    assert action.dtype == torch.float32 and torch.equal(action.sum(-1), torch.ones(2))


def test_unknown_precision_is_rejected(tiny, space):
    with pytest.raises(ValueError, match="precision"):
        _agent(tiny, space, *IMAGE_ONLY, "--precision", "8")


def test_policy_without_is_first_points_to_env_policy(tiny, space):
    from torch_dreamer.errors import UserError

    agent = Agent(tiny(), space(image=None, vector=4), 2, True)
    with pytest.raises(UserError, match="EnvPolicy"):
        agent.policy({"vector": torch.zeros(1, 4)}, None, "eval")
    with pytest.raises(UserError, match="EnvPolicy"):
        agent.policy(torch.zeros(4), None, "eval")
