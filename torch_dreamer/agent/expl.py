"""Exploration behaviours of the official `expl.py`: Plan2Explore, ModelLoss and Random.

Each behaviour is an nn.Module registered on the agent (`agent.expl_behavior`), so checkpoints
hold its networks, normalisers and counters; its optimisers are listed by `optimizers()` and
saved with the agent's. The interface the agent relies on:

- `actor(feat) -> distribution`: the exploration policy (`Agent.policy(mode='explore')`);
- `train_step(post, outputs, data) -> metrics`: one update after the world model's, with
  `outputs = {'post': (T, B, ...), 'kl': (T, B)}`; metric names start with `expl_`;
- `optimizers() -> {name: Optimizer}`.

Differences from the official code, all deliberate:
- `disag_target: feat` is sized stoch*discrete + deter (the official uses stoch + deter, wrong for
  discrete latents) and `embed` is the encoder's real output size (the official assumes a CNN).
- Random works for Discrete and Box actions (the official one fails on construction, #61).
- ModelLoss passes its intrinsic reward through `expl_reward_norm` like Plan2Explore (the official
  does not normalise it; the default momentum 1 makes both the same).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torch_dreamer.agent import dists
from torch_dreamer.agent.behavior import ActorCritic, StreamNorm, schedule
from torch_dreamer.agent.nets import MLP
from torch_dreamer.agent.optim import Optimizer
from torch_dreamer.errors import UserError

# Accepted spellings (compared lower-cased) -> canonical name.
NAMES = {"greedy": "greedy", "plan2explore": "plan2explore", "model_loss": "model_loss",
         "modelloss": "model_loss", "random": "random"}
CHOICES = "greedy, plan2explore, model_loss, random (or the official Plan2Explore, ModelLoss, Random)"
DISAG_TARGETS = ("stoch", "deter", "embed", "feat")


def canonical_name(name) -> str:
    """greedy | plan2explore | model_loss | random from any accepted spelling; UserError otherwise."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in NAMES:
        raise UserError(f"expl_behavior must be one of {CHOICES}, not '{name}'")
    return NAMES[key]


def make(name, agent) -> nn.Module:
    """The exploration behaviour `name` for `agent` (its world model must exist already)."""
    name = canonical_name(name)
    if name == "greedy":
        raise ValueError("greedy exploration uses the task actor; the agent builds no behaviour for it")
    return {"plan2explore": Plan2Explore, "model_loss": ModelLoss, "random": Random}[name](agent)


# ----------------------------------------------------------------------------- Random


class UniformActions:
    """Uniform one-hot actions (discrete) or uniform actions in [-1, 1]^A (continuous).

    `mode` is a fresh sample too: a uniform distribution has no preferred action, and evaluating
    a random explorer greedily should still act randomly.
    """

    def __init__(self, shape: tuple, discrete: bool, device=None):
        self.shape, self.discrete, self.device = tuple(shape), discrete, device

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = tuple(sample_shape) + self.shape
        if self.discrete:
            index = torch.randint(self.shape[-1], shape[:-1], device=self.device)
            return nn.functional.one_hot(index, self.shape[-1]).float()
        return torch.rand(shape, device=self.device) * 2 - 1

    rsample = sample

    @property
    def mode(self) -> torch.Tensor:
        return self.sample()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        per_action = math.log(self.shape[-1]) if self.discrete else self.shape[-1] * math.log(2.0)
        return torch.full(value.shape[:-1], -per_action, device=value.device)

    def entropy(self) -> torch.Tensor:
        per_action = math.log(self.shape[-1]) if self.discrete else self.shape[-1] * math.log(2.0)
        return torch.full(self.shape[:-1], per_action, device=self.device)


class Random(nn.Module):
    """Acts uniformly at random; learns nothing (the task actor-critic still trains)."""

    def __init__(self, agent):
        super().__init__()
        self.act_dim, self.discrete = agent.act_dim, agent.discrete

    def actor(self, feat: torch.Tensor) -> UniformActions:
        return UniformActions(feat.shape[:-1] + (self.act_dim,), self.discrete, feat.device)

    def train_step(self, post: dict, outputs: dict, data: dict) -> dict:
        return {}

    def optimizers(self) -> dict:
        return {}


# ----------------------------------------------------------------------------- curiosity


