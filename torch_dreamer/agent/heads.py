"""World-model heads as a registry: name -> class, built from the config.

`WorldModel` builds `decoder`, `reward`, `discount` (when `pred_discount`), then every name in `heads`
and every name in `probes`, each with ``HEADS[name](config, shapes, feat_size)``. Adding a head takes one
class and one config flag:

    from torch_dreamer.agent.heads import register
    from torch_dreamer.agent.nets import MLP

    @register("speed")
    class SpeedHead(MLP):
        keys = ("speed",)                        # the batch keys it predicts (default: its name)
        def __init__(self, config, shapes, feat_size):
            super().__init__(feat_size, shapes["speed"], layers=2, units=128)

    # dreamer train ... --heads speed   (imported before the agent is built)

The contract of a head class:
- ``__init__(config, shapes, feat_size)``: `shapes` are the observation shapes {key: shape} of the run,
  probe targets included; `feat_size` is the RSSM feature size.
- ``forward(feat (..., F))`` returns one distribution, scored against ``data[name]``, or a dict
  ``{key: distribution}`` scored against ``data[key]``; the loss of each key is ``-log_prob(...).mean()``,
  logged as ``<key>_loss`` and weighted by ``loss_scales.<key>`` (1 when absent).
- ``probe = True`` makes it a probe: it reads stop-gradient features (unless ``probe_grad``) and has its own
  optimizer, so the world model trains exactly as without it.
- optional ``metrics(out, data) -> {name: scalar}`` (e.g. accuracy) and ``report(feat, data) -> {name: uint8
  (T, H, W, 3)}`` (images or videos for TensorBoard).

Observation keys that start with ``probe_`` are probe targets: the encoder and decoder never see them.

The module also holds the categorical (two-hot) distribution behind ``reward_head.dist categorical`` and
``critic.dist categorical`` (`TwoHotDist`), and the MiniGrid probes ``map`` and ``goal``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_dreamer.agent.nets import MLP, Decoder, glorot_, mlp_trunk
from torch_dreamer.errors import UserError

PROBE_PREFIX = "probe_"
HEADS: dict[str, type] = {}


def register(name: str):
    """Class decorator: ``@register("name")`` makes the head buildable by config."""

    def wrap(cls):
        HEADS[name] = cls
        return cls

    return wrap


def model_shapes(shapes: dict) -> dict:
    """The observation shapes the encoder and decoder may read: everything except probe targets."""
    return {k: v for k, v in shapes.items() if not k.startswith(PROBE_PREFIX)}


def option(config, key: str, default):
    """A config key that checkpoints written before it existed lack."""
    try:
        return config[key]
    except KeyError:
        return default


def head_names(config) -> list[str]:
    """decoder, reward, discount (with pred_discount), then `heads`, then `probes`, without repeats."""
    names = ["decoder", "reward"] + (["discount"] if config.pred_discount else [])
    for name in list(option(config, "heads", [])) + list(option(config, "probes", [])):
        if name and name not in names:
            names.append(name)
    return names


def make_head(name: str, config, shapes: dict, feat_size: int) -> nn.Module:
    if name not in HEADS:
        raise UserError(f"unknown head '{name}'; registered heads: {', '.join(sorted(HEADS))} "
                        "(a new one needs @register in torch_dreamer/agent/heads.py or your own module)")
    return HEADS[name](config, shapes, feat_size)


def head_keys(name: str, head: nn.Module) -> tuple:
    """The batch keys a head predicts."""
    return tuple(getattr(head, "keys", None) or (name,))


def is_probe(head: nn.Module) -> bool:
    return bool(getattr(head, "probe", False))


# ----------------------------------------------------------------------------- the official heads
# Subclasses of the networks the world model always used, so checkpoint keys stay `heads.decoder.*` etc.


@register("decoder")
class DecoderHead(Decoder):
    """Reconstructs the observations that match `decoder.cnn_keys` / `decoder.mlp_keys`."""

    def __init__(self, config, shapes, feat_size):
        super().__init__(model_shapes(shapes), feat_size, **config.decoder)
        self.keys = tuple(self.cnn_keys) + tuple(self.mlp_keys)


@register("reward")
class RewardHead(MLP):
    """`reward_head`: mse (the official) or categorical over a fixed support with two-hot targets."""

    def __init__(self, config, shapes, feat_size):
        super().__init__(feat_size, (), **config.reward_head)


@register("discount")
class DiscountHead(MLP):
    """`discount_head`: a Bernoulli on the soft label discount * (1 - is_terminal)."""

    def __init__(self, config, shapes, feat_size):
        super().__init__(feat_size, (), **config.discount_head)


# ----------------------------------------------------------------------------- two-hot categorical


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def twohot(x: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    """(...,) values -> (..., bins) weights on the two nearest bins of linspace(low, high, bins).

    The weights' expectation over the support is x itself (clipped to [low, high]).
    """
    x = x.float().clamp(low, high)
    position = (x - low) / (high - low) * (bins - 1)
    below = position.floor().clamp(0, bins - 2)
    frac = (position - below).unsqueeze(-1)
    below = below.long()
    return F.one_hot(below, bins) * (1 - frac) + F.one_hot(below + 1, bins) * frac


class TwoHotDist:
    """A categorical over the fixed support linspace(low, high, bins), trained with two-hot targets.

    `mean` and `mode` are the expectation over the support (symexp'd when `symlog`), so whatever reads a
    head's mode (imagined rewards, critic values) gets a number as from the mse head. `dims` trailing dims
    of the value are summed in log_prob.
    """

    def __init__(self, logits: torch.Tensor, low: float, high: float, symlog: bool = False, dims: int = 0):
        self.logits = torch.log_softmax(logits.float(), -1)
        self.low, self.high, self.symlog, self._dims = float(low), float(high), bool(symlog), dims
        self.bins = logits.shape[-1]

    @property
    def support(self) -> torch.Tensor:
        return torch.linspace(self.low, self.high, self.bins, device=self.logits.device)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    def _out(self, x):
        return symexp(x) if self.symlog else x

    @property
    def mean(self) -> torch.Tensor:
        return self._out((self.probs * self.support).sum(-1))

    mode = mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        target = symlog(value.float()) if self.symlog else value.float()
        logp = (twohot(target, self.low, self.high, self.bins) * self.logits).sum(-1)
        return logp.sum(tuple(range(-self._dims, 0))) if self._dims else logp

    def sample(self, sample_shape=torch.Size()):
        index = torch.distributions.Categorical(logits=self.logits, validate_args=False).sample(sample_shape)
        return self._out(self.support[index])

    def entropy(self) -> torch.Tensor:
        ent = -(self.probs * self.logits).sum(-1)
        return ent.sum(tuple(range(-self._dims, 0))) if self._dims else ent


# ----------------------------------------------------------------------------- probes


class CellsDist:
    """Independent categoricals over `classes` codes, one per cell: logits (..., N, classes), values (..., N)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = torch.log_softmax(logits.float(), -1)

    @property
    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1).float()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        index = value.round().long().clamp(0, self.logits.shape[-1] - 1).unsqueeze(-1)
        return self.logits.gather(-1, index).squeeze(-1).sum(-1)


