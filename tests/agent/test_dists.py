"""Parity tests for torch_dreamer.agent.dists against hand-computed values.

Reference: /work/shared/reference/dreamerv2-official.md §3 (straight-through one-hot samples,
soft-label Bernoulli discount, unit-variance image Normal) and §4 (TruncNormalDist clipping).
"""

import math

import pytest
import torch

from torch_dreamer.agent import dists


def _softmax(xs):
    exps = [math.exp(x) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


# ----- OneHotDist -----

def test_onehot_sample_is_onehot_with_probs_gradient():
    logits = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]], requires_grad=True)  # probs 1/8, 2/8, 5/8
    weights = torch.tensor([1.0, -2.0, 3.0])
    torch.manual_seed(0)
    sample = dists.OneHotDist(logits=logits).sample()
    # The value is exactly a one-hot vector (onehot + p - sg(p) adds zero).
    assert sample.shape == (1, 3)
    assert torch.allclose(sample.sum(-1), torch.ones(1))
    assert sorted(sample[0].tolist()) == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)
    # The gradient is d(sum w * p)/d logits: p_j * (w_j - sum_i w_i p_i), for any sampled index.
    (sample * weights).sum().backward()
    p = [1 / 8, 2 / 8, 5 / 8]
    expected_mean = 1 * p[0] - 2 * p[1] + 3 * p[2]  # 1/8 - 4/8 + 15/8 = 12/8 = 1.5
    assert expected_mean == pytest.approx(1.5)
    expected = [p[0] * (1 - 1.5), p[1] * (-2 - 1.5), p[2] * (3 - 1.5)]  # [-1/16, -7/8, 15/16]
    assert logits.grad[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_onehot_sample_frequencies_match_probs():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.1, 0.6, 0.3]))
    samples = dists.OneHotDist(logits=logits).sample((20000,))
    assert samples.shape == (20000, 3)
    freq = samples.detach().mean(0)
    assert freq.tolist() == pytest.approx([0.1, 0.6, 0.3], abs=0.015)


def test_onehot_sample_never_draws_a_zero_probability_class():
    # Leading, inner and trailing zero-probability classes, batched over a (4, 3) shape as the latents are.
    torch.manual_seed(0)
    probs = torch.tensor([0.0, 0.25, 0.0, 0.75, 0.0])
    dist = dists.OneHotDist(probs=probs.expand(4, 3, 5))
    samples = dist.sample((5000,)).detach()
    assert samples.shape == (5000, 4, 3, 5) and torch.allclose(samples.sum(-1), torch.ones(()))
    freq = samples.reshape(-1, 5).round().mean(0)  # the straight-through sum onehot + p - p is 1 within rounding
    assert freq[[0, 2, 4]].tolist() == [0.0, 0.0, 0.0]
    assert freq[[1, 3]].tolist() == pytest.approx([0.25, 0.75], abs=0.01)


def test_onehot_mode_is_argmax():
    mode = dists.mode(dists.OneHotDist(logits=torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]])))
    assert mode.tolist() == [pytest.approx([0.0, 1.0, 0.0], abs=1e-6), pytest.approx([1.0, 0.0, 0.0], abs=1e-6)]


def test_onehot_log_prob_entropy_and_kl_by_hand():
    # Two categorical variables of 2 classes each, summed over by dims=1 (Independent(., 1)).
    post = dists.OneHotDist(logits=torch.tensor([[[0.0, math.log(2.0)], [0.0, 0.0]]]), dims=1)   # [1/3,2/3],[1/2,1/2]
    prior = dists.OneHotDist(logits=torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]]), dims=1)  # [1/2,1/2],[3/4,1/4]
    value = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert post.log_prob(value).item() == pytest.approx(math.log(2 / 3) + math.log(1 / 2), abs=1e-6)
    ent = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)) + math.log(2)
    assert post.entropy().item() == pytest.approx(ent, abs=1e-6)
    kl = (1 / 3 * math.log((1 / 3) / (1 / 2)) + 2 / 3 * math.log((2 / 3) / (1 / 2))
          + 1 / 2 * math.log((1 / 2) / (3 / 4)) + 1 / 2 * math.log((1 / 2) / (1 / 4)))
    assert dists.kl_onehot(post, prior).item() == pytest.approx(kl, abs=1e-6)
    assert dists.kl_onehot(post, prior).shape == (1,)


def test_onehot_from_probs():
    dist = dists.OneHotDist(probs=torch.tensor([0.25, 0.75]))
    assert dist.probs.tolist() == pytest.approx([0.25, 0.75], abs=1e-6)
    assert dist.log_prob(torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log(0.75), abs=1e-6)


