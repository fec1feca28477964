"""The DreamerV2 world model: encoder, RSSM and heads (decoder, reward, discount, plus any registered head or
probe, see `heads.py`), with the official loss and PyDreamer's importance-weighted bound (`iwae_samples`)."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from torch_dreamer.agent import dists
from torch_dreamer.agent import heads as heads_lib
from torch_dreamer.agent.nets import Encoder
from torch_dreamer.agent.optim import Optimizer
from torch_dreamer.agent.rssm import RSSM
from torch_dreamer.errors import UserError

REWARD_TRANSFORMS = {"identity": lambda r: r, "sign": torch.sign, "tanh": torch.tanh}
# Keys every batch carries that are not observations to encode or decode.
STEP_KEYS = ("action", "reward", "discount", "is_first", "is_last", "is_terminal")


def iwae_loss(per_sample: torch.Tensor) -> torch.Tensor:
    """-mean log (1/K) sum_k exp(-loss_k) over the last axis (K samples), as PyDreamer's -logavgexp(-loss)."""
    samples = per_sample.shape[-1]
    return -(torch.logsumexp(-per_sample.float(), -1) - math.log(samples)).mean()


class WorldModel(nn.Module):
    def __init__(self, config, obs_shapes: dict, act_dim: int):
        super().__init__()
        self.config = config
        shapes = {k: tuple(v) for k, v in obs_shapes.items() if k not in STEP_KEYS and not k.startswith("log_")}
        # Probe targets (`probe_*` keys) never reach the encoder, nor the decoder.
        self.act_dim = act_dim
        self.encoder = Encoder(heads_lib.model_shapes(shapes), **config.encoder)
        self.rssm = RSSM(self.encoder.embed_size, act_dim, **config.rssm)
        feat = self.rssm.feat_size
        names = heads_lib.head_names(config)
        self.heads = nn.ModuleDict({name: heads_lib.make_head(name, config, shapes, feat) for name in names})
        self._channels_last()
        for name in config.grad_heads:
            if name not in self.heads:
                raise ValueError(f"grad_heads names '{name}', which is not a head ({', '.join(self.heads)})")
        for name in heads_lib.option(config, "probes", []):
            if name and not heads_lib.is_probe(self.heads[name]):
                raise UserError(f"--probes names '{name}', which is not a probe head; use --heads {name}")
        if config.clip_rewards not in REWARD_TRANSFORMS:
            raise ValueError(f"clip_rewards must be one of {', '.join(REWARD_TRANSFORMS)}")
        self.iwae_samples = int(heads_lib.option(config, "iwae_samples", 1))
        if self.iwae_samples < 1:
            raise UserError(f"iwae_samples must be >= 1, got {self.iwae_samples}")
        if self.iwae_samples > 1 and (config.kl.free > 0 or config.kl.forward):
            raise UserError("iwae_samples > 1 uses a sampled KL, which takes neither free nats nor the forward KL; "
                            "add --kl.free 0 --kl.forward False")
        self.probe_grad = bool(heads_lib.option(config, "probe_grad", False))
        # Probes on stop-gradient features train with their own optimizer, so the world model's updates
        # (its gradient-norm clipping included) are exactly those of a run without them.
        self.detached = [n for n, head in self.heads.items() if heads_lib.is_probe(head) and not self.probe_grad]
        params = [p for name in self.detached for p in self.heads[name].parameters()]
        settings = heads_lib.option(config, "probe_opt", config.model_opt)
        self.probe_opt = Optimizer("probe", params, **settings, precision=config.precision) if params else None

    def _channels_last(self) -> None:
        """Conv weights in NHWC memory, where convolutions are fastest (oneDNN, cuDNN), in every precision: the
        Atari encoder + decoder forward and backward took 6.6 s NCHW vs 6.0 s NHWC in float32 on one CPU core
        (the same math, other summation order). The images arrive NHWC already. The decoder's first transposed
        conv runs as a matmul over its flattened weight, so it stays."""
        convs = [self.encoder.cnn] if self.encoder.cnn_keys else []
        decoder = self.heads["decoder"]
        convs += [decoder.cnn[1:]] if getattr(decoder, "cnn_keys", None) else []
        for module in convs:
            module.to(memory_format=torch.channels_last)

    def model_parameters(self) -> list:
        """What the world-model optimizer trains: every parameter but those of stop-gradient probes."""
        skip = {id(p) for name in self.detached for p in self.heads[name].parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def optimizers(self) -> dict:
        return {"probe": self.probe_opt} if self.probe_opt is not None else {}

    def preprocess(self, data: dict) -> dict:
        """uint8 images to [-0.5, 0.5]; transformed rewards; discount target gamma * (1 - is_terminal)."""
        out = {}
        for key, value in data.items():
            if key.startswith("log_"):
                continue
            if value.dtype == torch.uint8:
                value = value.float() / 255.0 - 0.5
            out[key] = value
        if "reward" in out:
            out["reward"] = REWARD_TRANSFORMS[self.config.clip_rewards](out["reward"].float())
        if "is_terminal" in out:
            out["discount"] = self.config.discount * (1.0 - out["is_terminal"].float())
        return out

    def _head_nll(self, feat: torch.Tensor, data: dict, names) -> tuple[dict, dict]:
        """Per-step negative log-likelihoods {key: (T, B)} of the named heads, and their extra metrics."""
        nll, metrics = {}, {}
        for name in names:
            head = self.heads[name]
            grad = self.probe_grad if heads_lib.is_probe(head) else name in self.config.grad_heads
            out = head(feat if grad else feat.detach())
            for key, dist in (out.items() if isinstance(out, dict) else [(name, out)]):
                nll[key] = -dist.log_prob(data[key])
            if hasattr(head, "metrics"):
                metrics.update(head.metrics(out, data))
        return nll, metrics

    def _observe(self, data: dict, state: dict | None, samples: int):
        """Preprocessed data and posterior/prior, with each sequence repeated `samples` times along B."""
        data = self.preprocess(data)
        if samples > 1:  # sequence b's samples sit at b * K ... b * K + K - 1
            data = {k: v.repeat_interleave(samples, 1) for k, v in data.items()}
            state = None if state is None else {k: v.repeat_interleave(samples, 0) for k, v in state.items()}
        embed = self.encoder(data)                                              # (T, B, E)
        post, prior = self.rssm.observe(embed, data["action"], data["is_first"], state)
        return data, post, prior, embed

    def loss(self, data: dict, state: dict | None = None):
        """The world-model loss for a batch of (T, B, ...) sequences.

        With `iwae_samples` K > 1, each sequence is observed K times and the loss is PyDreamer's
        importance-weighted bound -log mean_k exp(-(kl_k + nll_k)) per step (sampled KL, balanced gradients);
        K = 1 is the official loss. Returns (loss, post, metrics, kl_value); `post` holds (T, B, ...) posterior
        states (the first sample's when K > 1), `kl_value` (T, B) the analytic KL.
        """
        model_loss, metrics, outputs = self.loss_outputs(data, state)
        return model_loss, outputs["post"], metrics, outputs["kl"]

    def loss_outputs(self, data: dict, state: dict | None = None):
        """`loss` as (loss, metrics, outputs), outputs = {post, kl, embed} as the official passes to exploration:
        the (T, B, ...) posterior, the analytic KL (T, B) and the encoder's (T, B, E) embedding (detached)."""
        config, samples = self.config, self.iwae_samples
        data, post, prior, embed = self._observe(data, state, samples)
        post_dist, prior_dist = self.rssm.dist(post), self.rssm.dist(prior)     # one normalisation each
        kl_loss, kl_value = self.rssm.kl_balance(post_dist, prior_dist, **config.kl)  # kl_value (T, B)
        feat = self.rssm.feat(post)                                             # (T, B, F)
        names = [name for name in self.heads if name not in self.detached]
        nll, metrics = self._head_nll(feat, data, names)
        scales = config.loss_scales
        if samples == 1:
            losses = {"kl": kl_loss, **{key: value.mean() for key, value in nll.items()}}
            model_loss = sum(scales.get(key, 1.0) * value for key, value in losses.items())
        else:
            kl_sample_loss, kl_sample = self.rssm.sampled_kl(post, prior, **config.kl)
            per_step = scales.get("kl", 1.0) * kl_sample_loss
            per_step = per_step + sum(scales.get(key, 1.0) * value for key, value in nll.items())
            model_loss = iwae_loss(per_step.unflatten(1, (-1, samples)))
            losses = {"kl": kl_sample.mean(), **{key: value.mean() for key, value in nll.items()}}
            metrics["iwae_gap"] = (per_step.mean() - model_loss).detach()  # >= 0: how much tighter than the ELBO
            first = lambda state: {k: v.unflatten(1, (-1, samples))[:, :, 0] for k, v in state.items()}
            post, prior, embed = first(post), first(prior), embed.unflatten(1, (-1, samples))[:, :, 0]
            kl_value = kl_value.unflatten(1, (-1, samples))[:, :, 0]
            post_dist, prior_dist = self.rssm.dist(post), self.rssm.dist(prior)
        metrics.update({f"{name}_loss": value.detach() for name, value in losses.items()})
        metrics["model_kl"] = kl_value.mean().detach()
        with torch.no_grad():
            metrics["prior_ent"] = prior_dist.entropy().mean()
            metrics["post_ent"] = post_dist.entropy().mean()
        return model_loss, metrics, {"post": post, "kl": kl_value, "embed": embed.detach()}

    @torch.no_grad()
    def log_likelihood_bound(self, data: dict, samples: int = 1, state: dict | None = None, per_sample: bool = False):
        """Per-step lower bound on log p(x_t, r_t, d_t | past) in nats (unit loss scales, no probes): samples=1
        the ELBO with the analytic KL, samples=K > 1 the IWAE bound over K posterior samples.

        Returns (T, B); with `per_sample` also the K single-sample ELBOs (T, B, K) that the bound averages.
        """
        data, post, prior, _ = self._observe(data, state, samples)
        feat = self.rssm.feat(post)
        names = [name for name, head in self.heads.items() if not heads_lib.is_probe(head)]
        nll, _ = self._head_nll(feat, data, names)
        nll = sum(nll.values())
        if samples == 1:
            elbo = -(dists.kl_onehot(self.rssm.dist(post), self.rssm.dist(prior)) if self.rssm.discrete else
                     torch.distributions.kl_divergence(self.rssm.dist(post), self.rssm.dist(prior))) - nll
            return (elbo, elbo[..., None]) if per_sample else elbo
        _, kl_sample = self.rssm.sampled_kl(post, prior)
        single = (-(kl_sample + nll)).unflatten(1, (-1, samples))               # (T, B, K)
        bound = torch.logsumexp(single, -1) - math.log(samples)
        return (bound, single) if per_sample else bound

    def train_probes(self, post: dict, data: dict, autocast=contextlib.nullcontext) -> dict:
        """One update of the stop-gradient probes on the posterior `post` of `data`; their metrics."""
        if self.probe_opt is None:
            return {}
        keys = {key for name in self.detached for key in heads_lib.head_keys(name, self.heads[name])}
        with autocast():
            targets = self.preprocess({key: data[key] for key in keys})
            feat = self.rssm.feat({k: v.detach() for k, v in post.items()})
            nll, metrics = self._head_nll(feat, targets, self.detached)
            losses = {key: value.mean() for key, value in nll.items()}
        metrics.update({f"{key}_loss": value.detach() for key, value in losses.items()})
        metrics.update(self.probe_opt(sum(losses.values())))
        return metrics

    @torch.no_grad()
    def probe_report(self, data: dict, sequences: int = 4) -> dict:
        """Images of the probes that draw (the map probe: true maps over predicted ones), {name: (1, H, W, 3)}."""
        names = [name for name, head in self.heads.items() if heads_lib.is_probe(head) and hasattr(head, "report")]
        if not names:
            return {}
        data = self.preprocess({k: v[:, :sequences] for k, v in data.items()})
        post, _ = self.rssm.observe(self.encoder(data), data["action"], data["is_first"])
        feat = self.rssm.feat(post)
        out = {}
        for name in names:
            out.update(self.heads[name].report(feat, data, sequences))
        return out

    def imagine(self, policy, start: dict, is_terminal: torch.Tensor | None, horizon: int) -> dict:
        """Rolls the prior forward from every start state with actions from `policy`.

        start: dict of (T, B, ...) posterior states, flattened to N = T * B starts.
        Returns seq: dict of (H + 1, N, ...) with feat, action, discount and weight; when `policy` is an actor
        (it has `trunk` and `dist`) also actor_hidden: (H, N, units), its last hidden layer on feat[:-1].
        """
        start = {k: v.detach().reshape((-1,) + v.shape[2:]) for k, v in start.items()}
        feat = self.rssm.feat(start)
        # The start state's action slot is a placeholder no loss reads (actor_loss takes action[1:-1]).
        states, feats, actions = [start], [feat], [torch.zeros(feat.shape[0], self.act_dim, device=feat.device)]
        hiddens = []
        for _ in range(horizon):
            state, feat, action, hidden = self.imagine_step(policy, states[-1], feats[-1])
            states.append(state)
            feats.append(feat)
            actions.append(action)
            hiddens.append(hidden)
        seq = {key: torch.stack([s[key] for s in states]) for key in states[0]}
        seq["feat"], seq["action"] = torch.stack(feats), torch.stack(actions)
        if hiddens and hiddens[0] is not None:
            with torch.enable_grad():  # the rollout may run without autograd; the actor loss needs this graph
                seq["actor_hidden"] = torch.stack(hiddens)
        if "discount" in self.heads:
            disc = dists.mean(self.heads["discount"](seq["feat"]))
            if is_terminal is not None:
                # The first state is real: its discount comes from the data, not the head.
                true_first = self.config.discount * (1.0 - is_terminal.reshape(-1).float())
                disc = torch.cat([true_first[None], disc[1:]], 0)
        else:
            disc = torch.full(seq["feat"].shape[:-1], self.config.discount, device=feat.device)
        seq["discount"] = disc
        seq["weight"] = torch.cumprod(torch.cat([torch.ones_like(disc[:1]), disc[:-1]], 0), 0)
        return seq

    def imagine_step(self, policy, state: dict, feat: torch.Tensor):
        """One imagined step: the policy's action on `feat` (of `state`), the prior's next state and its features.

        Returns (state, feat, action, hidden). The actor's gradient reaches the action, not the features it acted
        on (they are detached). For an actor, hidden is its last hidden layer, computed with autograd even when
        the rollout runs without (reinforce gradients), so the actor loss reuses it; None for other policies."""
        if hasattr(policy, "trunk") and hasattr(policy, "dist"):
            with torch.enable_grad():
                hidden = policy.trunk(feat.detach())
            dist = policy.dist(hidden)
        else:
            hidden, dist = None, policy(feat.detach())
        action = dist.rsample()
        state = self.rssm.img_step(state, action.to(feat.dtype))
        return state, self.rssm.feat(state), action, hidden

    @torch.no_grad()
    def video_pred(self, data: dict, key: str, observed: int = 5, sequences: int = 6) -> np.ndarray:
        """Open-loop prediction: `observed` real frames, then the rest imagined from the actions.

        Returns uint8 (T, 3 * H, N * W, C): truth / model / error stacked, sequences side by side.
        """
        data = self.preprocess({k: v[:, :sequences] for k, v in data.items()})
        truth = data[key] + 0.5                                                 # (T, N, H, W, C)
        embed = self.encoder(data)
        post, _ = self.rssm.observe(embed[:observed], data["action"][:observed], data["is_first"][:observed])
        decoder = self.heads["decoder"]
        recon = decoder(self.rssm.feat(post))[key].mode
        model = recon
        if data["action"].shape[0] > observed:
            prior = self.rssm.imagine(data["action"][observed:], {k: v[-1] for k, v in post.items()})
            model = torch.cat([recon, decoder(self.rssm.feat(prior))[key].mode], 0)
        model = model + 0.5
        truth = truth[: model.shape[0]]
        error = (model - truth + 1) / 2
        video = torch.cat([truth, model, error], 2).clamp(0, 1)                 # (T, N, 3H, W, C)
        T, N, H, W, C = video.shape
        video = video.permute(0, 2, 1, 3, 4).reshape(T, H, N * W, C)
        return (video * 255).round().to(torch.uint8).cpu().numpy()
