"""Parity tests for torch_dreamer.agent.nets: the LayerNorm GRU, CNN shapes, parameter counts and
Keras initialisers (reference §3 RSSM / Encoder / Decoder / Parameter count, §13 items 5, 6, 13)."""

import math

import pytest
import torch
from torch import nn

from torch_dreamer import config as config_lib
from torch_dreamer.agent.behavior import ActorCritic
from torch_dreamer.agent.nets import _first_deconv, _last_deconv, MLP, Decoder, Encoder, GRUCell, select_keys
from torch_dreamer.agent.rssm import RSSM
from torch_dreamer.agent.world_model import WorldModel


def _sig(v):
    return 1 / (1 + math.exp(-v))


# ----- GRU -----

def test_gru_gates_with_update_bias_minus_one():
    # LayerNorm gain 0 makes the normalised gates equal to its bias, so every gate is set by hand.
    cell = GRUCell(inp=2, size=2, norm=True)
    b_reset, b_cand, b_update = [0.5, -1.0], [2.0, 0.3], [1.0, -0.5]
    with torch.no_grad():
        cell.norm.weight.zero_()
        cell.norm.bias.copy_(torch.tensor(b_reset + b_cand + b_update))
    x = torch.tensor([[0.7, -0.2]])
    h = torch.tensor([[0.4, -0.8]])
    out = cell(x, h)[0].tolist()
    expected = []
    for i in range(2):
        r = _sig(b_reset[i])
        c = math.tanh(r * b_cand[i])
        u = _sig(b_update[i] - 1)          # update bias -1: u = sigmoid(x - 1)
        expected.append(u * c + (1 - u) * h[0, i].item())
    assert out == pytest.approx(expected, abs=1e-6)
    # b_update = 1 gives u = sigmoid(0) = 1/2: the midpoint of candidate and state.
    assert out[0] == pytest.approx(0.5 * math.tanh(_sig(0.5) * 2.0) + 0.5 * 0.4, abs=1e-6)


def test_gru_layernorm_over_fused_gates_by_hand():
    cell = GRUCell(inp=1, size=1, norm=True)
    # The official Dense keeps its bias (use_bias=norm is not None is always true); zeros at init.
    assert cell.linear.bias is not None and cell.linear.bias.abs().sum() == 0
    assert cell.norm.eps == pytest.approx(1e-3)  # Keras LayerNormalization epsilon
    assert cell.norm.weight.tolist() == [1.0, 1.0, 1.0] and cell.norm.bias.tolist() == [0.0, 0.0, 0.0]
    with torch.no_grad():
        # parts = W [x, h] with rows (reset, cand, update)
        cell.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    x, h = 0.5, -0.25
    parts = [x, 2 * h, x + h]                    # [0.5, -0.5, 0.25]
    mean = sum(parts) / 3
    var = sum((p - mean) ** 2 for p in parts) / 3
    normed = [(p - mean) / math.sqrt(var + 1e-3) for p in parts]
    r = _sig(normed[0])
    c = math.tanh(r * normed[1])
    u = _sig(normed[2] - 1)
    out = cell(torch.tensor([[x]]), torch.tensor([[h]]))
    assert out.item() == pytest.approx(u * c + (1 - u) * h, abs=1e-6)


def test_gru_layernorm_runs_in_float32_under_autocast():
    cell = GRUCell(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cell(torch.randn(2, 4), torch.randn(2, 3))
    assert out.shape == (2, 3)
    assert torch.isfinite(out.float()).all()


# ----- Encoder / decoder shapes -----

def _record_shapes(module, kind):
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
             for m in module.modules() if isinstance(m, kind)]
    return shapes, hooks