def test_onehot_log_prob_stops_the_gradient_into_the_value():
    # The official log_prob of a one-hot value treats the value as a constant: gradients reach the logits only.
    logits = torch.tensor([0.0, math.log(2.0)], requires_grad=True)  # probs 1/3, 2/3
    value = torch.tensor([0.0, 1.0], requires_grad=True)
    logp = dists.OneHotDist(logits=logits).log_prob(value)
    logp.backward()
    assert value.grad is None
    assert logits.grad.tolist() == pytest.approx([-1 / 3, 1 / 3], abs=1e-6)  # d log p_1 / d logits = e_1 - p


def test_importing_dists_leaves_torch_validation_on():
    import subprocess
    import sys

    code = ("import torch; import torch_dreamer.agent.dists, torch_dreamer.agent.agent; "
            "assert torch.distributions.Distribution._validate_args; "
            "import pytest\n"
            "try:\n    torch.distributions.Normal(0.0, -1.0)\nexcept ValueError:\n    print('validated')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "validated", out.stderr[-500:]


def test_tanh_normal_sample_dist_mode_takes_each_rows_own_best_sample():
    # The official SampleDist.mode gathers every row with row 0's argmax; ours takes each row's own.
    torch.manual_seed(0)
    dist = dists.tanh_normal(torch.tensor([[-2.0], [0.0], [2.0]]), torch.tensor([[0.05], [0.05], [0.05]]))
    mode = dists.mode(dist)
    assert mode[:, 0].tolist() == pytest.approx([math.tanh(-2.0), 0.0, math.tanh(2.0)], abs=0.05)


# ----- TruncNormalDist -----

def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _fixed_uniform(monkeypatch, value):
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(tuple(shape), value, **kw))


def test_trunc_normal_inverse_cdf_sample_and_implicit_gradient(monkeypatch):
    # actor.trunc_grad exact: the implicit gradient of the inverse-CDF sample.
    loc0, scale0, u = 0.3, 0.5, 0.5
    loc = torch.tensor([loc0], requires_grad=True)
    scale = torch.tensor([scale0], requires_grad=True)
    _fixed_uniform(monkeypatch, u)
    sample = dists.TruncNormalDist(loc, scale, -1, 1, grad="exact").sample()
    # By hand: the u-quantile of N(loc, scale) restricted to [-1, 1].
    a, b = (-1 - loc0) / scale0, (1 - loc0) / scale0          # -2.6, 1.4
    q = _cdf(a) + u * (_cdf(b) - _cdf(a))
    s = math.sqrt(2) * _inverse_erf(2 * q - 1)
    assert sample.item() == pytest.approx(loc0 + scale0 * s, abs=1e-5)
    # Reparameterised gradient dx/dloc = 1 - [(1-u) phi(a) + u phi(b)] / phi(s).
    sample.sum().backward()
    dloc = 1 - ((1 - u) * _phi(a) + u * _phi(b)) / _phi(s)
    # dx/dscale = s - [(1-u) a phi(a) + u b phi(b)] / phi(s).
    dscale = s - ((1 - u) * a * _phi(a) + u * b * _phi(b)) / _phi(s)
    assert loc.grad.item() == pytest.approx(dloc, abs=1e-4)
    assert scale.grad.item() == pytest.approx(dscale, abs=1e-4)


@pytest.mark.parametrize("loc0,scale0,u", [(0.3, 0.5, 0.5), (0.5, 1.0, 0.5), (-0.6, 0.3, 0.2), (0.9, 2.0, 0.7)])
def test_trunc_normal_default_gradient_is_the_official_location_scale_pass_through(monkeypatch, loc0, scale0, u):
    # The official samples through TFP, whose gradient treats the standardised sample as a constant:
    # ds/dloc = 1, ds/dscale = (s - loc) / scale; the truncation bounds get none.
    loc = torch.tensor([loc0], requires_grad=True)
    scale = torch.tensor([scale0], requires_grad=True)
    _fixed_uniform(monkeypatch, u)
    dist = dists.TruncNormalDist(loc, scale, -1, 1)
    assert dist.grad == "official"
    sample = dist.sample()
    a, b = (-1 - loc0) / scale0, (1 - loc0) / scale0
    s = math.sqrt(2) * _inverse_erf(2 * (_cdf(a) + u * (_cdf(b) - _cdf(a))) - 1)
    assert sample.item() == pytest.approx(loc0 + scale0 * s, abs=1e-5)  # the same sample as `exact`
    (3.0 * sample).sum().backward()
    assert loc.grad.item() == pytest.approx(3.0, abs=1e-6)
    assert scale.grad.item() == pytest.approx(3.0 * s, abs=1e-4)
    # By hand for (0.5, 1.0, 0.5): a = -1.5, b = 0.5, s = Phi^-1(0.37913) = -0.30775.
    if (loc0, scale0, u) == (0.5, 1.0, 0.5):
        assert scale.grad.item() == pytest.approx(3.0 * -0.30775, abs=1e-4)
        exact = 1 - ((1 - u) * _phi(a) + u * _phi(b)) / _phi(s)
        assert exact == pytest.approx(0.3672, abs=1e-3)  # what `exact` would give instead of 1


