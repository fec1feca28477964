"""Work the update and the policy step no longer do, pinned to the result of doing it (issue 12): one
log-softmax per latent distribution, no masking of statistics in the scan, no prior sample in observe or
in the policy, no actor forward for the start action, one slow-critic forward, one encoder pass, one actor
trunk forward per imagined step (the loss reuses imagination's)."""

import torch

from torch_dreamer.agent import dists
from torch_dreamer.agent.agent import Agent
from torch_dreamer.agent.rssm import RSSM
from tests.agent.conftest import make_batch, tiny_config

VECTOR = ("--encoder.cnn_keys", "$^", "--decoder.cnn_keys", "$^")


def _reference_kl(rssm, post, prior, balance=0.8, free=0.0):
    """The KL balance with four separately normalised distributions (what kl_loss computed before)."""
    sg = lambda state: {k: v.detach() for k, v in state.items()}
    lhs = dists.kl_onehot(rssm.dist(post), rssm.dist(sg(prior)))
    rhs = dists.kl_onehot(rssm.dist(sg(post)), rssm.dist(prior))
    mix = 1 - balance
    return mix * lhs.mean().clamp(min=free) + (1 - mix) * rhs.mean().clamp(min=free), lhs


def test_kl_balance_on_shared_distributions_equals_four_normalisations():
    torch.manual_seed(0)
    rssm = RSSM(embed_size=5, act_dim=3, hidden=8, deter=6, stoch=3, discrete=4)
    logits = [torch.randn(5, 2, 3, 4, requires_grad=True) for _ in range(2)]
    post, prior = {"logit": logits[0]}, {"logit": logits[1]}
    loss, value = rssm.kl_loss(post, prior)
    ref_loss, ref_value = _reference_kl(rssm, post, prior)
    assert torch.equal(loss, ref_loss) and torch.equal(value, ref_value)
    grads = torch.autograd.grad(loss, logits)
    ref_grads = torch.autograd.grad(ref_loss, logits)
    for grad, ref in zip(grads, ref_grads):  # one backward of log-softmax where there were two: sums round alike
        torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-9)


def test_world_model_loss_normalises_each_latent_distribution_once(monkeypatch):
    torch.manual_seed(0)
    agent = Agent(tiny_config(*VECTOR), {"vector": ((5,), "float32")}, 3, True)
    calls = []
    original = torch.log_softmax
    monkeypatch.setattr(torch, "log_softmax", lambda x, dim: calls.append(x.shape) or original(x, dim))
    agent.wm.loss(make_batch(image=None, vector=5))
    sequences = [shape for shape in calls if shape == (4, 2, 4, 4)]  # (T, B, stoch, classes); the scan samples per step
    assert len(sequences) == 2  # posterior and prior: KL balance, its stop-gradient halves and both entropies


def test_observe_cell_equals_masking_the_whole_state():
    """The scan masks only stoch and deter; masking the statistics too (as before) gives the same posteriors."""
    torch.manual_seed(0)
    rssm = RSSM(embed_size=5, act_dim=3, hidden=8, deter=6, stoch=2, discrete=3)
    T, B = 6, 3
    embed, action = torch.randn(T, B, 5), torch.randn(T, B, 3)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0], is_first[3, 1] = True, True
    _, prior = rssm.observe(embed, action, is_first)
    assert set(prior) == {"deter", "logit"}  # statistics only, no sample
    with torch.no_grad():  # obs_step masks every key (and computes a prior): no sampling, so no RNG to align
        ref, _ = rssm.observe(embed, action, is_first, sample=False)
        state, steps = rssm.initial(B), []
        for t in range(T):
            state, _ = rssm.obs_step(state, action[t], embed[t], is_first[t], sample=False)
            steps.append(state)
    for key in ref:
        assert torch.equal(ref[key], torch.stack([s[key] for s in steps])), key


def test_imagine_calls_the_actor_once_per_step():
    torch.manual_seed(0)
    agent = Agent(tiny_config(*VECTOR), {"vector": ((5,), "float32")}, 3, True)
    _, post, _, _ = agent.wm.loss(make_batch(image=None, vector=5))
    calls = []
    policy = lambda feat: calls.append(feat.shape) or agent.task_behavior.actor(feat)
    seq = agent.wm.imagine(policy, post, None, horizon=3)
    assert len(calls) == 3
    assert torch.equal(seq["action"][0], torch.zeros(8, 3))


