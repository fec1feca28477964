"""Networks of the official DreamerV2: MLPs with distribution heads, the LayerNorm GRU,
and the CNN/MLP encoder and decoder selected by key regexes.

Weights use Keras' defaults (Glorot-uniform kernels, zero biases) so that training
dynamics match the official TF2 code.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from torch_dreamer.agent import dists


def activation(name: str) -> nn.Module:
    table = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "swish": nn.SiLU,
             "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "none": nn.Identity}
    if name not in table:
        raise ValueError(f"unknown activation '{name}'; choose from {', '.join(table)}")
    return table[name]()


def norm_layer(name: str, size: int) -> nn.Module:
    if name == "none":
        return nn.Identity()
    if name == "layer":
        return nn.LayerNorm(size, eps=1e-3)  # Keras' LayerNormalization epsilon
    raise ValueError(f"unknown norm '{name}'; choose none or layer")


def glorot_(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every Linear/Conv layer inside `module`."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class ChannelNorm(nn.Module):
    """LayerNorm over channels of an NCHW tensor (the official normalises the NHWC last axis)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-3)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def mlp_trunk(inp: int, layers: int, units: int, act: str, norm: str) -> nn.Sequential:
    modules, size = [], inp
    for _ in range(layers):
        modules += [nn.Linear(size, units), norm_layer(norm, units), activation(act)]
        size = units
    return nn.Sequential(*modules)


class DistHead(nn.Module):
    """Maps features to a distribution over `shape` (the official DistLayer).

    dist: mse | binary | onehot | normal | tanh_normal | trunc_normal | categorical (a categorical over
    linspace(low, high, bins) trained with two-hot targets, symlog'd when `symlog`; `heads.TwoHotDist`).
    """

    def __init__(self, inp: int, shape: tuple, dist: str = "mse", min_std: float = 0.1, init_std: float = 0.0,
                 bins: int = 255, low: float = -20.0, high: float = 20.0, symlog: bool = False):
        super().__init__()
        self.shape, self.dist, self.min_std, self.init_std = tuple(shape), dist, min_std, init_std
        size = int(math.prod(self.shape))
        if dist == "categorical":
            if int(bins) < 2 or not float(high) > float(low):
                raise ValueError(f"a categorical head needs bins >= 2 and high > low, got {bins}, [{low}, {high}]")
            self.support = (int(bins), float(low), float(high), bool(symlog))
            size *= int(bins)
        self.out = nn.Linear(inp, size)
        self.std = nn.Linear(inp, size) if dist in ("normal", "tanh_normal", "trunc_normal") else None

    def forward(self, x):
        dims = len(self.shape)
        if self.dist == "categorical":
            from torch_dreamer.agent.heads import TwoHotDist  # heads builds on this module

            bins, low, high, symlog = self.support
            return TwoHotDist(self.out(x).float().reshape(x.shape[:-1] + self.shape + (bins,)), low, high, symlog, dims)
        out = self.out(x).float().reshape(x.shape[:-1] + self.shape)
        if self.dist == "mse":
            return dists.MSEDist(out, dims)
        if self.dist == "binary":
            return dists.BinaryDist(out, dims)
        if self.dist == "onehot":
            return dists.OneHotDist(logits=out)
        std = self.std(x).float().reshape(out.shape)
        if self.dist == "normal":
            normal = torch.distributions.Normal(out, F.softplus(std) + self.min_std, validate_args=False)
            return torch.distributions.Independent(normal, dims, validate_args=False)
        if self.dist == "tanh_normal":
            return dists.tanh_normal(5 * torch.tanh(out / 5), F.softplus(std + self.init_std) + self.min_std)
        if self.dist == "trunc_normal":
            std = 2 * torch.sigmoid((std + self.init_std) / 2) + self.min_std
            return torch.distributions.Independent(dists.TruncNormalDist(torch.tanh(out), std, -1, 1), 1,
                                                   validate_args=False)
        raise ValueError(f"unknown distribution '{self.dist}'")


