"""Parity tests for torch_dreamer.agent.world_model: preprocessing, soft discount labels, loss
composition, grad_heads and the imagination discount/weight alignment (reference §3, §4 Imagination)."""

import math

import pytest
import torch
from torch import nn

from torch_dreamer.agent import dists
from torch_dreamer.agent.world_model import WorldModel

LOG_2PI = math.log(2 * math.pi)


def _sig(v):
    return 1 / (1 + math.exp(-v))


class ConstHead(nn.Module):
    """A head whose distribution ignores the features: logits/means from a per-time table."""

    def __init__(self, kind, table):
        super().__init__()
        self.kind, self.table = kind, torch.tensor(table)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, feat):
        lead = feat.shape[:-1]
        values = self.table.reshape((-1,) + (1,) * (len(lead) - 1)).expand(lead) if self.table.dim() else self.table.expand(lead)
        values = values + 0 * self.dummy + 0 * feat.sum(-1)
        return dists.BinaryDist(values, 0) if self.kind == "binary" else dists.MSEDist(values, 0)


class NoDecoder(nn.Module):
    def forward(self, feat):
        return {}


def _model(tiny, space, *flags, image=(64, 64, 3), vector=None, act_dim=3):
    shapes = {k: s for k, (s, _) in space(image, vector).items()}
    return WorldModel(tiny(*flags), shapes, act_dim)


def test_preprocess_images_rewards_and_soft_discount(tiny, space):
    wm = _model(tiny, space)
    data = {
        "image": torch.tensor([0, 51, 255], dtype=torch.uint8),
        "vector": torch.tensor([1.5, -2.0]),
        "reward": torch.tensor([0.5, -2.0, 0.0]),
        "is_terminal": torch.tensor([False, True, False]),
        "log_extra": torch.tensor([7.0]),
    }
    out = wm.preprocess(data)
    assert out["image"].tolist() == pytest.approx([-0.5, 51 / 255 - 0.5, 0.5])
    assert out["image"].tolist() == pytest.approx([-0.5, -0.3, 0.5], abs=1e-6)
    assert out["vector"].tolist() == [1.5, -2.0]                       # floats are left alone
    assert out["reward"].tolist() == pytest.approx([math.tanh(0.5), math.tanh(-2.0), 0.0])  # clip_rewards tanh
    assert out["discount"].tolist() == pytest.approx([0.99, 0.0, 0.99])  # gamma * (1 - is_terminal)
    assert "log_extra" not in out
    assert data["image"].dtype == torch.uint8                            # the input is not modified
    atari = _model(tiny, space, "--discount", "0.999", "--clip_rewards", "sign")
    out = atari.preprocess(data)
    assert out["discount"].tolist() == pytest.approx([0.999, 0.0, 0.999])
    assert out["reward"].tolist() == [1.0, -1.0, 0.0]
    ident = _model(tiny, space, "--clip_rewards", "identity").preprocess(data)
    assert ident["reward"].tolist() == [0.5, -2.0, 0.0]


def test_discount_and_reward_losses_on_soft_labels(tiny, space, batch):
    wm = _model(tiny, space, "--loss_scales.kl", "0.1", "--loss_scales.discount", "5.0")
    wm.heads["discount"] = ConstHead("binary", 0.7)
    wm.heads["reward"] = ConstHead("mse", 0.25)
    data = batch(T=4, B=2)  # one terminal step (t=3, b=0): 7 labels 0.99 and one label 0
    torch.manual_seed(0)
    loss, post, metrics, kl_value = wm.loss(data)
    y_log = 0.99 * math.log(_sig(0.7)) + 0.01 * math.log(1 - _sig(0.7))
    zero_log = math.log(1 - _sig(0.7))
    assert metrics["discount_loss"].item() == pytest.approx(-(7 * y_log + zero_log) / 8, abs=1e-5)
    rewards = [math.tanh(r) for r in data["reward"].flatten().tolist()]
    expected_reward = sum(0.5 * (r - 0.25) ** 2 + 0.5 * LOG_2PI for r in rewards) / 8
    assert metrics["reward_loss"].item() == pytest.approx(expected_reward, abs=1e-5)
    # model_loss = 0.1 KL + image + reward + 5 discount (Atari scales).
    total = (0.1 * metrics["kl_loss"] + metrics["image_loss"] + metrics["reward_loss"]
             + 5.0 * metrics["discount_loss"])
    assert loss.item() == pytest.approx(total.item(), rel=1e-6)
    assert metrics["model_kl"].item() == pytest.approx(kl_value.mean().item())
    assert kl_value.shape == (4, 2)
    assert post["deter"].shape == (4, 2, 16) and post["stoch"].shape == (4, 2, 4, 4)
    # The image loss is the per-pixel sum over 64x64x3, so it is above its 12288 * 0.919 floor.
    assert metrics["image_loss"].item() > 64 * 64 * 3 * 0.5 * LOG_2PI