def _probe_settings(config) -> dict:
    settings = dict(option(config, "probe_head", {}))
    return {"layers": int(settings.get("layers", 4)), "units": int(settings.get("units", 400)),
            "act": settings.get("act", "elu"), "norm": settings.get("norm", "none"),
            "classes": int(settings.get("classes", 16))}


def _target_shape(shapes: dict, key: str, probe: str) -> tuple:
    if key not in shapes:
        raise UserError(f"--probes {probe} needs the observation key '{key}', which MiniGrid tasks (minigrid_*) "
                        f"emit when --probes is set; this run's observations are {', '.join(sorted(shapes))}")
    return tuple(shapes[key])


@register("map")
class MapProbe(nn.Module):
    """PyDreamer's global-map probe: every cell's (object, colour, state) codes from the features.

    Target `probe_map`: (side * side * 3,) codes from MiniGrid's own encoding (OBJECT_TO_IDX, COLOR_TO_IDX,
    door states; the agent's cell holds the agent and its direction), zero-padded ("unseen") to a square.
    Each code is a categorical over `probe_head.classes`; the loss sums the cells' cross-entropies.
    """

    probe = True
    keys = ("probe_map",)

    def __init__(self, config, shapes, feat_size):
        super().__init__()
        (size,) = _target_shape(shapes, "probe_map", "map")
        side = math.isqrt(size // 3)
        if side * side * 3 != size:
            raise UserError(f"probe_map must hold side * side * 3 codes, got {size}")
        settings = _probe_settings(config)
        self.side, self.size, self.classes = side, size, settings["classes"]
        self.trunk = mlp_trunk(feat_size, settings["layers"], settings["units"], settings["act"], settings["norm"])
        self.out = nn.Linear(settings["units"] if settings["layers"] else feat_size, size * self.classes)
        glorot_(self)

    def forward(self, feat):
        logits = self.out(self.trunk(feat)).reshape(feat.shape[:-1] + (self.size, self.classes))
        return {"probe_map": CellsDist(logits)}

    def metrics(self, out: dict, data: dict) -> dict:
        pred = out["probe_map"].mode.reshape(-1, self.side * self.side, 3)
        true = data["probe_map"].reshape(-1, self.side * self.side, 3).round()
        if (true >= self.classes).any():
            raise UserError(f"probe_map holds codes up to {int(true.max())}; raise --probe_head.classes above it")
        return {"probe_map_acc": (pred[..., 0] == true[..., 0]).float().mean().detach()}

    @torch.no_grad()
    def report(self, feat: torch.Tensor, data: dict, sequences: int = 4) -> dict:
        """One image: the true maps of the last step of up to `sequences` sequences over the predicted ones."""
        pred = self(feat[-1, :sequences])["probe_map"].mode
        true = data["probe_map"][-1, :sequences].float()
        gap = lambda axis, like: np.full(like.shape[:axis] + (2,) + like.shape[axis + 1:], 255, np.uint8)
        rows = []
        for maps in (true, pred):
            images = [render_map(m, self.side) for m in maps]
            rows.append(np.concatenate(sum(([image, gap(1, image)] for image in images), [])[:-1], 1))
        return {"probe_map": np.concatenate([rows[0], gap(0, rows[0]), rows[1]], 0)[None]}


def render_map(codes, side: int, cell: int = 8) -> np.ndarray:
    """(side * side * 3,) map codes -> uint8 (side * cell, side * cell, 3): one colour per object code."""
    codes = np.asarray(codes.detach().cpu() if isinstance(codes, torch.Tensor) else codes)
    objects = np.round(codes).astype(np.int64).reshape(side, side, 3)[..., 0]
    image = _palette(int(objects.max()) + 1)[objects]
    return np.repeat(np.repeat(image, cell, 0), cell, 1)


def _palette(count: int) -> np.ndarray:
    """Code 0 (unseen / padding) black, then well separated hues (golden-ratio steps)."""
    colours = [(0, 0, 0)] + [colorsys.hsv_to_rgb((i * 0.618) % 1.0, 0.65, 0.95) for i in range(1, max(count, 1))]
    return (np.array(colours) * 255).round().astype(np.uint8)


@register("goal")
class GoalProbe(MLP):
    """Direction to the nearest goal in the agent's frame: target `probe_goal` = (forward, right, present),
    offsets in grid sides (zeros when the env has no goal object)."""

    probe = True
    keys = ("probe_goal",)

    def __init__(self, config, shapes, feat_size):
        shape = _target_shape(shapes, "probe_goal", "goal")
        settings = _probe_settings(config)
        super().__init__(feat_size, shape, settings["layers"], settings["units"], settings["act"], settings["norm"])

    def forward(self, feat):
        return {"probe_goal": super().forward(feat)}