def test_encoder_cnn_sizes_64_31_14_6_2():
    enc = Encoder({"image": (64, 64, 3)}, cnn_keys="image", mlp_keys="$^")
    assert enc.embed_size == 1536  # 384 channels * 2 * 2
    shapes, hooks = _record_shapes(enc, nn.Conv2d)
    out = enc({"image": torch.zeros(2, 5, 64, 64, 3)})
    assert out.shape == (2, 5, 1536)
    assert [s[1:] for s in shapes] == [(48, 31, 31), (96, 14, 14), (192, 6, 6), (384, 2, 2)]
    assert [m.kernel_size for m in enc.modules() if isinstance(m, nn.Conv2d)] == [(4, 4)] * 4
    assert all(m.stride == (2, 2) and m.padding == (0, 0) for m in enc.modules() if isinstance(m, nn.Conv2d))


def test_decoder_cnn_sizes_1_5_13_30_64():
    dec = Decoder({"image": (64, 64, 1)}, inp=10, cnn_keys="image", mlp_keys="$^")
    shapes, hooks = _record_shapes(dec, nn.ConvTranspose2d)
    out = dec(torch.zeros(3, 4, 10))
    assert set(out) == {"image"}
    assert out["image"].mean.shape == (3, 4, 64, 64, 1)
    # The first transposed conv runs as a matmul on its 1x1 input (see _first_deconv), the last one (one channel,
    # on the CPU) through PyTorch's native kernel (see _last_deconv); the others as the modules.
    assert [s[1:] for s in shapes] == [(96, 13, 13), (48, 30, 30)]
    x = torch.randn(5, 1536)
    first = _first_deconv(dec.cnn[0], x)
    assert first.shape == (5, 192, 5, 5)
    assert torch.allclose(first, dec.cnn[0](x.reshape(5, 1536, 1, 1)), atol=1e-5)
    assert dec.cnn_in.out_features == 1536
    # The last transposed conv is linear; the others are followed by ELU.
    assert not isinstance(dec.cnn[-1], nn.ELU) and isinstance(dec.cnn[-1], nn.ConvTranspose2d)
    assert sum(isinstance(m, nn.ELU) for m in dec.cnn) == 3


def test_decoder_with_one_or_two_kernels_runs_each_layer_once():
    for kernels, size in (((6,), 6), ((5, 6), 14)):  # 1x1 -> 6x6; 1x1 -> 5x5 -> 14x14
        dec = Decoder({"image": (size, size, 1)}, inp=10, cnn_keys="image", mlp_keys="$^", cnn_kernels=kernels)
        assert dec(torch.zeros(2, 3, 10))["image"].mean.shape == (2, 3, size, size, 1)


