"""The DreamerV2 world model: encoder, RSSM, decoder, reward and discount heads."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from torch_dreamer.agent import dists
from torch_dreamer.agent.nets import MLP, Decoder, Encoder
from torch_dreamer.agent.rssm import RSSM

REWARD_TRANSFORMS = {"identity": lambda r: r, "sign": torch.sign, "tanh": torch.tanh}
# Keys every batch carries that are not observations to encode or decode.
STEP_KEYS = ("action", "reward", "discount", "is_first", "is_last", "is_terminal")


class WorldModel(nn.Module):
    def __init__(self, config, obs_shapes: dict, act_dim: int):
        super().__init__()
        self.config = config
        shapes = {k: tuple(v) for k, v in obs_shapes.items() if k not in STEP_KEYS and not k.startswith("log_")}
        self.encoder = Encoder(shapes, **config.encoder)
        self.rssm = RSSM(self.encoder.embed_size, act_dim, **config.rssm)
        feat = self.rssm.feat_size
        self.heads = nn.ModuleDict({"decoder": Decoder(shapes, feat, **config.decoder)})
        self.heads["reward"] = MLP(feat, (), **config.reward_head)
        if config.pred_discount:
            self.heads["discount"] = MLP(feat, (), **config.discount_head)
        for name in config.grad_heads:
            if name not in self.heads:
                raise ValueError(f"grad_heads names '{name}', which is not a head ({', '.join(self.heads)})")
        if config.clip_rewards not in REWARD_TRANSFORMS:
            raise ValueError(f"clip_rewards must be one of {', '.join(REWARD_TRANSFORMS)}")

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

    def loss(self, data: dict, state: dict | None = None):
        """The world-model loss for a batch of (T, B, ...) sequences.

        Returns (loss, post, metrics, kl_value); `post` holds (T, B, ...) posterior states.
        """
        config = self.config
        data = self.preprocess(data)
        embed = self.encoder(data)                                              # (T, B, E)
        post, prior = self.rssm.observe(embed, data["action"], data["is_first"], state)
        kl_loss, kl_value = self.rssm.kl_loss(post, prior, **config.kl)         # kl_value (T, B)
        losses = {"kl": kl_loss}
        feat = self.rssm.feat(post)                                             # (T, B, F)
        for name, head in self.heads.items():
            out = head(feat if name in config.grad_heads else feat.detach())
            for key, dist in (out.items() if isinstance(out, dict) else [(name, out)]):
                losses[key] = -dist.log_prob(data[key]).mean()
        scales = config.loss_scales
        model_loss = sum(scales.get(key, 1.0) * value for key, value in losses.items())
        metrics = {f"{name}_loss": value.detach() for name, value in losses.items()}
        metrics["model_kl"] = kl_value.mean().detach()
        with torch.no_grad():
            metrics["prior_ent"] = self.rssm.dist(prior).entropy().mean()
            metrics["post_ent"] = self.rssm.dist(post).entropy().mean()
        return model_loss, post, metrics, kl_value

    def imagine(self, policy, start: dict, is_terminal: torch.Tensor | None, horizon: int) -> dict:
        """Rolls the prior forward from every start state with actions from `policy`.

        start: dict of (T, B, ...) posterior states, flattened to N = T * B starts.
        Returns seq: dict of (H + 1, N, ...) with feat, action, discount and weight.
        """
        start = {k: v.detach().reshape((-1,) + v.shape[2:]) for k, v in start.items()}
        feat = self.rssm.feat(start)
        first_action = dists.mode(policy(feat.detach()))
        states, feats, actions = [start], [feat], [torch.zeros_like(first_action)]
        for _ in range(horizon):
            action = policy(feats[-1].detach()).rsample()
            state = self.rssm.img_step(states[-1], action.to(feats[-1].dtype))
            states.append(state)
            feats.append(self.rssm.feat(state))
            actions.append(action)
        seq = {key: torch.stack([s[key] for s in states]) for key in states[0]}
        seq["feat"], seq["action"] = torch.stack(feats), torch.stack(actions)
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
