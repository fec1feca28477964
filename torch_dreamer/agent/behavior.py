"""Actor-critic learning in imagination (the official ActorCritic), with its helpers."""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from torch_dreamer.agent import dists
from torch_dreamer.agent.grad_sync import mean_over_ranks
from torch_dreamer.agent.nets import MLP
from torch_dreamer.agent.optim import Optimizer
from torch_dreamer.errors import UserError


def schedule(value, step: int) -> float:
    """A float, or linear(a,b,n) | warmup(n,v) | exp(a,b,halflife) | horizon(a,b,n) evaluated at `step`."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    text = str(value).replace(" ", "")
    step = float(step)
    if match := re.fullmatch(r"linear\((.+),(.+),(.+)\)", text):
        initial, final, duration = map(float, match.groups())
        mix = min(max(step / duration, 0.0), 1.0)
        return (1 - mix) * initial + mix * final
    if match := re.fullmatch(r"warmup\((.+),(.+)\)", text):
        warmup, value = map(float, match.groups())
        return min(max(step / warmup, 0.0), 1.0) * value
    if match := re.fullmatch(r"exp\((.+),(.+),(.+)\)", text):
        initial, final, halflife = map(float, match.groups())
        return (initial - final) * 0.5 ** (step / halflife) + final
    if match := re.fullmatch(r"horizon\((.+),(.+),(.+)\)", text):
        initial, final, duration = map(float, match.groups())
        mix = min(max(step / duration, 0.0), 1.0)
        return 1 - 1 / ((1 - mix) * initial + mix * final)
    raise ValueError(f"cannot read schedule '{value}'; use a number, linear(a,b,n), warmup(n,v), exp(a,b,h) or horizon(a,b,n)")


def lambda_return(reward, value, discount, bootstrap, lambda_: float):
    """TD(lambda) targets along the time axis 0, as the official lambda_return.

    R_t = r_t + d_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}), with R_T = bootstrap.
    reward, value, discount: (T, N); bootstrap: (N,). Returns (T, N).
    """
    next_values = torch.cat([value[1:], bootstrap[None]], 0)
    inputs = reward + discount * next_values * (1 - lambda_)
    returns, last = [], bootstrap
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + discount[t] * lambda_ * last
        returns.append(last)
    return torch.stack(returns[::-1])


class StreamNorm(nn.Module):
    """Divides by a running mean of magnitudes; momentum 1 (the official default) leaves inputs unchanged."""

    def __init__(self, shape=(), momentum=1.0, scale=1.0, eps=1e-8):
        super().__init__()
        self.momentum, self.scale, self.eps = momentum, scale, eps
        self.register_buffer("mag", torch.ones(shape))

    def forward(self, inputs: torch.Tensor):
        metrics = {"mean": inputs.mean(), "std": inputs.std()}
        batch = inputs.detach().reshape((-1,) + self.mag.shape)
        # Data-parallel learners average the batch magnitude over ranks: every rank keeps the same `mag`,
        # the one the global batch gives in one process (equal shares, so the mean of means).
        self.mag.copy_(self.momentum * self.mag + (1 - self.momentum) * mean_over_ranks(batch.abs().mean(0)))
        outputs = inputs / (self.mag + self.eps) * self.scale
        metrics["normed_mean"], metrics["normed_std"] = outputs.mean(), outputs.std()
        return outputs, {k: v.detach() for k, v in metrics.items()}


TRUNC_GRADS = dists.TruncNormalDist.GRADS


class Actor(MLP):
    """The actor MLP; for `trunc_normal` actions its samples take the `trunc_grad` gradient.

    `official` (default): TFP's location-scale pass-through, as the official DreamerV2; `exact`: the
    implicit gradient of the inverse-CDF sample (see `dists.TruncNormalDist`).
    """

    def __init__(self, inp: int, shape, trunc_grad: str = "official", **kwargs):
        if trunc_grad not in TRUNC_GRADS:
            raise UserError(f"actor.trunc_grad must be official or exact, not '{trunc_grad}'")
        super().__init__(inp, shape, **kwargs)
        self.trunc_grad = trunc_grad

    def forward(self, x):
        return self.dist(self.trunk(x))

    def dist(self, hidden):
        """The action distribution from the last hidden layer, `trunk(feat)` (which imagination keeps)."""
        dist = self.head(hidden)
        base = getattr(dist, "base_dist", dist)
        if isinstance(base, dists.TruncNormalDist):
            base.grad = self.trunc_grad
        return dist


class ActorCritic(nn.Module):
    def __init__(self, config, feat_size: int, act_dim: int, discrete: bool, prefix: str = ""):
        super().__init__()
        self.config = config
        actor_config = config.actor.to_dict()
        if actor_config["dist"] == "auto":
            actor_config["dist"] = "onehot" if discrete else "trunc_normal"
        self.actor_grad = config.actor_grad if config.actor_grad != "auto" else ("reinforce" if discrete else "dynamics")
        self.actor = Actor(feat_size, act_dim, **actor_config)
        self.critic = MLP(feat_size, (), **config.critic)
        if config.slow_target:
            self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.rewnorm = StreamNorm(**config.reward_norm)
        self.actor_opt = Optimizer(prefix + "actor", self.actor.parameters(), **config.actor_opt, precision=config.precision)
        self.critic_opt = Optimizer(prefix + "critic", self.critic.parameters(), **config.critic_opt, precision=config.precision)
        # Counted on the device, so the slow critic's copy schedule needs neither a host sync nor a Python branch
        # (a captured update replays it, `--compile graph`); saved as extra state.
        self.register_buffer("update_count", torch.zeros((), dtype=torch.int64), persistent=False)
        self.step = 0  # environment step for schedules, set by the agent

    @property
    def updates(self) -> int:
        """Updates so far; reading it waits for the device."""
        return int(self.update_count)

    def get_extra_state(self):
        return {"updates": self.updates}

    def set_extra_state(self, state):
        self.update_count.fill_(int(state["updates"]))

    @property
    def slow_critic(self):
        return self.target_critic if self.config.slow_target else self.critic

    def train_step(self, world_model, start: dict, is_terminal, reward_fn, autocast) -> dict:
        """One actor and one critic update on trajectories imagined from every start state."""
        # Reinforce gradients never flow through the imagined rollout, so it needs no autograd graph.
        through_model = self.actor_grad in ("dynamics", "both")
        with autocast():
            with torch.set_grad_enabled(through_model):
                seq = world_model.imagine(self.actor, start, is_terminal, self.config.imag_horizon)
                reward, metrics = self.rewnorm(reward_fn(seq))
                metrics = {f"reward_{k}": v for k, v in metrics.items()}
                seq["reward"] = reward
                value = self.slow_value(seq)
                target, target_metrics = self.target(seq, value)
            actor_loss, actor_metrics = self.actor_loss(seq, target, value)
            critic_loss, critic_metrics = self.critic_loss(seq, target)
        metrics.update(target_metrics, **actor_metrics, **critic_metrics)
        metrics.update(self.actor_opt(actor_loss))
        metrics.update(self.critic_opt(critic_loss))
        self.update_slow_target()
        return metrics

    def slow_value(self, seq: dict) -> torch.Tensor:
        """The slow critic's values (H + 1, N) of the imagined features."""
        return dists.mode(self.slow_critic(seq["feat"])).float()

    def target(self, seq: dict, value: torch.Tensor | None = None):
        """lambda-returns over the imagined sequence: (H, N) from (H + 1, N) rewards/values/discounts.

        value: `slow_value(seq)` when the caller has it already."""
        reward, disc = seq["reward"].float(), seq["discount"].float()
        value = self.slow_value(seq) if value is None else value
        target = lambda_return(reward[:-1], value[:-1], disc[:-1], value[-1], self.config.discount_lambda)
        return target, {"critic_slow": value.mean().detach(), "critic_target": target.mean().detach()}

    def actor_loss(self, seq: dict, target: torch.Tensor, slow_value: torch.Tensor | None = None):
        """The policy acts on feat[:-2]; its actions are action[1:-1]; its returns target[1:].

        slow_value: `slow_value(seq)`, reused as the reinforce baseline when that is the slow critic (one
        forward of the same network on the same features instead of two)."""
        metrics = {}
        # Imagination ran the actor on feat[:-1] already and kept its last hidden layer with autograd: the same
        # network on the same features, so the loss reuses it instead of a second trunk forward.
        hidden = seq.get("actor_hidden")
        policy = self.actor(seq["feat"][:-2].detach()) if hidden is None else self.actor.dist(hidden[:-1])
        if self.actor_grad == "dynamics":
            objective = target[1:]
        elif self.actor_grad in ("reinforce", "both"):
            # slow_baseline (unused by the official, which always takes the slow critic): False uses the online critic.
            critic = self.slow_critic if self.config.slow_baseline else self.critic
            if critic is self.slow_critic and slow_value is not None:
                baseline = slow_value[:-2]
            else:
                baseline = dists.mode(critic(seq["feat"][:-2])).float()
            advantage = (target[1:] - baseline).detach()
            action = seq["action"][1:-1]
            action = action.detach() if self.actor_grad == "reinforce" else action
            objective = policy.log_prob(action) * advantage
            if self.actor_grad == "both":
                mix = schedule(self.config.actor_grad_mix, self.step)
                objective = mix * target[1:] + (1 - mix) * objective
                metrics["actor_grad_mix"] = torch.tensor(mix)
        else:
            raise ValueError(f"actor_grad must be auto, reinforce, dynamics or both, not '{self.actor_grad}'")
        ent = policy.entropy()
        ent_scale = schedule(self.config.actor_ent, self.step)
        objective = objective + ent_scale * ent
        weight = seq["weight"].detach()
        actor_loss = -(weight[:-2] * objective).mean()
        metrics["actor_ent"] = ent.mean().detach()
        metrics["actor_ent_scale"] = torch.tensor(ent_scale)
        return actor_loss, metrics

    def critic_loss(self, seq: dict, target: torch.Tensor):
        dist = self.critic(seq["feat"][:-1].detach())
        weight = seq["weight"].detach()
        critic_loss = -(dist.log_prob(target.detach()) * weight[:-1]).mean()
        return critic_loss, {"critic": dists.mode(dist).mean().detach()}

    @torch.no_grad()
    def update_slow_target(self):
        """Hard copy at update 0, then every `slow_target_update` updates mix by `slow_target_fraction`.

        The mix is computed on the device, 0 between copies: lerp by 0 keeps the target and by 1 copies the
        critic exactly (torch's lerp computes end - (end - start) * (1 - w) for w >= 0.5)."""
        if self.config.slow_target:
            count = self.update_count
            mix = torch.where(count == 0, 1.0, float(self.config.slow_target_fraction))
            mix = mix * (count % int(self.config.slow_target_update) == 0)
            targets = list(self.target_critic.parameters())
            # The weight as a list of tensors: a lone 0-dim tensor would bind to the number overload via .item().
            torch._foreach_lerp_(targets, list(self.critic.parameters()), [mix] * len(targets))
        self.update_count.add_(1)