class MLP(nn.Module):
    """`layers` x Dense+norm+act, then a DistHead (the official MLP)."""

    def __init__(self, inp: int, shape, layers: int, units: int, act: str = "elu", norm: str = "none",
                 dist: str = "mse", min_std: float = 0.1, bins: int = 255, low: float = -20.0, high: float = 20.0,
                 symlog: bool = False, **unused):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.trunk = mlp_trunk(inp, layers, units, act, norm)
        self.head = DistHead(units if layers else inp, shape, dist, min_std, bins=bins, low=low, high=high, symlog=symlog)
        glorot_(self)

    def forward(self, x):
        return self.head(self.trunk(x))


class GRUCell(nn.Module):
    """GRU with LayerNorm on the fused gates and update bias -1 (DreamerV2's GRUCell).

    r = sigmoid(reset); c = tanh(r * cand); u = sigmoid(update - 1); h' = u * c + (1 - u) * h.
    """

    def __init__(self, inp: int, size: int, norm: bool = True, update_bias: float = -1.0):
        super().__init__()
        self.size, self.update_bias = size, update_bias
        self.linear = nn.Linear(inp + size, 3 * size)  # the official Dense keeps its bias under LayerNorm
        self.norm = nn.LayerNorm(3 * size, eps=1e-3) if norm else nn.Identity()
        glorot_(self)

    def forward(self, x, h):
        parts = self.linear(torch.cat([x, h.to(x.dtype)], -1))
        parts = self.norm(parts.float()).to(parts.dtype)  # LayerNorm in float32, as the official
        h = h.to(parts.dtype)  # the new state in the compute dtype (bf16 under autocast), as the official's
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h


def select_keys(shapes: dict, cnn_keys: str, mlp_keys: str):
    """Official key selection: re.match on the name, rank 3 to the CNN, rank 1 to the MLP."""
    cnn = [k for k, s in shapes.items() if re.match(cnn_keys, k) and len(s) == 3]
    mlp = [k for k, s in shapes.items() if re.match(mlp_keys, k) and len(s) == 1]
    return cnn, mlp


class Encoder(nn.Module):
    """CNN over the concatenated image keys plus an MLP over the vector keys.

    Input: dict of (N, H, W, C) floats in [-0.5, 0.5] and (N, D) vectors. Output: (N, embed_size).
    """

    def __init__(self, shapes: dict, cnn_keys=".*", mlp_keys=".*", act="elu", norm="none", cnn_depth=48,
                 cnn_kernels=(4, 4, 4, 4), mlp_layers=(400, 400, 400, 400)):
        super().__init__()
        self.cnn_keys, self.mlp_keys = select_keys(shapes, cnn_keys, mlp_keys)
        self.embed_size = 0
        if self.cnn_keys:
            height, width = shapes[self.cnn_keys[0]][:2]
            channels = sum(shapes[k][-1] for k in self.cnn_keys)
            layers = []
            for i, kernel in enumerate(cnn_kernels):
                depth = 2 ** i * cnn_depth
                layers += [nn.Conv2d(channels, depth, kernel, 2), _conv_norm(norm, depth), activation(act)]
                channels = depth
                height, width = (height - kernel) // 2 + 1, (width - kernel) // 2 + 1
            self.cnn = nn.Sequential(*layers)
            self.embed_size += channels * height * width
        if self.mlp_keys:
            size = sum(shapes[k][0] for k in self.mlp_keys)
            self.mlp = mlp_trunk(size, len(mlp_layers), mlp_layers[0], act, norm) if mlp_layers else nn.Identity()
            self.embed_size += mlp_layers[-1] if mlp_layers else size
        if not self.embed_size:
            raise ValueError(f"no observation matches cnn_keys / mlp_keys among {sorted(shapes)}")
        glorot_(self)

    def forward(self, obs: dict) -> torch.Tensor:
        outputs = []
        if self.cnn_keys:
            x = torch.cat([obs[k] for k in self.cnn_keys], -1)
            lead = x.shape[:-3]
            x = x.reshape((-1,) + x.shape[-3:]).permute(0, 3, 1, 2)
            outputs.append(self.cnn(x).reshape(lead + (-1,)))
        if self.mlp_keys:
            outputs.append(self.mlp(torch.cat([obs[k] for k in self.mlp_keys], -1)))
        return torch.cat(outputs, -1)


