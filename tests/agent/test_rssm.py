"""Parity tests for torch_dreamer.agent.rssm: KL balancing with free nats and its gradient split,
is_first resets and the observe/img_step semantics (reference §3 RSSM and KL balancing)."""

import math

import pytest
import torch

from torch_dreamer.agent.rssm import RSSM


def _rssm(**kw):
    args = dict(embed_size=5, act_dim=3, hidden=8, deter=6, stoch=2, discrete=2)
    args.update(kw)
    return RSSM(**args)


def _probs(logits):
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# Two steps (T=2, B=1), each with two 2-class variables: post and prior logits.
POST = [[[0.0, math.log(2.0)], [0.0, 0.0]], [[math.log(4.0), 0.0], [0.0, math.log(9.0)]]]
PRIOR = [[[0.0, 0.0], [math.log(3.0), 0.0]], [[0.0, math.log(2.0)], [0.0, math.log(3.0)]]]


def _states():
    post = {"logit": torch.tensor(POST)[:, None].requires_grad_(True)}
    prior = {"logit": torch.tensor(PRIOR)[:, None].requires_grad_(True)}
    return post, prior


def _by_hand():
    """Per-step KL(post || prior) and the closed-form gradients of KL(p || q) for softmax logits a, b:
    dKL/db_j = q_j - p_j and dKL/da_j = p_j (log p_j / q_j - KL_var)."""
    kls, grad_post, grad_prior = [], [], []
    for post_t, prior_t in zip(POST, PRIOR):
        total, gp_t, gq_t = 0.0, [], []
        for a, b in zip(post_t, prior_t):
            p, q = _probs(a), _probs(b)
            kl = _kl(p, q)
            total += kl
            gp_t.append([pj * (math.log(pj / qj) - kl) for pj, qj in zip(p, q)])
            gq_t.append([qj - pj for pj, qj in zip(p, q)])
        kls.append(total)
        grad_post.append(gp_t)
        grad_prior.append(gq_t)
    return kls, torch.tensor(grad_post)[:, None], torch.tensor(grad_prior)[:, None]


def test_kl_balance_value_and_gradient_split():
    rssm = _rssm()
    post, prior = _states()
    kls, grad_kl_post, grad_kl_prior = _by_hand()
    loss, value = rssm.kl_loss(post, prior, forward=False, balance=0.8, free=0.0, free_avg=True)
    assert value.shape == (2, 1)
    assert value[:, 0].tolist() == pytest.approx(kls, abs=1e-6)
    # 0.2 KL(post || sg prior) + 0.8 KL(sg post || prior) has the value of the plain mean KL.
    assert loss.item() == pytest.approx(sum(kls) / 2, abs=1e-6)
    loss.backward()
    # The posterior only feels the 0.2 term, the prior only the 0.8 term (mean over T*B = 2).
    assert torch.allclose(post["logit"].grad, 0.2 * grad_kl_post / 2, atol=1e-6)
    assert torch.allclose(prior["logit"].grad, 0.8 * grad_kl_prior / 2, atol=1e-6)


def test_kl_balance_terms_by_autograd_on_each_side():
    # Same split seen from the other side: the gradient reaching each side is exactly its share
    # of the unbalanced KL's gradient; the ratio prior/posterior share is 0.8/0.2 = 4.
    rssm = _rssm()
    post, prior = _states()
    plain, _ = rssm.kl_loss(post, prior, balance=0.5)
    g_post, g_prior = torch.autograd.grad(plain, [post["logit"], prior["logit"]])
    post2, prior2 = _states()
    balanced, _ = rssm.kl_loss(post2, prior2, balance=0.8)
    b_post, b_prior = torch.autograd.grad(balanced, [post2["logit"], prior2["logit"]])
    assert torch.allclose(b_post, 0.2 * g_post, atol=1e-7)
    assert torch.allclose(b_prior, 0.8 * g_prior, atol=1e-7)


def test_kl_balance_half_is_plain_kl():
    rssm = _rssm()
    post, prior = _states()
    kls, grad_kl_post, grad_kl_prior = _by_hand()
    loss, value = rssm.kl_loss(post, prior, balance=0.5, free=0.0)
    assert loss.item() == pytest.approx(sum(kls) / 2, abs=1e-6)
    loss.backward()
    assert torch.allclose(post["logit"].grad, grad_kl_post / 2, atol=1e-6)
    assert torch.allclose(prior["logit"].grad, grad_kl_prior / 2, atol=1e-6)


