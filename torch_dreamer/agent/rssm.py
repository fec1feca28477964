"""The recurrent state-space model of DreamerV2 (the official EnsembleRSSM).

A state is a dict {deter (B, D), stoch (B, S, K) or (B, S), logit (B, S, K) | mean/std (B, S)}.
Sequences are time-major: (T, B, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_dreamer.agent import dists
from torch_dreamer.agent.nets import GRUCell, activation, glorot_, norm_layer


class RSSM(nn.Module):
    def __init__(self, embed_size: int, act_dim: int, ensemble=1, hidden=1024, deter=1024, stoch=32,
                 discrete=32, act="elu", norm="none", std_act="sigmoid2", min_std=0.1):
        super().__init__()
        self.ensemble, self.hidden, self.deter, self.stoch, self.discrete = ensemble, hidden, deter, stoch, discrete
        self.std_act, self.min_std = std_act, min_std
        stoch_size = stoch * discrete if discrete else stoch
        stats_size = stoch * discrete if discrete else 2 * stoch
        self.stoch_size = stoch_size
        self.feat_size = stoch_size + deter
        self.img_in = nn.Sequential(nn.Linear(stoch_size + act_dim, hidden), norm_layer(norm, hidden), activation(act))
        self.gru = GRUCell(hidden, deter, norm=True)
        self.img_out = nn.ModuleList(
            nn.Sequential(nn.Linear(deter, hidden), norm_layer(norm, hidden), activation(act), nn.Linear(hidden, stats_size))
            for _ in range(ensemble))
        # Dense over concat([deter, embed]) split in two so the embed half runs once for all T.
        self.obs_deter = nn.Linear(deter, hidden)
        self.obs_embed = nn.Linear(embed_size, hidden, bias=False)
        self.obs_post = nn.Sequential(norm_layer(norm, hidden), activation(act), nn.Linear(hidden, stats_size))
        glorot_(self)
        bound = (6 / (deter + embed_size + hidden)) ** 0.5  # Glorot limit of the fused Dense
        nn.init.uniform_(self.obs_deter.weight, -bound, bound)
        nn.init.uniform_(self.obs_embed.weight, -bound, bound)

    # ----- states and distributions -----

    def initial(self, batch: int, device=None) -> dict:
        device = device or self.obs_deter.weight.device
        deter = torch.zeros(batch, self.deter, device=device)
        if self.discrete:
            zeros = torch.zeros(batch, self.stoch, self.discrete, device=device)
            return {"deter": deter, "stoch": zeros, "logit": zeros.clone()}
        zeros = torch.zeros(batch, self.stoch, device=device)
        return {"deter": deter, "stoch": zeros, "mean": zeros.clone(), "std": zeros.clone()}

    def feat(self, state: dict) -> torch.Tensor:
        stoch = state["stoch"].flatten(-2) if self.discrete else state["stoch"]
        return torch.cat([stoch.to(state["deter"].dtype), state["deter"]], -1)

    def dist(self, state: dict):
        if self.discrete:
            return dists.OneHotDist(logits=state["logit"], dims=1)
        # validate_args=False: checks cost a device sync each call, and a NaN must reach the non-finite skip.
        normal = torch.distributions.Normal(state["mean"].float(), state["std"].float(), validate_args=False)
        return torch.distributions.Independent(normal, 1, validate_args=False)

    def _stats(self, x: torch.Tensor) -> dict:
        if self.discrete:
            return {"logit": x.float().reshape(x.shape[:-1] + (self.stoch, self.discrete))}
        mean, std = x.float().chunk(2, -1)
        std = {"softplus": F.softplus(std), "sigmoid": torch.sigmoid(std),
               "sigmoid2": 2 * torch.sigmoid(std / 2)}[self.std_act] + self.min_std
        return {"mean": mean, "std": std}

    def _sample(self, stats: dict, sample: bool) -> torch.Tensor:
        dist = self.dist(stats)
        return dist.rsample() if sample else dists.mode(dist)

    def _prior_stats(self, deter: torch.Tensor, steps: int = 0) -> dict:
        """Prior statistics from one random ensemble member per step, shared by the batch.

        deter is (B, D) for one step, or (T, B, D) with steps=T for a whole sequence at once.
        """
        if self.ensemble == 1:
            return self._stats(self.img_out[0](deter))
        stacked = torch.stack([member(deter) for member in self.img_out])       # (K, [T,] B, S)
        # Picked on-device so no host sync is needed.
        index = torch.randint(self.ensemble, (max(steps, 1),), device=deter.device)
        if not steps:
            return self._stats(stacked.index_select(0, index)[0])
        index = index.view(1, steps, *[1] * (stacked.dim() - 2)).expand(1, *stacked.shape[1:])
        return self._stats(stacked.gather(0, index)[0])

    # ----- one step -----

    def img_step(self, prev_state: dict, prev_action: torch.Tensor, sample: bool = True) -> dict:
        """Prior: (state_{t-1}, a_{t-1}) -> state_t without an observation."""
        stoch = prev_state["stoch"].flatten(-2) if self.discrete else prev_state["stoch"]
        x = self.img_in(torch.cat([stoch.to(prev_action.dtype), prev_action], -1))
        deter = self.gru(x, prev_state["deter"])
        stats = self._prior_stats(deter)
        return {"deter": deter, "stoch": self._sample(stats, sample), **stats}

    def obs_step(self, prev_state: dict, prev_action: torch.Tensor, embed: torch.Tensor, is_first: torch.Tensor,
                 sample: bool = True) -> tuple[dict, dict]:
        """Posterior and prior for one step; the state and action are zeroed where is_first."""
        keep = (1.0 - is_first.float())[:, None]
        prev_state = {k: v * keep.view(-1, *[1] * (v.dim() - 1)) for k, v in prev_state.items()}
        prior = self.img_step(prev_state, prev_action * keep, sample)
        post = self._posterior(prior["deter"], self.obs_embed(embed), sample)
        return post, prior

    def _posterior(self, deter: torch.Tensor, embed_part: torch.Tensor, sample: bool) -> dict:
        stats = self._stats(self.obs_post(self.obs_deter(deter) + embed_part))
        return {"deter": deter, "stoch": self._sample(stats, sample), **stats}

    # ----- sequences -----

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor, state: dict | None = None,
                sample: bool = True) -> tuple[dict, dict]:
        """Posteriors and priors for a sequence.

        embed (T, B, E), action (T, B, A) is the action that led to each step, is_first (T, B).
        Returns post, prior: dicts of (T, B, ...); the prior holds deter and its statistics, no `stoch` sample.
        """
        T, B = embed.shape[:2]
        state = state if state is not None else self.initial(B, embed.device)
        embed_part = self.obs_embed(embed)  # all T at once
        keep = 1.0 - is_first.to(embed_part.dtype)
        action = action.to(embed_part.dtype)  # the compute dtype (bf16 under autocast), cast once for all T
        posts = []
        for t in range(T):
            state = self.obs_cell(state, action[t], embed_part[t], keep[t], sample)
            posts.append(state)
        post = {key: torch.stack([p[key] for p in posts]) for key in posts[0]}
        # The prior does not feed the recurrence during observation, so all T run in one batch. The losses read
        # only its statistics, so it holds no sample (one over all T would draw random numbers nobody uses).
        prior = {"deter": post["deter"], **self._prior_stats(post["deter"], steps=T)}
        return post, prior

    def obs_cell(self, state: dict, action: torch.Tensor, embed_part: torch.Tensor, keep: torch.Tensor,
                 sample: bool = True) -> dict:
        """One observe step: the posterior at t from the state at t - 1, the action that led to t and
        obs_embed(embed_t); `keep` (B,) is 0 where the step starts an episode, which zeroes the state and action.

        Only `stoch` and `deter` feed the recurrence, so the statistics of the previous state are never masked.
        The inputs of the recurrence take the dtype of `embed_part` (the autocast compute dtype), so under bf16 the
        state stays bf16 through the scan instead of switching dtype twice a step; the statistics stay float32.
        """
        action = action.to(embed_part.dtype)
        k = keep[:, None].to(action.dtype)
        stoch = state["stoch"].flatten(-2) if self.discrete else state["stoch"]
        x = self.img_in(torch.cat([stoch.to(action.dtype) * k, action * k], -1))
        deter = self.gru(x, state["deter"] * k.to(state["deter"].dtype))
        return self._posterior(deter, embed_part, sample)

    def imagine(self, action: torch.Tensor, state: dict) -> dict:
        """Open-loop prior states for a given action sequence (T, B, A) from `state`."""
        states = []
        for t in range(action.shape[0]):
            state = self.img_step(state, action[t])
            states.append(state)
        return {key: torch.stack([s[key] for s in states]) for key in states[0]}

    # ----- loss -----

    def kl_loss(self, post: dict, prior: dict, forward=False, balance=0.8, free=0.0, free_avg=True):
        """KL balancing: mix * KL(lhs || sg(rhs)) + (1 - mix) * KL(sg(lhs) || rhs), each clipped at `free`.

        lhs, rhs = (post, prior), mix = 1 - balance unless `forward`. Returns (loss, per-step KL value).
        """
        return self.kl_balance(self.dist(post), self.dist(prior), forward, balance, free, free_avg)

    def kl_balance(self, post_dist, prior_dist, forward=False, balance=0.8, free=0.0, free_avg=True):
        """`kl_loss` on the distributions themselves, so a caller that also wants their entropies normalises
        the logits once per distribution (the stop-gradient copies share the forward pass)."""
        kld = dists.kl_onehot if self.discrete else torch.distributions.kl_divergence
        lhs, rhs = (prior_dist, post_dist) if forward else (post_dist, prior_dist)
        mix = balance if forward else (1 - balance)
        if balance == 0.5:
            value = kld(lhs, rhs)
            # The official plain-KL branch always clips per element, whatever free_avg says.
            return _free(value, free, free_avg=False), value
        value_lhs = value = kld(lhs, dists.detach(rhs))
        value_rhs = kld(dists.detach(lhs), rhs)
        loss = mix * _free(value_lhs, free, free_avg) + (1 - mix) * _free(value_rhs, free, free_avg)
        return loss, value

    def sampled_kl(self, post: dict, prior: dict, balance=0.8, **unused):
        """Single-sample KL log q(z) - log p(z) at the posterior sample z = post['stoch'], per step.

        The IWAE bound needs it (PyDreamer's `iwae_samples`). KL balancing splits the gradient as in
        `kl_loss` (the posterior term reaches q and z, the prior term only p); the value is one sample's KL.
        Returns (loss (T, B), value (T, B)).
        """
        sg = lambda state: {k: v.detach() for k, v in state.items()}
        z = post["stoch"]
        post_grad = self.dist(post).log_prob(z) - self.dist(sg(prior)).log_prob(z)
        prior_grad = self.dist(sg(post)).log_prob(z.detach()) - self.dist(prior).log_prob(z.detach())
        mix = 1 - balance
        return mix * post_grad + (1 - mix) * prior_grad, post_grad.detach()


def _free(value: torch.Tensor, free: float, free_avg: bool) -> torch.Tensor:
    if free_avg:
        return torch.clamp(value.mean(), min=free)
    return torch.clamp(value, min=free).mean()