def _actor_grads(ac, seq, target):
    ac.actor.zero_grad()
    loss, metrics = ac.actor_loss(seq, target)
    loss.backward(retain_graph=True)  # dynamics: both losses reach the same imagined rollout
    return loss.detach(), metrics["actor_ent"], [p.grad.clone() for p in ac.actor.parameters()]


def test_actor_loss_reuses_imagination_trunk_and_equals_a_second_forward():
    for actor_grad, discrete in (("reinforce", True), ("dynamics", False), ("both", True)):
        torch.manual_seed(0)
        agent = Agent(tiny_config(*VECTOR, "--actor_grad", actor_grad), {"vector": ((5,), "float32")}, 3, discrete)
        ac = agent.task_behavior
        trunk_calls = []
        ac.actor.trunk.register_forward_hook(lambda module, args, out: trunk_calls.append(args[0].shape))
        agent.train_step(make_batch(image=None, vector=5))
        assert len(trunk_calls) == agent.config.imag_horizon  # one per imagined step, none in the loss
        _, post, _, _ = agent.wm.loss(make_batch(image=None, vector=5, seed=1))
        with torch.set_grad_enabled(actor_grad != "reinforce"):  # as ActorCritic.train_step
            seq = agent.wm.imagine(ac.actor, post, None, 4)
        assert seq["actor_hidden"].shape[:2] == (4, seq["feat"].shape[1]) and seq["actor_hidden"].requires_grad
        seq["reward"] = torch.randn(seq["feat"].shape[:-1])
        target, _ = ac.target(seq)
        fresh = _actor_grads(ac, {k: v for k, v in seq.items() if k != "actor_hidden"}, target)
        reused = _actor_grads(ac, seq, target)
        for a, b in zip(reused[:2], fresh[:2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(reused[2], fresh[2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        assert any(g.abs().sum() > 0 for g in reused[2])


def test_one_slow_critic_forward_per_update_and_the_same_baseline():
    torch.manual_seed(0)
    agent = Agent(tiny_config(*VECTOR), {"vector": ((5,), "float32")}, 3, True)
    ac = agent.task_behavior
    calls = []
    ac.target_critic.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    agent.train_step(make_batch(image=None, vector=5))
    assert len(calls) == 1
    # The reinforce baseline read from the shared forward equals its own forward on feat[:-2].
    _, post, _, _ = agent.wm.loss(make_batch(image=None, vector=5, seed=1))
    with torch.no_grad():
        seq = agent.wm.imagine(ac.actor, post, None, 3)
        seq["reward"] = torch.zeros(seq["feat"].shape[:-1])
        value = ac.slow_value(seq)
        target, _ = ac.target(seq, value)
    shared, _ = ac.actor_loss(seq, target, value)
    separate, _ = ac.actor_loss(seq, target)
    torch.testing.assert_close(shared, separate, rtol=1e-6, atol=1e-7)


def test_policy_copies_only_what_the_encoder_reads():
    torch.manual_seed(0)
    agent = Agent(tiny_config(*VECTOR), {"vector": ((5,), "float32")}, 3, True)
    obs = {"vector": torch.randn(2, 5), "is_first": torch.ones(2, dtype=torch.bool),
           "log_text": ["not", "a tensor"]}  # would fail torch.as_tensor: it must never be converted
    action, (latent, _) = agent.policy(obs)
    assert action.shape == (2, 3) and set(latent) == {"deter", "stoch", "logit"}


def test_policy_posterior_equals_obs_step():
    """The policy's latent is obs_step's posterior (without the prior obs_step also computes)."""
    torch.manual_seed(0)
    agent = Agent(tiny_config(*VECTOR, "--eval_state_mean", "True"), {"vector": ((5,), "float32")}, 3, True)
    obs = {"vector": torch.randn(2, 5), "is_first": torch.tensor([True, False])}
    state = (agent.wm.rssm.initial(2), torch.ones(2, 3))
    _, (latent, _) = agent.policy(obs, state, "eval")
    with torch.no_grad():
        embed = agent.wm.encoder(agent.wm.preprocess(obs))
        expected, _ = agent.wm.rssm.obs_step(*state, embed, obs["is_first"], sample=False)
    for key in expected:
        assert torch.equal(latent[key], expected[key]), key


def test_plan2explore_runs_the_encoder_once_per_update():
    torch.manual_seed(0)
    agent = Agent(tiny_config(*VECTOR, "--expl_behavior", "plan2explore", "--disag_target", "embed"),
                  {"vector": ((5,), "float32")}, 3, True)
    calls = []
    agent.wm.encoder.register_forward_hook(lambda module, args, out: calls.append(1))
    agent.train_step(make_batch(image=None, vector=5))
    assert len(calls) == 1