def test_trunc_normal_gradients_through_the_actor_head(tiny):
    from torch_dreamer.agent.behavior import ActorCritic

    feat = torch.randn(64, 8)
    for grad in ("official", "exact"):
        ac = ActorCritic(tiny("--actor.trunc_grad", grad), 8, 2, discrete=False)
        dist = ac.actor(feat)
        assert dist.base_dist.grad == grad
        torch.manual_seed(0)
        sample = dist.rsample()
        loc = dist.base_dist.loc
        (dloc,) = torch.autograd.grad(sample.sum(), loc)
        if grad == "official":
            assert torch.equal(dloc, torch.ones_like(dloc))
        else:
            assert (dloc < 1).all() and (dloc > 0).all()
    with pytest.raises(Exception, match="trunc_grad must be official or exact"):
        ActorCritic(tiny("--actor.trunc_grad", "tfp"), 8, 2, discrete=False)


def _inverse_erf(y):
    # Newton on erf(x) = y; enough for the moderate quantiles used here.
    x = 0.0
    for _ in range(50):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


def test_trunc_normal_clip_is_straight_through(monkeypatch):
    # A sample beyond the clip bound takes the bound's value but keeps the unclipped gradient.
    loc0, scale0, u = 0.8, 0.5, 0.9
    _fixed_uniform(monkeypatch, u)
    a, b = (-1 - loc0) / scale0, (1 - loc0) / scale0          # -3.6, 0.4
    q = _cdf(a) + u * (_cdf(b) - _cdf(a))
    s = math.sqrt(2) * _inverse_erf(2 * q - 1)
    raw = loc0 + scale0 * s
    assert 0.9 < raw < 1.0  # beyond the 0.9 bound of clip=0.1
    loc = torch.tensor([loc0], requires_grad=True)
    sample = dists.TruncNormalDist(loc, torch.tensor([scale0]), -1, 1, clip=0.1, grad="exact").sample()
    assert sample.item() == pytest.approx(0.9, abs=1e-6)
    sample.sum().backward()
    assert loc.grad.item() == pytest.approx(1 - ((1 - u) * _phi(a) + u * _phi(b)) / _phi(s), abs=1e-4)
    assert loc.grad.item() != 0.0
    # The official gradient passes through the clip too.
    loc = torch.tensor([loc0], requires_grad=True)
    sample = dists.TruncNormalDist(loc, torch.tensor([scale0]), -1, 1, clip=0.1).sample()
    assert sample.item() == pytest.approx(0.9, abs=1e-6)
    sample.sum().backward()
    assert loc.grad.item() == pytest.approx(1.0, abs=1e-6)


def test_trunc_normal_samples_stay_inside_default_clip():
    torch.manual_seed(0)
    loc = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0])
    scale = torch.tensor([1e-5, 0.001, 1.0, 0.001, 1e-5])
    samples = dists.TruncNormalDist(loc, scale, -1, 1).sample((4000,))
    bound = torch.tensor(1 - 1e-6)
    assert samples.shape == (4000, 5)
    assert samples.min() >= -bound and samples.max() <= bound
    # Near the edges the clip is actually hit.
    assert (samples[:, -1] == bound).any() and (samples[:, 0] == -bound).any()


