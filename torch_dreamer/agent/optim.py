"""Adam as the official Optimizer uses it: eps 1e-5 (applied as Keras does), global-norm clipping, decoupled weight decay
w <- (1 - wd) * w on all weights, and dynamic loss scaling under fp16."""

from __future__ import annotations

import math

import torch


class Optimizer:
    def __init__(self, name: str, params, opt="adam", lr=1e-4, eps=1e-5, clip=100.0, wd=0.0, precision=32):
        if opt != "adam":
            raise ValueError(f"{name}_opt.opt must be adam, not '{opt}'")
        self.name, self.clip, self.wd = name, clip, wd
        self.params = [p for p in params if p.requires_grad]
        self.eps = eps
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps)
        self.scaler = torch.amp.GradScaler(enabled=str(precision) == "16")
        self.nonfinite = 0  # consecutive skipped updates, for the run loop to act on

    def __call__(self, loss: torch.Tensor) -> dict:
        """Backpropagates `loss` into this optimizer's parameters only, clips, decays and steps.

        A non-finite gradient norm skips the update (counted in `{name}_nonfinite`).
        """
        self.opt.zero_grad(set_to_none=True)
        # `inputs` keeps gradients out of other modules' .grad (the world model under the actor loss).
        self.scaler.scale(loss).backward(inputs=self.params)
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip if self.clip else float("inf"))
        finite = bool(torch.isfinite(norm))
        if finite and self.wd:
            with torch.no_grad():
                torch._foreach_mul_(self.params, 1.0 - self.wd)
        if finite or self.scaler.is_enabled():
            self._keras_eps()
            self.scaler.step(self.opt)  # GradScaler skips the step itself when it found inf
        self.scaler.update()
        self.nonfinite = 0 if finite else self.nonfinite + 1
        metrics = {f"{self.name}_loss": loss.detach().float(), f"{self.name}_grad_norm": norm.detach().float(),
                   f"{self.name}_nonfinite": torch.tensor(float(not finite))}
        if self.scaler.is_enabled():
            metrics[f"{self.name}_loss_scale"] = torch.tensor(self.scaler.get_scale())
        return metrics

    def _keras_eps(self) -> None:
        """Keras' Adam adds eps to the uncorrected sqrt(v); PyTorch adds it to the corrected one.

        With eps_t = eps / sqrt(1 - beta2^t) the PyTorch update equals the official (Keras) update.
        """
        state = self.opt.state.get(self.params[0])
        step = int(state["step"]) + 1 if state else 1
        beta2 = self.opt.param_groups[0]["betas"][1]
        for group in self.opt.param_groups:
            group["eps"] = self.eps / math.sqrt(1 - beta2 ** step)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
