"""Adam as the official Optimizer uses it: eps 1e-5 (applied as Keras does), global-norm clipping, decoupled weight decay
w <- (1 - wd) * w on all weights, and dynamic loss scaling under fp16.

The step never waits for the device: whether the gradient norm is finite is a device tensor that gates the decay,
the moments, the step count and the update (a skipped update leaves all of them as they were), and the count of
consecutive skips is a device tensor read only when someone asks (`nonfinite`). The moments live in a
`torch.optim.Adam`'s state, in its format, so checkpoints load either way; this module does the arithmetic.
"""

from __future__ import annotations

import math

import torch

from torch_dreamer.agent import grad_sync


class Optimizer:
    def __init__(self, name: str, params, opt="adam", lr=1e-4, eps=1e-5, clip=100.0, wd=0.0, precision=32):
        if opt != "adam":
            raise ValueError(f"{name}_opt.opt must be adam, not '{opt}'")
        self.name, self.clip, self.wd = name, clip, wd
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.eps = lr, eps
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps)  # holds the moments and steps (checkpoint format)
        self.scaler = torch.amp.GradScaler(enabled=str(precision) == "16")
        self.grad_sync = grad_sync.for_params(self.params)  # data-parallel learners: averages grads across ranks (issue 13)
        self._streak = None  # consecutive skipped updates, a device tensor (see `nonfinite`)
        self._buffers: dict = {}  # parameter -> scratch of its shape (see `_scratch`)

    @property
    def nonfinite(self) -> int:
        """Consecutive skipped updates, for the run loop to act on; reading it waits for the device."""
        return 0 if self._streak is None else int(self._streak)

    def __call__(self, loss: torch.Tensor) -> dict:
        """Backpropagates `loss` into this optimizer's parameters only, clips, decays and steps.

        A non-finite gradient norm skips the update (counted in `{name}_nonfinite`).
        """
        self.opt.zero_grad(set_to_none=True)
        # `inputs` keeps gradients out of other modules' .grad (the world model under the actor loss).
        self.scaler.scale(loss).backward(inputs=self.params)
        self.grad_sync()  # averaged before unscaling, so fp16's inf check sees the same grads on every rank
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip if self.clip else float("inf"))
        finite = torch.isfinite(norm)
        self._step(finite)
        self.scaler.update()  # reads the inf check unscale_ recorded: a skipped fp16 step lowers the scale
        skipped = (~finite).float()
        if self._streak is None:
            self._streak = torch.zeros((), device=norm.device)
        self._streak.add_(1).mul_(skipped)  # in place: a captured update (--compile graph) replays into it
        metrics = {f"{self.name}_loss": loss.detach().float(), f"{self.name}_grad_norm": norm.detach().float(),
                   f"{self.name}_nonfinite": skipped}
        if self.scaler.is_enabled():
            metrics[f"{self.name}_loss_scale"] = self.scaler._get_scale_async().detach().clone()  # no sync
        return metrics

    @torch.no_grad()
    def _step(self, finite: torch.Tensor) -> None:
        """Decay, then Adam as Keras computes it, all gated by `finite` (a device bool).

        Keras adds eps to the uncorrected sqrt(v): w -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps),
        which is PyTorch's Adam with eps_t = eps / sqrt(1 - beta2^t). Parameters without a gradient keep their
        moments and step count, as in torch's Adam; the decay reaches every parameter, as the official.
        """
        if self.wd:
            torch._foreach_mul_(self.params, torch.where(finite, 1.0 - self.wd, 1.0))
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        beta1, beta2 = self.opt.param_groups[0]["betas"]
        steps, exp_avgs, exp_avg_sqs = self._state(params)
        gate = finite.float()
        # A skipped update may carry inf/nan gradients: zero them (in place) so the gated arithmetic stays finite.
        skipped = ~finite
        grads = [p.grad.masked_fill_(skipped, 0.0) for p in params]
        # A 0-dim tensor passed where torch's foreach add_/lerp_ also take a Python number binds to the number
        # overload through .item(), a host sync: the step counts take the gate as a list, and the first moment
        # m += (1 - b1) gate (g - m) goes through the scratch buffer with mul_'s tensor overload.
        torch._foreach_add_(steps, [gate] * len(steps))
        scratch = self._scratch(params)
        torch._foreach_copy_(scratch, grads)
        torch._foreach_sub_(scratch, exp_avgs)
        torch._foreach_mul_(scratch, (1 - beta1) * gate)
        torch._foreach_add_(exp_avgs, scratch)
        # v = b2 v + (1 - b2) g^2, with b2 -> 1 (and g = 0) when skipped
        torch._foreach_mul_(exp_avg_sqs, torch.where(finite, beta2, 1.0))
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        # alpha = lr * sqrt(1 - b2^t) / (1 - b1^t), times the gate; t >= 1 keeps a never-stepped count finite.
        # 1 - b^t as -expm1(t log b): in float32, 1 - pow(b, t) would cancel to a few digits for b2 = 0.999.
        counts = torch._foreach_maximum(steps, 1.0)
        correction1 = torch._foreach_mul(counts, math.log(beta1))
        torch._foreach_expm1_(correction1)                                      # -(1 - b1^t)
        correction2 = torch._foreach_mul(counts, math.log(beta2))
        torch._foreach_expm1_(correction2)
        torch._foreach_neg_(correction2)
        torch._foreach_sqrt_(correction2)                                       # sqrt(1 - b2^t)
        torch._foreach_div_(correction2, correction1)
        torch._foreach_mul_(correction2, -self.lr * gate)                       # alpha, 0 when skipped
        # p -= alpha m / (sqrt(v) + eps), as p + m / ((sqrt(v) + eps) / -alpha): in place in a kept buffer, since
        # fresh model-sized tensors cost more than the arithmetic on the CPU. Skipped: m / inf adds 0 exactly.
        denom = scratch
        torch._foreach_copy_(denom, exp_avg_sqs)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_div_(denom, torch._foreach_neg(correction2))
        torch._foreach_addcdiv_(params, exp_avgs, denom)

    def _scratch(self, params: list) -> list:
        """One buffer per parameter for the update's denominator, kept between steps (not saved)."""
        for p in params:
            if p not in self._buffers or self._buffers[p].device != p.device:
                self._buffers[p] = torch.empty_like(p)
        return [self._buffers[p] for p in params]

    def _state(self, params: list) -> tuple[list, list, list]:
        """Adam's step counts and moments of `params`, created (zero) on the parameters' device when missing."""
        state = self.opt.state
        for p in params:
            if not state[p]:
                state[p].update(step=torch.zeros((), device=p.device), exp_avg=torch.zeros_like(p),
                                exp_avg_sq=torch.zeros_like(p))
            elif state[p]["step"].device != p.device:  # torch keeps loaded step counts on the CPU
                state[p]["step"] = state[p]["step"].to(p.device, torch.float32)
        return ([state[p]["step"] for p in params], [state[p]["exp_avg"] for p in params],
                [state[p]["exp_avg_sq"] for p in params])

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