@pytest.mark.parametrize("loc,scale", [(0.3, 0.5), (-0.9, 0.2), (0.0, 2.1), (0.95, 0.1)])
def test_trunc_normal_density_mean_entropy_by_quadrature(loc, scale):
    dist = dists.TruncNormalDist(torch.tensor(loc), torch.tensor(scale), -1, 1)
    n = 200000
    x = torch.linspace(-1, 1, n + 1, dtype=torch.float64)
    logp = dist.log_prob(x.float()).double()
    p = logp.exp()
    dx = 2.0 / n
    trapz = lambda f: float(((f[1:] + f[:-1]) / 2).sum() * dx)
    assert trapz(p) == pytest.approx(1.0, abs=1e-4)
    assert dists.mean(dist).item() == pytest.approx(trapz(p * x), abs=1e-4)
    assert dist.entropy().item() == pytest.approx(trapz(-p * logp), abs=1e-3)
    # Density by hand at the centre: phi((0 - loc)/scale) / (scale * Z).
    z = _cdf((1 - loc) / scale) - _cdf((-1 - loc) / scale)
    assert dist.log_prob(torch.tensor(0.0)).exp().item() == pytest.approx(_phi(-loc / scale) / (scale * z), rel=1e-5)


def test_trunc_normal_mode_is_clipped_loc():
    dist = dists.TruncNormalDist(torch.tensor([-1.5, 0.3, 2.0]), torch.ones(3), -1, 1)
    assert dists.mode(dist).tolist() == pytest.approx([-1.0, 0.3, 1.0])


def test_trunc_normal_action_head_parameters():
    # DistHead trunc_normal: TruncatedNormal(tanh(mu), 2 sigmoid(s / 2) + min_std, -1, 1).
    from torch_dreamer.agent.nets import DistHead
    head = DistHead(2, (2,), "trunc_normal", min_std=0.1)
    with torch.no_grad():
        head.out.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.out.bias.zero_()
        head.std.weight.zero_()
        head.std.bias.copy_(torch.tensor([0.0, 2.0]))
    dist = head(torch.tensor([[0.5, -2.0]]))
    base = dist.base_dist
    assert base.loc[0].tolist() == pytest.approx([math.tanh(0.5), math.tanh(-2.0)], abs=1e-6)
    sig = lambda v: 1 / (1 + math.exp(-v))
    assert base.scale[0].tolist() == pytest.approx([2 * sig(0.0) + 0.1, 2 * sig(1.0) + 0.1], abs=1e-6)
    assert dist.log_prob(torch.tensor([[0.0, 0.0]])).shape == (1,)  # Independent over the action dim


# ----- MSEDist and BinaryDist -----

def test_mse_log_prob_and_image_loss_floor():
    dist = dists.MSEDist(torch.tensor([[0.5, -1.0]]), 1)
    value = torch.tensor([[1.5, 1.0]])
    expected = (-0.5 * 1.0 ** 2 - 0.5 * math.log(2 * math.pi)) + (-0.5 * 2.0 ** 2 - 0.5 * math.log(2 * math.pi))
    assert dist.log_prob(value).item() == pytest.approx(expected, abs=1e-5)
    # A perfect 64x64x1 reconstruction still costs 4096 * 0.919 = 3764 nats (§3 Decoder).
    image = dists.MSEDist(torch.zeros(2, 64, 64, 1), 3)
    nll = -image.log_prob(torch.zeros(2, 64, 64, 1))
    assert nll.shape == (2,)
    assert nll[0].item() == pytest.approx(4096 * 0.5 * math.log(2 * math.pi), rel=1e-5)
    assert nll[0].item() == pytest.approx(3764, abs=1)


def test_binary_log_prob_on_soft_labels():
    logits = [0.5, -1.2, 2.0, 0.0]
    labels = [0.99, 0.0, 0.5, 0.999 * (1 - 1)]
    sig = lambda v: 1 / (1 + math.exp(-v))
    expected = [y * math.log(sig(l)) + (1 - y) * math.log(1 - sig(l)) for l, y in zip(logits, labels)]
    per_elem = dists.BinaryDist(torch.tensor(logits), 0).log_prob(torch.tensor(labels))
    assert per_elem.tolist() == pytest.approx(expected, abs=1e-6)
    summed = dists.BinaryDist(torch.tensor([logits]), 1).log_prob(torch.tensor([labels]))
    assert summed.item() == pytest.approx(sum(expected), abs=1e-5)
    # The soft label's optimum is the label itself: d/dl log p = y - sigmoid(l) vanishes at sigmoid(l) = y.
    l = torch.tensor(math.log(0.99 / 0.01), requires_grad=True)
    dists.BinaryDist(l, 0).log_prob(torch.tensor(0.99)).backward()
    assert l.grad.item() == pytest.approx(0.0, abs=1e-6)
    assert dists.mean(dists.BinaryDist(torch.tensor([0.0, math.log(3.0)]), 0)).tolist() == pytest.approx([0.5, 0.75])