class _Curiosity(nn.Module):
    """An exploration actor-critic trained in imagination on
    `expl_intr_scale * norm(intrinsic) + expl_extr_scale * norm(predicted extrinsic reward)`,
    with both norms `expl_reward_norm` StreamNorms, as the official Plan2Explore.

    Its actor and critic use the `actor_opt` / `critic_opt` settings in their own optimiser
    instances (`expl_actor`, `expl_critic`), as the official; the model that produces the
    intrinsic reward trains with `expl_opt` (`expl_model`).
    """

    def __init__(self, agent):
        super().__init__()
        config = agent.config
        self.config = config
        self.__dict__["_agent"] = agent  # a back-reference, not a submodule (no duplicate weights)
        self.ac = ActorCritic(config, agent.wm.rssm.feat_size, agent.act_dim, agent.discrete, prefix="expl_")
        self.intr_rewnorm = StreamNorm(**config.expl_reward_norm)
        self.extr_rewnorm = StreamNorm(**config.expl_reward_norm)
        self._reward_metrics: dict = {}

    @property
    def actor(self):
        return self.ac.actor

    def optimizers(self) -> dict:
        return {"expl_model": self.opt, "expl_actor": self.ac.actor_opt, "expl_critic": self.ac.critic_opt}

    def intrinsic(self, seq: dict) -> torch.Tensor:
        """The unscaled intrinsic reward (H + 1, N) of an imagined sequence."""
        raise NotImplementedError

    def model_loss(self, post: dict, outputs: dict, data: dict) -> torch.Tensor:
        """The loss of the model that makes the intrinsic reward."""
        raise NotImplementedError

    def reward(self, seq: dict) -> torch.Tensor:
        """The exploration reward of an imagined sequence: intrinsic plus (optionally) extrinsic."""
        config, step = self.config, self._agent.step
        intr, metrics = self.intr_rewnorm(self.intrinsic(seq))
        reward = schedule(config.expl_intr_scale, step) * intr
        out = {f"expl_intr_{k}": v for k, v in metrics.items()}
        extr_scale = schedule(config.expl_extr_scale, step)
        if extr_scale:
            extr = dists.mode(self._agent.wm.heads["reward"](seq["feat"]))
            extr, metrics = self.extr_rewnorm(extr)
            reward = reward + extr_scale * extr
            out.update({f"expl_extr_{k}": v for k, v in metrics.items()})
        self._reward_metrics = out
        return reward

    def train_step(self, post: dict, outputs: dict, data: dict) -> dict:
        agent = self._agent
        self.ac.step = agent.step
        with agent.autocast():
            loss = self.model_loss(post, outputs, data)
        metrics = dict(self.opt(loss))
        ac_metrics = self.ac.train_step(agent.wm, post, data["is_terminal"], self.reward, agent.autocast)
        metrics.update({k if k.startswith("expl_") else f"expl_{k}": v for k, v in ac_metrics.items()})
        metrics.update(self._reward_metrics)
        return metrics


class Plan2Explore(_Curiosity):
    """Disagreement of an ensemble of one-step predictors as the intrinsic reward (Sekar et al. 2020).

    `disag_models` `expl_head` MLPs map the posterior feat (plus the action that led to it when
    `disag_action_cond`) at step t to the `disag_target` at step t + `disag_offset`. In imagination
    the reward is the ensemble's standard deviation averaged over target dimensions (its log when
    `disag_log`).
    """

    def __init__(self, agent):
        super().__init__(agent)
        config, rssm = self.config, agent.wm.rssm
        sizes = {"stoch": rssm.stoch_size, "deter": rssm.deter, "embed": agent.wm.encoder.embed_size,
                 "feat": rssm.feat_size}
        if config.disag_target not in sizes:
            raise UserError(f"disag_target must be one of {', '.join(DISAG_TARGETS)}, not '{config.disag_target}'")
        if int(config.disag_models) < 2:
            raise UserError(f"disag_models must be at least 2 for a disagreement, not {config.disag_models}")
        if int(config.disag_offset) < 0:
            raise UserError(f"disag_offset must be 0 or more, not {config.disag_offset}")
        self.target_size = sizes[config.disag_target]
        inp = rssm.feat_size + (agent.act_dim if config.disag_action_cond else 0)
        self.heads = nn.ModuleList(
            MLP(inp, self.target_size, **config.expl_head) for _ in range(int(config.disag_models)))
        self.opt = Optimizer("expl_model", self.heads.parameters(), **config.expl_opt, precision=config.precision)

    def _inputs(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.config.disag_action_cond:
            return torch.cat([feat, action.to(feat.dtype)], -1)
        return feat

    def targets(self, post: dict, outputs: dict) -> torch.Tensor:
        """(T, B, target_size) targets of the ensemble from the posterior (or the world model's embedding)."""
        wm, target = self._agent.wm, self.config.disag_target
        if target == "stoch":
            return post["stoch"].flatten(-2) if wm.rssm.discrete else post["stoch"]
        if target == "deter":
            return post["deter"]
        if target == "feat":
            return wm.rssm.feat(post)
        return outputs["embed"]  # the world model's own embedding of this batch, not a second encoder pass

    def model_loss(self, post: dict, outputs: dict, data: dict) -> torch.Tensor:
        inputs = self._inputs(self._agent.wm.rssm.feat(post), data["action"]).detach()
        targets = self.targets(post, outputs).detach()
        offset = int(self.config.disag_offset)
        if offset:
            inputs, targets = inputs[:-offset], targets[offset:]
        return -sum(head(inputs).log_prob(targets).mean() for head in self.heads)

    def disagreement(self, inputs: torch.Tensor) -> torch.Tensor:
        """Standard deviation over the ensemble's predictions, averaged over target dimensions."""
        preds = torch.stack([dists.mode(head(inputs)) for head in self.heads])
        disag = preds.std(0, correction=0).mean(-1)
        return torch.log(disag) if self.config.disag_log else disag

    def intrinsic(self, seq: dict) -> torch.Tensor:
        return self.disagreement(self._inputs(seq["feat"], seq["action"]))


class ModelLoss(_Curiosity):
    """An `expl_head` MLP regresses the world model's per-step loss `expl_model_loss` (the KL)
    from the posterior feat; its prediction in imagination is the intrinsic reward."""

    def __init__(self, agent):
        super().__init__(agent)
        config = self.config
        if config.expl_model_loss != "kl":
            raise UserError(f"expl_model_loss must be kl (the per-step KL), not '{config.expl_model_loss}'")
        self.head = MLP(agent.wm.rssm.feat_size, (), **config.expl_head)
        self.opt = Optimizer("expl_model", self.head.parameters(), **config.expl_opt, precision=config.precision)

    def model_loss(self, post: dict, outputs: dict, data: dict) -> torch.Tensor:
        feat = self._agent.wm.rssm.feat(post).detach()
        target = outputs[self.config.expl_model_loss].detach().float()
        return -self.head(feat).log_prob(target).mean()

    def intrinsic(self, seq: dict) -> torch.Tensor:
        return dists.mode(self.head(seq["feat"]))
