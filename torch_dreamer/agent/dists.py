"""Distributions with the semantics the official DreamerV2 relies on.

All of them compute in float32 regardless of autocast, as the official code does
for distributions, KL terms and LayerNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import distributions as td


# Argument validation costs more than the math on small networks; the agent checks its own shapes. It is
# switched off per distribution (validate_args=False), never globally, so user code keeps torch's default.
_NO_CHECKS = {"validate_args": False}


class OneHotDist:
    """One-hot categorical whose samples pass straight-through gradients: onehot + p - sg(p).

    `dims` trailing batch dims are summed in log_prob and entropy (DreamerV2's Independent(., 1)
    over the 32 latent variables).
    """

    def __init__(self, logits=None, probs=None, dims: int = 0):
        if logits is None:
            logits = torch.log(probs.float().clamp_min(1e-20))
        self.logits = torch.log_softmax(logits.float(), -1)
        self.probs = self.logits.exp()
        self._dims = dims

    def _sum(self, value):
        return value.sum(tuple(range(-self._dims, 0))) if self._dims else value

    def detach(self) -> "OneHotDist":
        """The same distribution cut from the graph, without normalising the logits again."""
        out = OneHotDist.__new__(OneHotDist)
        out.logits, out.probs, out._dims = self.logits.detach(), self.probs.detach(), self._dims
        return out

    def sample(self, sample_shape=torch.Size()):
        # Inverse-CDF sampling: one uniform number per categorical, where Gumbel-max needs one per class and
        # two logs (4x faster at the imagination's 320 x 16 x 16). It stays on the device without a host sync
        # (unlike torch.multinomial) and vectorises over any leading shape. Category k is drawn when
        # cdf[k-1] <= u < cdf[k], so a zero-probability class is never drawn; u is scaled by the total so
        # rounding in the sum cannot leave mass unassigned.
        probs = self.probs.detach().expand(tuple(sample_shape) + self.probs.shape)
        cdf = probs.cumsum(-1)
        u = torch.rand_like(cdf[..., :1]) * cdf[..., -1:]
        index = (cdf <= u).sum(-1).clamp_max(probs.shape[-1] - 1)
        onehot = onehot_like(index, probs)
        probs = self.probs.expand_as(onehot)
        return onehot + probs - probs.detach()

    rsample = sample

    @property
    def mode(self):
        onehot = onehot_like(self.logits.argmax(-1), self.logits)
        return onehot + self.probs - self.probs.detach()

    @property
    def mean(self):
        return self.probs

    def log_prob(self, value):
        # The value is a constant, as in the official (TFP's one-hot log_prob): with `actor_grad both` the
        # straight-through action must not get a gradient from log pi(a) * advantage.
        return self._sum((value.detach().float() * self.logits).sum(-1))

    def entropy(self):
        return self._sum(-(self.probs * self.logits).sum(-1))


def onehot_like(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot rows of `index` in the shape and dtype of `like`, written directly (F.one_hot makes int64 to cast)."""
    return torch.zeros_like(like, memory_format=torch.contiguous_format).scatter_(-1, index.unsqueeze(-1), 1.0)


def kl_onehot(lhs: OneHotDist, rhs: OneHotDist) -> torch.Tensor:
    """KL(lhs || rhs) summed over the categorical and lhs's `dims` trailing dims."""
    return lhs._sum((lhs.probs * (lhs.logits - rhs.logits)).sum(-1))