class Decoder(nn.Module):
    """Transposed CNN for image keys (unit-variance Normal per pixel) plus MLP heads for vectors."""

    def __init__(self, shapes: dict, inp: int, cnn_keys=".*", mlp_keys=".*", act="elu", norm="none",
                 cnn_depth=48, cnn_kernels=(5, 5, 6, 6), mlp_layers=(400, 400, 400, 400)):
        super().__init__()
        self.shapes = shapes
        self.cnn_keys, self.mlp_keys = select_keys(shapes, cnn_keys, mlp_keys)
        if self.cnn_keys:
            self.channels = [shapes[k][-1] for k in self.cnn_keys]
            self.depth = cnn_depth
            self.cnn_in = nn.Linear(inp, 32 * cnn_depth)
            layers, channels = [], 32 * cnn_depth
            for i, kernel in enumerate(cnn_kernels):
                last = i == len(cnn_kernels) - 1
                depth = sum(self.channels) if last else 2 ** (len(cnn_kernels) - i - 2) * cnn_depth
                layers.append(nn.ConvTranspose2d(channels, depth, kernel, 2))
                if not last:
                    layers += [_conv_norm(norm, depth), activation(act)]
                channels = depth
            self.cnn = nn.Sequential(*layers)
        if self.mlp_keys:
            self.mlp = mlp_trunk(inp, len(mlp_layers), mlp_layers[0], act, norm)
            self.mlp_heads = nn.ModuleDict({k: DistHead(mlp_layers[-1], shapes[k], "mse") for k in self.mlp_keys})
        glorot_(self)

    def forward(self, feat: torch.Tensor) -> dict:
        out = {}
        if self.cnn_keys:
            lead = feat.shape[:-1]
            x = _first_deconv(self.cnn[0], self.cnn_in(feat).reshape(-1, 32 * self.depth))
            if len(self.cnn) > 1:  # with a single kernel the first transposed conv is also the last
                x = _last_deconv(self.cnn[-1], self.cnn[1:-1](x))
            x = x.permute(0, 2, 3, 1)
            x = x.reshape(lead + x.shape[1:])
            for key, mean in zip(self.cnn_keys, x.split(self.channels, -1)):
                if mean.shape[-3:] != tuple(self.shapes[key]):
                    raise ValueError(f"decoder makes {tuple(mean.shape[-3:])} images but '{key}' is "
                                     f"{tuple(self.shapes[key])}; use 64x64 images (render_size) for the CNN")
                out[key] = dists.MSEDist(mean, 3)
        if self.mlp_keys:
            hidden = self.mlp(feat)
            for key in self.mlp_keys:
                out[key] = self.mlp_heads[key](hidden)
        return out


def _conv_norm(norm: str, channels: int) -> nn.Module:
    return ChannelNorm(channels) if norm == "layer" else norm_layer(norm, channels)


def _last_deconv(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The transposed conv that makes the image. For one channel on the CPU, PyTorch's im2col + GEMM forward
    instead of oneDNN's direct kernel, which is slow with one output channel: 168 vs 420 ms in float32, 123 vs
    225 ms in bf16 (48 -> 1 channels, batch 800, one core). Its backward is oneDNN's either way (equal gradients).
    With three channels the native forward gains less in float32 (361 vs 428 ms) and loses in bf16 (295 vs 233 ms),
    so colour images keep the layer."""
    if layer.out_channels != 1 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return layer(x)
    size, stride = list(layer.kernel_size), list(layer.stride)
    return torch.ops.aten.slow_conv_transpose2d(x, layer.weight.to(x.dtype), size, layer.bias.to(x.dtype), stride,
                                                list(layer.padding), list(layer.output_padding), list(layer.dilation))


def _first_deconv(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The first transposed conv on its 1x1 input, computed as the equal matmul over the same weights.

    PyTorch's CPU kernel for a transposed conv on a 1x1 input is several times slower than the matmul.
    x: (N, C_in) -> (N, C_out, k, k); the layer itself is skipped in `Decoder.cnn`.
    """
    out_channels, k = layer.out_channels, layer.kernel_size[0]
    y = F.linear(x, layer.weight.flatten(1).t()).reshape(-1, out_channels, k, k)
    return y + layer.bias[:, None, None]