def test_kl_balance_half_clips_per_element_even_with_free_avg():
    # The official plain-KL branch takes mean(max(KL, free)) regardless of free_avg.
    rssm = _rssm()
    post, prior = _states()
    kls, _, _ = _by_hand()
    assert min(kls) < max(kls)
    free = (min(kls) + max(kls)) / 2  # between the per-step KL values
    loss, _ = rssm.kl_loss(post, prior, balance=0.5, free=free, free_avg=True)
    assert loss.item() == pytest.approx(sum(max(k, free) for k in kls) / len(kls), abs=1e-6)


def test_kl_forward_swaps_sides():
    # forward=True: 0.8 KL(prior || sg post) + 0.2 KL(sg prior || post); the value is KL(prior || post).
    rssm = _rssm()
    post, prior = _states()
    loss, value = rssm.kl_loss(post, prior, forward=True, balance=0.8)
    kls, grad_a, grad_b = [], [], []
    for post_t, prior_t in zip(POST, PRIOR):
        total, ga, gb = 0.0, [], []
        for a, b in zip(post_t, prior_t):
            p, q = _probs(a), _probs(b)
            kl = _kl(q, p)                                            # KL(prior || post)
            total += kl
            ga.append([pj - qj for pj, qj in zip(p, q)])              # d/d post logits
            gb.append([qj * (math.log(qj / pj) - kl) for pj, qj in zip(p, q)])  # d/d prior logits
        kls.append(total)
        grad_a.append(ga)
        grad_b.append(gb)
    assert value[:, 0].tolist() == pytest.approx(kls, abs=1e-6)
    assert loss.item() == pytest.approx(sum(kls) / 2, abs=1e-6)
    loss.backward()
    assert torch.allclose(prior["logit"].grad, 0.8 * torch.tensor(grad_b)[:, None] / 2, atol=1e-6)
    assert torch.allclose(post["logit"].grad, 0.2 * torch.tensor(grad_a)[:, None] / 2, atol=1e-6)


def test_free_nats_average_vs_per_element():
    rssm = _rssm()
    kls, _, _ = _by_hand()
    low, high = sorted(kls)
    free = (low + high) / 2 + 0.01 * (high - low)   # between the two, just above their mean
    mean = (low + high) / 2
    assert low < free < high and mean < free
    # free_avg: max(mean KL, free) = free for both terms: a constant with no gradient.
    post, prior = _states()
    loss, _ = rssm.kl_loss(post, prior, balance=0.8, free=free, free_avg=True)
    assert loss.item() == pytest.approx(free, abs=1e-6)
    loss.backward()
    assert post["logit"].grad is None or post["logit"].grad.abs().max() == 0
    assert prior["logit"].grad is None or prior["logit"].grad.abs().max() == 0
    # Per element: mean(max(KL, free)) = (free + high) / 2; only the high step gets gradient.
    post, prior = _states()
    loss, _ = rssm.kl_loss(post, prior, balance=0.8, free=free, free_avg=False)
    assert loss.item() == pytest.approx((free + high) / 2, abs=1e-6)
    loss.backward()
    low_step = kls.index(low)
    assert post["logit"].grad[low_step].abs().max() == 0
    assert post["logit"].grad[1 - low_step].abs().max() > 0
    # Below the floor nothing changes: free=0 equals the plain mean.
    post, prior = _states()
    loss, _ = rssm.kl_loss(post, prior, balance=0.8, free=0.0, free_avg=False)
    assert loss.item() == pytest.approx(mean, abs=1e-6)


def test_kl_gaussian_latents_by_hand():
    rssm = _rssm(stoch=2, discrete=0)
    post = {"mean": torch.tensor([[0.5, -1.0]]), "std": torch.tensor([[1.0, 0.5]])}
    prior = {"mean": torch.tensor([[0.0, 0.0]]), "std": torch.tensor([[2.0, 1.0]])}
    gauss = lambda m1, s1, m2, s2: math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    kl = gauss(0.5, 1.0, 0.0, 2.0) + gauss(-1.0, 0.5, 0.0, 1.0)
    loss, value = rssm.kl_loss(post, prior, balance=0.8)
    assert value.item() == pytest.approx(kl, abs=1e-6)
    assert loss.item() == pytest.approx(kl, abs=1e-6)


def test_gaussian_std_activation_sigmoid2():
    rssm = _rssm(stoch=2, discrete=0, std_act="sigmoid2", min_std=0.1)
    stats = rssm._stats(torch.tensor([[0.3, -0.4, 0.0, 2.0]]))
    assert stats["mean"][0].tolist() == pytest.approx([0.3, -0.4])
    sig = lambda v: 1 / (1 + math.exp(-v))
    assert stats["std"][0].tolist() == pytest.approx([2 * sig(0.0) + 0.1, 2 * sig(1.0) + 0.1], abs=1e-6)