def test_last_deconv_equals_the_layer_in_float32_and_bf16():
    torch.manual_seed(0)
    for channels in (1, 3):  # one channel takes the native kernel, three the module itself
        layer = nn.ConvTranspose2d(8, channels, 6, 2).to(memory_format=torch.channels_last)
        nn.init.normal_(layer.bias)
        x = torch.randn(4, 8, 30, 30).to(memory_format=torch.channels_last)
        grad = torch.randn(4, channels, 64, 64)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            results = []
            for fn in (layer, lambda x: _last_deconv(layer, x)):
                layer.zero_grad()
                inp = x.detach().to(dtype).requires_grad_(True)
                with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
                    out = fn(inp)
                out.backward(grad.to(out.dtype))
                results.append([out, inp.grad, layer.weight.grad.clone(), layer.bias.grad.clone()])
            assert results[1][0].dtype == results[0][0].dtype == dtype  # bf16 out under autocast, as the layer's
            for ours, ref in zip(results[1], results[0]):
                ours, ref = ours.float(), ref.float()
                torch.testing.assert_close(ours, ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_key_selection_by_rank_and_regex():
    shapes = {"image": (64, 64, 3), "depth": (64, 64, 1), "ram": (128,), "pos": (3,), "reward": ()}
    assert select_keys(shapes, ".*", ".*") == (["image", "depth"], ["ram", "pos"])
    assert select_keys(shapes, "image", "$^") == (["image"], [])
    assert select_keys(shapes, "$^", "p") == ([], ["pos"])  # re.match anchors at the start
    enc = Encoder({"image": (64, 64, 3), "depth": (64, 64, 1), "pos": (3,)}, cnn_depth=4, mlp_layers=(7, 7))
    assert enc.cnn[0].in_channels == 4  # image and depth channels concatenated
    assert enc.embed_size == 32 * 4 + 7


# ----- Parameter counts (reference §3, Atari, 6 actions) -----

def test_official_parameter_counts_atari():
    config = config_lib.resolve(["atari"])
    wm = WorldModel(config, {"image": (64, 64, 1), "ram": (128,)}, 6)
    ac = ActorCritic(config, wm.rssm.feat_size, 6, discrete=True)
    count = lambda module: sum(p.numel() for p in module.parameters())
    assert wm.encoder.cnn_keys == ["image"] and wm.encoder.mlp_keys == []  # ram is excluded
    assert wm.rssm.feat_size == 1624
    expected = {
        "encoder": (count(wm.encoder), 1.55e6),
        "decoder": (count(wm.heads["decoder"]), 10.50e6),
        "rssm": (count(wm.rssm), 5.66e6),
        "reward+discount": (count(wm.heads["reward"]) + count(wm.heads["discount"]), 2.26e6),
        "actor": (count(ac.actor), 1.13e6),
        "critic": (count(ac.critic), 1.13e6),
    }
    for name, (got, want) in expected.items():
        assert abs(got - want) / want < 0.01, (name, got, want)
    total = count(wm) + count(ac.actor) + count(ac.critic)
    assert abs(total - 22.2e6) / 22.2e6 < 0.01


# ----- Keras initialisers -----

def _check_glorot(weight, fan_in, fan_out):
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert weight.abs().max().item() <= bound + 1e-7
    assert weight.abs().max().item() > 0.9 * bound
    if weight.numel() > 2000:
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_glorot_uniform_kernels_and_zero_biases():
    mlp = MLP(30, 4, layers=2, units=50)
    _check_glorot(mlp.trunk[0].weight, 30, 50)
    _check_glorot(mlp.trunk[3].weight, 50, 50)
    _check_glorot(mlp.head.out.weight, 50, 4)
    for layer in mlp.modules():
        if isinstance(layer, nn.Linear):
            assert torch.count_nonzero(layer.bias) == 0
    enc = Encoder({"image": (64, 64, 3)}, cnn_keys="image", mlp_keys="$^", cnn_depth=8)
    conv = enc.cnn[0]
    _check_glorot(conv.weight, 3 * 4 * 4, 8 * 4 * 4)   # Keras conv fans: k*k*in, k*k*out
    assert torch.count_nonzero(conv.bias) == 0
    dec = Decoder({"image": (64, 64, 3)}, inp=20, cnn_keys="image", mlp_keys="$^", cnn_depth=8)
    deconv = dec.cnn[0]                                  # 256 -> 16 channels, kernel 5
    _check_glorot(deconv.weight, 256 * 25, 16 * 25)
    assert torch.count_nonzero(deconv.bias) == 0


def test_rssm_fused_posterior_dense_uses_one_glorot_limit():
    rssm = RSSM(embed_size=300, act_dim=3, hidden=200, deter=100, stoch=4, discrete=4)
    # The official Dense(hidden) over concat([deter, embed]) has fan_in = deter + embed.
    bound = math.sqrt(6 / (100 + 300 + 200))
    for weight in (rssm.obs_deter.weight, rssm.obs_embed.weight):
        assert weight.abs().max().item() <= bound + 1e-7
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(rssm.obs_deter.bias) == 0
    _check_glorot(rssm.img_in[0].weight, 16 + 3, 200)
    _check_glorot(rssm.gru.linear.weight, 200 + 100, 300)
    assert rssm.gru.norm.weight.eq(1).all() and rssm.gru.norm.bias.eq(0).all()