class TruncNormalDist(td.Distribution):
    """Normal truncated to [low, high]; reparameterised samples clipped by `clip` straight-through.

    `grad` picks the gradient of a sample s with respect to loc and scale:
    - "official" (default): TensorFlow Probability's, which the official DreamerV2 trains with: the
      location-scale pass-through s = loc + scale * sg((s - loc) / scale), so ds/dloc = 1,
      ds/dscale = (s - loc) / scale, and the truncation bounds get no gradient;
    - "exact": the implicit gradient of the inverse-CDF sample, which also moves the sample through the
      truncation bounds' dependence on loc and scale (`actor.trunc_grad exact`).
    Both draw the same samples; only the backward pass differs.
    """

    arg_constraints = {}
    has_rsample = True
    GRADS = ("official", "exact")

    def __init__(self, loc, scale, low=-1.0, high=1.0, clip=1e-6, mult=1.0, grad="official"):
        if grad not in self.GRADS:
            raise ValueError(f"trunc_grad must be official or exact, not '{grad}'")
        self.loc, self.scale = loc.float(), scale.float()
        self.low, self.high, self._clip, self._mult = low, high, clip, mult
        self.grad = grad
        self._normal = td.Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc), **_NO_CHECKS)
        self._alpha = (low - self.loc) / self.scale
        self._beta = (high - self.loc) / self.scale
        self._cdf_alpha = self._normal.cdf(self._alpha)
        self._z = (self._normal.cdf(self._beta) - self._cdf_alpha).clamp_min(1e-8)
        super().__init__(batch_shape=self.loc.shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.loc.shape
        uniform = torch.rand(shape, device=self.loc.device)
        exact = self.grad == "exact"
        # Inverse-CDF sampling; with `exact` the sample stays differentiable through it in loc and scale.
        with torch.set_grad_enabled(exact and torch.is_grad_enabled()):
            p = (self._cdf_alpha + uniform * self._z).clamp(1e-7, 1 - 1e-7)
            event = (self.loc + self.scale * math.sqrt(2) * torch.erfinv(2 * p - 1)).clamp(self.low, self.high)
            standard = None if exact else (event - self.loc) / self.scale
        if not exact:  # TFP's gradient: the standardised sample is a constant
            event = self.loc + self.scale * standard
        if self._clip:
            clipped = event.clamp(self.low + self._clip, self.high - self._clip)
            event = event - event.detach() + clipped.detach()
        return event * self._mult

    def sample(self, sample_shape=torch.Size()):
        return self.rsample(sample_shape)

    @property
    def mode(self):
        return self.loc.clamp(self.low, self.high) * self._mult

    @property
    def mean(self):
        phi_a, phi_b = self._normal.log_prob(self._alpha).exp(), self._normal.log_prob(self._beta).exp()
        return self.loc + self.scale * (phi_a - phi_b) / self._z

    def log_prob(self, value):
        standard = (value.float() - self.loc) / self.scale
        return self._normal.log_prob(standard) - torch.log(self.scale) - torch.log(self._z)

    def entropy(self):
        phi_a, phi_b = self._normal.log_prob(self._alpha).exp(), self._normal.log_prob(self._beta).exp()
        return (0.5 * math.log(2 * math.pi * math.e) + torch.log(self.scale) + torch.log(self._z)
                + (self._alpha * phi_a - self._beta * phi_b) / (2 * self._z))


class SampleDist:
    """Estimates mean, mode and entropy of a distribution without closed forms from samples."""

    def __init__(self, dist, samples=100):
        self._dist, self._samples = dist, samples

    def __getattr__(self, name):
        return getattr(self._dist, name)

    @property
    def mean(self):
        return self._dist.rsample((self._samples,)).mean(0)

    @property
    def mode(self):
        # The most likely of the samples, for each batch row. The official gathers with row 0's index for
        # every row (tf.gather(sample, argmax(logprob))[0]); we take each row's own (a deliberate fix).
        sample = self._dist.rsample((self._samples,))
        logprob = self._dist.log_prob(sample)
        index = logprob.argmax(0)
        return torch.gather(sample, 0, index[None, ..., None].expand(1, *sample.shape[1:]))[0]

    def entropy(self):
        sample = self._dist.rsample((self._samples,))
        return -self._dist.log_prob(sample).mean(0)

    def sample(self, sample_shape=torch.Size()):
        return self._dist.rsample(sample_shape)

    def log_prob(self, value):
        return self._dist.log_prob(value)


def tanh_normal(mean, std):
    base = td.Normal(mean.float(), std.float(), **_NO_CHECKS)
    # cache_size=1 lets log_prob of our own samples skip atanh, which is unstable at +-1.
    dist = td.TransformedDistribution(base, [td.TanhTransform(cache_size=1)], **_NO_CHECKS)
    return SampleDist(td.Independent(dist, 1, **_NO_CHECKS))


class MSEDist:
    """Unit-variance Normal summed over `dims` event dims: log p = -0.5 err^2 - 0.5 log 2pi."""

    def __init__(self, mean, dims):
        self._mean, self._dims = mean.float(), dims

    @property
    def mean(self):
        return self._mean

    @property
    def mode(self):
        return self._mean

    def log_prob(self, value):
        logp = -0.5 * (value.float() - self._mean) ** 2 - 0.5 * math.log(2 * math.pi)
        return logp.sum(tuple(range(-self._dims, 0))) if self._dims else logp

    def sample(self, sample_shape=torch.Size()):
        return self._mean + torch.randn(torch.Size(sample_shape) + self._mean.shape, device=self._mean.device)


class BinaryDist:
    """Bernoulli on logits whose log_prob accepts soft labels (the discount head's gamma*(1-terminal))."""

    def __init__(self, logits, dims):
        self.logits, self._dims = logits.float(), dims

    @property
    def mean(self):
        return torch.sigmoid(self.logits)

    @property
    def mode(self):
        return (self.logits > 0).float()

    def log_prob(self, value):
        logp = -F.binary_cross_entropy_with_logits(self.logits, value.float().expand_as(self.logits), reduction="none")
        return logp.sum(tuple(range(-self._dims, 0))) if self._dims else logp

    def sample(self, sample_shape=torch.Size()):
        return torch.bernoulli(self.mean.expand(torch.Size(sample_shape) + self.logits.shape))


def detach(dist):
    """A stop-gradient copy of a latent distribution: a OneHotDist, or an Independent Normal (the RSSM's)."""
    if isinstance(dist, OneHotDist):
        return dist.detach()
    base = dist.base_dist
    normal = td.Normal(base.loc.detach(), base.scale.detach(), **_NO_CHECKS)
    return td.Independent(normal, dist.reinterpreted_batch_ndims, **_NO_CHECKS)


def mode(dist):
    value = dist.mode
    return value() if callable(value) else value


def mean(dist):
    value = dist.mean
    return value() if callable(value) else value