# ----- steps and sequences -----

def _random_state(rssm, batch):
    torch.manual_seed(3)
    state = rssm.initial(batch)
    return {k: torch.randn_like(v) for k, v in state.items()}


def test_feature_size_and_state_shapes():
    rssm = _rssm(stoch=3, discrete=4, deter=6)
    assert rssm.feat_size == 3 * 4 + 6
    state = rssm.img_step(rssm.initial(2), torch.zeros(2, 3))
    assert state["stoch"].shape == (2, 3, 4) and state["logit"].shape == (2, 3, 4) and state["deter"].shape == (2, 6)
    assert rssm.feat(state).shape == (2, 18)
    # The prior sample is one-hot per variable.
    assert torch.allclose(state["stoch"].sum(-1), torch.ones(2, 3))


def test_is_first_zeroes_state_and_action():
    rssm = _rssm()
    embed = torch.randn(2, 5)
    state = _random_state(rssm, 2)
    action = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    is_first = torch.tensor([True, False])
    post, prior = rssm.obs_step(state, action, embed, is_first, sample=False)
    fresh_post, _ = rssm.obs_step(rssm.initial(2), torch.zeros(2, 3), embed, torch.zeros(2), sample=False)
    kept_post, _ = rssm.obs_step(state, action, embed, torch.zeros(2), sample=False)
    # Row 0 starts an episode: same as from the zero state and zero action; row 1 keeps its past.
    for key in ("deter", "logit", "stoch"):
        assert torch.allclose(post[key][0], fresh_post[key][0], atol=1e-6)
        assert torch.allclose(post[key][1], kept_post[key][1], atol=1e-6)
    assert not torch.allclose(post["deter"][0], kept_post["deter"][0])


def test_observe_matches_obs_step_loop():
    rssm = _rssm()
    torch.manual_seed(0)
    T, B = 4, 3
    embed, action = torch.randn(T, B, 5), torch.randn(T, B, 3)
    is_first = torch.zeros(T, B)
    is_first[0] = 1
    is_first[2, 1] = 1
    post, prior = rssm.observe(embed, action, is_first, sample=False)
    state = rssm.initial(B)
    for t in range(T):
        step_post, step_prior = rssm.obs_step(state, action[t], embed[t], is_first[t], sample=False)
        for key in ("deter", "logit"):
            assert torch.allclose(post[key][t], step_post[key], atol=1e-5)
            assert torch.allclose(prior[key][t], step_prior[key], atol=1e-5)
        state = step_post
    assert post["stoch"].shape == (T, B, 2, 2)


def test_ensemble_prior_uses_one_member_for_the_batch():
    rssm = _rssm(ensemble=3)
    deter = torch.randn(4, 6)
    members = [rssm._stats(member(deter))["logit"] for member in rssm.img_out]
    assert not torch.allclose(members[0], members[1])
    picked = set()
    for seed in range(12):
        torch.manual_seed(seed)
        logit = rssm._prior_stats(deter)["logit"]
        matches = [k for k, m in enumerate(members) if torch.allclose(logit, m)]
        assert len(matches) == 1
        picked.add(matches[0])
    assert picked == {0, 1, 2}


def test_ensemble_prior_over_a_sequence_picks_a_member_per_step():
    rssm = _rssm(ensemble=3)
    T = 16
    deter = torch.randn(T, 4, 6)
    members = [rssm._stats(member(deter))["logit"] for member in rssm.img_out]
    torch.manual_seed(0)
    logit = rssm._prior_stats(deter, steps=T)["logit"]
    picked = []
    for t in range(T):
        matches = [k for k, m in enumerate(members) if torch.allclose(logit[t], m[t])]
        assert len(matches) == 1  # the whole batch shares the step's member
        picked.append(matches[0])
    assert len(set(picked)) > 1  # but the member changes from step to step, as in the official scan


def test_imagine_rolls_the_prior():
    rssm = _rssm()
    torch.manual_seed(0)
    start = _random_state(rssm, 2)
    actions = torch.randn(3, 2, 3)
    torch.manual_seed(1)
    seq = rssm.imagine(actions, start)
    torch.manual_seed(1)
    state = start
    for t in range(3):
        state = rssm.img_step(state, actions[t])
        assert torch.allclose(seq["deter"][t], state["deter"]) and torch.allclose(seq["stoch"][t], state["stoch"])
