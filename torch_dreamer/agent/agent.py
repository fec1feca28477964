"""The DreamerV2 agent: a world model, a task actor-critic and an optional exploration behaviour."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from torch_dreamer.agent import compile as compile_lib
from torch_dreamer.agent import dists
from torch_dreamer.agent.behavior import ActorCritic
from torch_dreamer.agent.graph import Captured
from torch_dreamer.agent.optim import Optimizer
from torch_dreamer.agent.world_model import WorldModel
from torch_dreamer.errors import UserError

PRECISIONS = {"32": None, "16": torch.float16, "bf16": torch.bfloat16}


class Agent(nn.Module):
    """obs_space: {key: (shape, dtype)} of one environment step; act_dim: actions (one-hot size if discrete)."""

    def __init__(self, config, obs_space: dict, act_dim: int, discrete: bool):
        super().__init__()
        if str(config.precision) not in PRECISIONS:
            raise ValueError(f"precision must be 32, 16 or bf16, not '{config.precision}'")
        self.config, self.act_dim, self.discrete = config, act_dim, discrete
        self.obs_space = {k: (tuple(shape), str(np.dtype(dtype))) for k, (shape, dtype) in obs_space.items()}
        self.wm = WorldModel(config, {k: s for k, (s, _) in self.obs_space.items()}, act_dim)
        self.model_opt = Optimizer("model", self.wm.model_parameters(), **config.model_opt, precision=config.precision)
        self.task_behavior = ActorCritic(config, self.wm.rssm.feat_size, act_dim, discrete)
        self.expl_behavior = self._make_expl_behavior()
        self.step = 0  # environment steps, for schedules; set by the run loop
        self._compiled = None  # what `--compile` compiled, decided at the first call (when the device is known)
        self.compile_clock = compile_lib.CompileClock()  # seconds spent compiling, for the logs
        self._captured = None  # `--compile graph`: the update and the policy step as CUDA-graph replays

    def _make_expl_behavior(self):
        from torch_dreamer.agent import expl  # exploration lives in its own module

        if self.config.eval_policy not in ("task", "explore"):
            raise UserError(f"eval_policy must be task or explore, not '{self.config.eval_policy}'")
        name = expl.canonical_name(self.config.expl_behavior)  # any case, official class names too
        if name == "greedy":
            return None
        return expl.make(name, self)

    def _compile(self) -> list:
        """Compiles what `--compile` (or `--jit True`) asks for on this device; [] when running eagerly or when
        the update is captured in a CUDA graph (`graph`, `self._captured`)."""
        mode = compile_lib.resolve(self.config, self.device.type, conv=bool(self.wm.encoder.cnn_keys))
        if mode == "graph":
            compile_lib.check_single_process(self.config)
            self._captured = Captured(self._train_step, self.device), Captured(self._policy, self.device)
        if mode in ("none", "graph"):
            return []
        return compile_lib.compile_steps([(self.wm.rssm, "obs_cell"), (self.wm, "imagine_step")], self.compile_clock)

    def _run(self, fn, *args):
        """Calls fn, compiling first what `--compile` asks for; a compiled function that fails to compile runs
        eagerly from then on (`compile.compile_steps`)."""
        if self._compiled is None:
            self._compiled = self._compile()
        return fn(*args)

    @property
    def device(self):
        return next(self.parameters()).device

    def autocast(self):
        dtype = PRECISIONS[str(self.config.precision)]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # ----- acting -----

    def policy(self, obs: dict, state=None, mode: str = "train"):
        """One action per environment. obs: {key: (B, ...)} tensors incl. is_first (B,).

        state: (latent, previous action) or None. Returns (action (B, A) float, new state): one-hot rows
        for discrete actions, values in [-1, 1] otherwise. To act in a raw env (raw observations in, env
        actions out, state kept for you) use `torch_dreamer.api.EnvPolicy(agent, env)`.
        """
        if not isinstance(obs, dict) or "is_first" not in obs:
            raise UserError("agent.policy takes batched observations in the agent's keys plus 'is_first' (B,); "
                            "for raw env observations use torch_dreamer.api.EnvPolicy(agent, env)")
        # Only what the encoder reads reaches the device (Crafter alone carries 23 `log_*` keys).
        obs = {k: obs[k] for k in self._policy_keys()}
        return self._run(self._act, obs, state, mode)

    def _act(self, obs: dict, state, mode: str):
        return (self._captured[1] if self._captured else self._policy)(obs, state, mode)

    @torch.no_grad()
    def _policy(self, obs: dict, state, mode: str):
        obs = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        batch = obs["is_first"].shape[0]
        if state is None:
            state = (self.wm.rssm.initial(batch, self.device), torch.zeros(batch, self.act_dim, device=self.device))
        latent, action = state
        with self.autocast():
            embed = self.wm.encoder(self.wm.preprocess(obs))
            sample = mode == "train" or not self.config.eval_state_mean
            keep = 1.0 - obs["is_first"].float()  # the posterior alone: the policy needs no prior sample
            latent = self.wm.rssm.obs_cell(latent, action, self.wm.rssm.obs_embed(embed), keep, sample)
            feat = self.wm.rssm.feat(latent)
            if mode == "eval":
                actor = self._eval_actor()
                action, noise = dists.mode(actor(feat)), self.config.eval_noise
            elif mode == "explore":
                actor = (self.expl_behavior or self.task_behavior).actor
                action, noise = actor(feat).sample(), self.config.expl_noise
            elif mode == "train":
                action, noise = self.task_behavior.actor(feat).sample(), self.config.expl_noise
            else:
                raise ValueError(f"policy mode must be train, eval or explore, not '{mode}'")
        action = self._action_noise(action.float(), noise)
        if self.discrete:  # drop the straight-through round-off (onehot + p - p) from acted actions
            action = dists.onehot_like(action.argmax(-1), action)  # F.one_hot would check the range with a host sync
        return action, (latent, action)

    def _policy_keys(self) -> list:
        encoder = self.wm.encoder
        return [*encoder.cnn_keys, *encoder.mlp_keys, "is_first"]

    def _eval_actor(self):
        if self.config.eval_policy == "explore" and self.expl_behavior is not None:
            return self.expl_behavior.actor
        return self.task_behavior.actor

    def _action_noise(self, action: torch.Tensor, amount: float) -> torch.Tensor:
        if amount == 0:
            return action
        if self.discrete:
            probs = amount / action.shape[-1] + (1 - amount) * action
            return dists.OneHotDist(probs=probs).sample()
        return torch.clamp(torch.distributions.Normal(action, amount, validate_args=False).sample(), -1, 1)

    # ----- learning -----

    def train_step(self, data: dict, state: dict | None = None, sequence_scores: bool = False) -> tuple[dict, dict]:
        """One world-model update, then one actor-critic update (the official ``Agent.train(data, state)``).

        data: {key: (T, B, ...)} on the device. state: None to start every sequence from the initial
        latent (as with ``ChunkSampler``), or the state this method returned for the previous batch of
        the same slots (``SequentialSampler``, truncated BPTT); rows with ``is_first`` True reset it.
        Returns (state, metrics): state is the last posterior {key: (B, ...)}, detached; metrics are scalars,
        except with `sequence_scores`: then `metrics["sequence_kl"]` (B,) is each sequence's mean KL between
        posterior and prior (the model's surprise), which uncertainty sampling uses as replay priority.
        """
        return self._run(self._update, data, state, sequence_scores)

    def _update(self, data: dict, state: dict | None, sequence_scores: bool):
        return (self._captured[0] if self._captured else self._train_step)(data, state, sequence_scores)

    def _train_step(self, data: dict, state: dict | None, sequence_scores: bool = False) -> tuple[dict, dict]:
        self.task_behavior.step = self.step
        with self.autocast():
            model_loss, metrics, outputs = self.wm.loss_outputs(data, state)
        post = outputs["post"]
        metrics.update(self.model_opt(model_loss))
        metrics.update(self.wm.train_probes(post, data, self.autocast))  # stop-gradient probes, own optimizer
        reward_fn = lambda seq: dists.mode(self.wm.heads["reward"](seq["feat"]))
        metrics.update(self.task_behavior.train_step(self.wm, post, data["is_terminal"], reward_fn, self.autocast))
        if self.expl_behavior is not None:
            metrics.update(self.expl_behavior.train_step(post, outputs, data))
        if sequence_scores:
            metrics["sequence_kl"] = outputs["kl"].detach().float().mean(0)  # (B,)
        last = {key: value[-1].detach().clone() for key, value in post.items()}  # not a view of (T, B, ...)
        return last, metrics

    @torch.no_grad()
    def report(self, data: dict) -> dict:
        videos = {}
        for key in self.config.log_keys_video:
            if key in self.wm.heads["decoder"].cnn_keys:
                videos[f"openl_{key}"] = self.wm.video_pred(data, key)
        videos.update(self.wm.probe_report(data))  # probe images (the map probe), {} without probes
        return videos

    # ----- checkpoints -----

    def optimizers(self) -> dict:
        opts = {"model": self.model_opt, "actor": self.task_behavior.actor_opt, "critic": self.task_behavior.critic_opt}
        opts.update(self.wm.optimizers())  # the probes' optimizer, when probes train on stop-gradient features
        if self.expl_behavior is not None:
            opts.update(self.expl_behavior.optimizers())
        return opts

    def optimizer_state(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers().items()}

    def load_optimizer_state(self, state: dict) -> None:
        for name, opt in self.optimizers().items():
            if name in state:
                opt.load_state_dict(state[name])

    def nonfinite_updates(self) -> int:
        """Consecutive skipped updates of the world model (the run loop stops after many)."""
        return self.model_opt.nonfinite