def test_kl_loss_uses_balance_and_free_from_config(tiny, space, batch):
    wm = _model(tiny, space, "--kl.free", "1e3")
    torch.manual_seed(0)
    _, _, metrics, _ = wm.loss(batch())
    assert metrics["kl_loss"].item() == pytest.approx(1000.0)  # clipped at the free nats


def test_grad_heads_stop_gradient(tiny, space, batch):
    data = batch(T=3, B=2)
    grads = {}
    for heads in ("decoder,discount", "decoder,reward,discount"):
        wm = _model(tiny, space, "--grad_heads", heads, "--loss_scales.kl", "0", "--loss_scales.discount", "0")
        wm.heads["decoder"] = NoDecoder()
        torch.manual_seed(0)
        loss, *_ = wm.loss(data)
        loss.backward()
        enc = [p.grad for p in wm.encoder.parameters()]
        rssm = [p.grad for p in wm.rssm.parameters()]
        grads[heads] = (sum(0 if g is None else g.abs().sum().item() for g in enc + rssm),
                        sum(p.grad.abs().sum().item() for p in wm.heads["reward"].parameters()))
    # Only the reward term is left; it trains the representation only when reward is a grad head.
    assert grads["decoder,discount"][0] == 0.0
    assert grads["decoder,reward,discount"][0] > 0.0
    assert grads["decoder,discount"][1] > 0.0 and grads["decoder,reward,discount"][1] > 0.0


def _start(wm, B=2, seed=0):
    torch.manual_seed(seed)
    state = wm.rssm.initial(B)
    state = {k: torch.randn_like(v)[None] for k, v in state.items()}  # (T=1, B, ...)
    return state


def _policy(act_dim=3):
    return lambda feat: dists.OneHotDist(logits=torch.zeros(feat.shape[:-1] + (act_dim,)))


def test_imagine_discount_and_weight_cumprod(tiny, space):
    wm = _model(tiny, space)  # discount 0.99
    # Head discounts per imagined step: 0.5 at the start (replaced), then 0.9, 0.8, 0.7.
    logit = lambda d: math.log(d / (1 - d))
    wm.heads["discount"] = ConstHead("binary", [logit(0.5), logit(0.9), logit(0.8), logit(0.7)])
    start = _start(wm)
    is_terminal = torch.tensor([[False, True]])
    seq = wm.imagine(_policy(), start, is_terminal, horizon=3)
    assert seq["feat"].shape == (4, 2, wm.rssm.feat_size)
    # disc[0] = gamma * (1 - is_terminal) from the data; the rest from the head's mean.
    expected_disc = [[0.99, 0.0], [0.9, 0.9], [0.8, 0.8], [0.7, 0.7]]
    assert seq["discount"].tolist() == [pytest.approx(row, abs=1e-6) for row in expected_disc]
    # weight = cumprod([1, d0, d1, d2]).
    expected_weight = [[1.0, 1.0], [0.99, 0.0], [0.99 * 0.9, 0.0], [0.99 * 0.9 * 0.8, 0.0]]
    assert seq["weight"].tolist() == [pytest.approx(row, abs=1e-6) for row in expected_weight]
    # Without data the head's first discount stays.
    seq = wm.imagine(_policy(), start, None, horizon=3)
    assert seq["discount"][0].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert seq["weight"][:, 0].tolist() == pytest.approx([1.0, 0.5, 0.45, 0.36], abs=1e-6)


def test_imagine_alignment_of_states_and_actions(tiny, space):
    wm = _model(tiny, space)
    start = _start(wm)
    torch.manual_seed(5)
    seq = wm.imagine(_policy(), start, None, horizon=3)
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in start.items()}
    assert torch.allclose(seq["feat"][0], wm.rssm.feat(flat))         # the start state is step 0
    assert seq["action"][0].abs().sum() == 0                             # action_0 = 0
    assert torch.allclose(seq["action"][1:].sum(-1), torch.ones(3, 2))  # then policy samples
    # Step t+1 is img_step(state_t, action_{t+1}).
    state_1 = {k: v[1] for k, v in seq.items() if k in ("deter", "stoch", "logit")}
    again = wm.rssm.img_step(flat, seq["action"][1], sample=False)
    assert torch.allclose(again["deter"], state_1["deter"], atol=1e-6)


def test_imagine_without_discount_head_uses_gamma(tiny, space):
    wm = _model(tiny, space, "--pred_discount", "False", "--grad_heads", "decoder,reward", "--discount", "0.9")
    assert "discount" not in wm.heads
    seq = wm.imagine(_policy(), _start(wm), torch.tensor([[False, True]]), horizon=3)
    assert seq["discount"].tolist() == [pytest.approx([0.9, 0.9])] * 4
    assert seq["weight"][:, 1].tolist() == pytest.approx([1.0, 0.9, 0.81, 0.729], abs=1e-6)


def test_video_pred_layout(tiny, space, batch):
    wm = _model(tiny, space)
    video = wm.video_pred(batch(T=4, B=2), "image", observed=2, sequences=6)
    assert video.shape == (4, 3 * 64, 2 * 64, 3) and video.dtype.name == "uint8"
