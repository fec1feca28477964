"""World-model analysis: encode episodes into latent states, save and reload them, imagine ("dream") from them
with the episode's actions or a policy, decode states back into frames, rewards and discounts, change chosen
latents and see what the decoder makes of it; `dreamer dream` renders dreams beside the real continuation.

    from torch_dreamer import analysis

    model = analysis.load("~/logdir/minigrid")                  # the latest checkpoint, in eval mode
    episode = analysis.load_episode(model.episodes("eval")[-1])  # {key: (T + 1, ...)} arrays
    states = model.encode(episode)                               # posterior states {deter, stoch, logit}: (T + 1, ...)
    analysis.save_states("states.npz", states)
    start = analysis.index(states, slice(10, 11))                # one start state, leading (1, ...)
    dream = model.imagine(start, actions=episode["action"][11:31], samples=4)   # (21, 4, ...)
    frames = model.decode(dream)                                 # image uint8 (21, 4, H, W, C), reward, discount
    changed = model.perturb(states, latent_index=3, value=7)     # categorical latent 3 set to class 7
    diff = model.decode(changed)["image"].astype(int) - model.decode(states)["image"]

States are dicts of numpy arrays with any leading shape; `imagine` starts from every state of a (N, ...) batch.
The same model is the `torch_dreamer.runs.evaluate.load_agent` agent, as `model.agent` (and `model.wm`).
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from torch_dreamer.agent import dists
from torch_dreamer.errors import UserError

Array = np.ndarray


def load(logdir, device: str = "cpu") -> "DreamModel":
    """The world model and behaviours of the latest checkpoint in `logdir`."""
    from torch_dreamer.runs.evaluate import load_agent

    return DreamModel(load_agent(logdir, device), pathlib.Path(logdir).expanduser())


def load_episode(path) -> dict:
    """One episode file (ours or the official format) as {key: (T + 1, ...)} arrays."""
    from torch_dreamer.data import load_episode as load

    return load(path)


def save_states(path, states: dict) -> pathlib.Path:
    """Writes states (as from `encode` / `imagine`) to a compressed .npz."""
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in states.items()})
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_states(path) -> dict:
    with np.load(pathlib.Path(path).expanduser(), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def index(states: dict, item) -> dict:
    """`states` indexed along their leading axis (an int, slice or index array) for every key."""
    return {key: np.asarray(value)[item] for key, value in states.items()}


class DreamModel:
    """A trained agent's world model for analysis; every method takes and returns numpy arrays."""

    def __init__(self, agent, logdir: pathlib.Path | None = None):
        self.agent, self.wm, self.config, self.logdir = agent, agent.wm, agent.config, logdir
        self.rssm = self.wm.rssm

    @property
    def device(self):
        return self.agent.device

    def episodes(self, mode: str = "eval") -> list:
        """Episode files of the run, oldest first: `eval` or `train`."""
        from torch_dreamer.data import list_episodes

        folder = self.logdir / f"{mode}_episodes"
        return sorted(list_episodes(folder)) if folder.exists() else []

    # ----- conversion -----

    def _tensors(self, states: dict) -> dict:
        return {k: torch.as_tensor(np.asarray(v), device=self.device).float() for k, v in states.items()
                if k in self.rssm.initial(1)}

    @staticmethod
    def _arrays(states: dict) -> dict:
        return {k: v.detach().float().cpu().numpy() for k, v in states.items()}

    # ----- the four operations -----

    @torch.no_grad()
    def encode(self, episode: dict, sample: bool = False) -> dict:
        """Posterior states of every step of `episode` ({key: (T + 1, ...)}): {key: (T + 1, ...)}.

        `sample=False` takes each latent's most likely class (deterministic); True samples as in training.
        """
        needed = list(self.wm.encoder.cnn_keys) + list(self.wm.encoder.mlp_keys) + ["action"]  # not probe targets
        missing = [k for k in needed if k not in episode]
        if missing:
            raise UserError(f"the episode lacks {', '.join(missing)}, which the model reads")
        keys = needed + (["is_first"] if "is_first" in episode else [])
        data = {k: torch.as_tensor(np.asarray(episode[k]), device=self.device)[:, None] for k in keys}
        if "is_first" not in episode:
            data["is_first"] = torch.zeros(len(data["action"]), 1, dtype=torch.bool, device=self.device)
            data["is_first"][0] = True
        data["action"] = data["action"].float()
        data = self.wm.preprocess(data)
        post, _ = self.rssm.observe(self.wm.encoder(data), data["action"], data["is_first"], sample=sample)
        return self._arrays({k: v[:, 0] for k, v in post.items()})

    @torch.no_grad()
    def imagine(self, states: dict, actions=None, policy: str | None = None, horizon: int | None = None,
                samples: int = 1) -> dict:
        """Rolls the prior forward from every state of `states` (leading (N, ...)).

        actions: (H, A) for every start, or (H, N, A): the actions taken after the start state (an episode's
        `action[t + 1 : t + 1 + H]` follow state t). Without actions, `policy` 'task' (default) or 'explore'
        picks them (sampled) from the imagined states, for `horizon` steps (default `imag_horizon`).
        samples: rollouts per start (each draws its own latents), start n's at n * samples ... n * samples + samples - 1.
        Returns states with leading (H + 1, N * samples); step 0 is the start state; `action` (zeros at step 0).
        """
        start = self._tensors(states)
        count = start["deter"].shape[0]
        start = {k: v.repeat_interleave(samples, 0) for k, v in start.items()}
        if actions is not None:
            if policy is not None:
                raise UserError("give either actions or a policy to imagine with, not both")
            actions = torch.as_tensor(np.asarray(actions), device=self.device).float()
            if actions.dim() == 2:
                actions = actions[:, None].expand(-1, count, -1)
            if actions.shape[1] != count:
                raise UserError(f"actions of shape {tuple(actions.shape)} do not match {count} start states")
            actions = actions.repeat_interleave(samples, 1)
            horizon = len(actions) if horizon is None else min(int(horizon), len(actions))
        else:
            actor = self._actor(policy or "task")
            horizon = int(self.config.imag_horizon if horizon is None else horizon)
        state, steps, taken = start, [start], []
        for t in range(horizon):
            if actions is not None:
                action = actions[t]
            else:
                action = actor(self.rssm.feat(state)).sample().float()
                if self.agent.discrete:
                    action = torch.nn.functional.one_hot(action.argmax(-1), self.agent.act_dim).float()
            state = self.rssm.img_step(state, action)
            steps.append(state)
            taken.append(action)
        out = {k: torch.stack([s[k] for s in steps]) for k in start}
        first = torch.zeros((1,) + tuple(out["deter"].shape[1:-1]) + (self.agent.act_dim,), device=self.device)
        out["action"] = torch.cat([first] + [a[None] for a in taken], 0)
        return self._arrays(out)

    def _actor(self, policy: str):
        if policy == "task":
            return self.agent.task_behavior.actor
        if policy == "explore":
            if self.agent.expl_behavior is None:
                raise UserError("this run has no exploration policy (expl_behavior greedy); use policy='task'")
            return self.agent.expl_behavior.actor
        raise UserError(f"policy must be task or explore, not '{policy}'")

    @torch.no_grad()
    def decode(self, states: dict, chunk: int = 256) -> dict:
        """What the heads predict from states of any leading shape: decoded observations (images uint8
        (..., H, W, C), vectors float), `reward` (the reward head's mode, in the clip_rewards space) and
        `discount` (the discount head's mean: discount * P(not terminal); absent without pred_discount)."""
        tensors = self._tensors(states)
        lead = tensors["deter"].shape[:-1]
        flat = {k: v.reshape((-1,) + v.shape[len(lead):]) for k, v in tensors.items()}
        parts: dict[str, list] = {}
        total = flat["deter"].shape[0]
        for begin in range(0, total, chunk):
            feat = self.rssm.feat({k: v[begin:begin + chunk] for k, v in flat.items()})
            for key, dist in self.wm.heads["decoder"](feat).items():
                value = dist.mode
                if key in self.wm.heads["decoder"].cnn_keys:
                    value = ((value + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
                parts.setdefault(key, []).append(value)
            parts.setdefault("reward", []).append(dists.mode(self.wm.heads["reward"](feat)))
            if "discount" in self.wm.heads:
                parts.setdefault("discount", []).append(dists.mean(self.wm.heads["discount"](feat)))
        return {k: torch.cat(v).reshape(tuple(lead) + v[0].shape[1:]).cpu().numpy() for k, v in parts.items()}

    def perturb(self, states: dict, latent_index, value) -> dict:
        """A copy of `states` with chosen latents set: for categorical latents, variable(s) `latent_index`
        become class `value` (one-hot); for Gaussian latents, dimension(s) `latent_index` become `value`.
        Only `stoch` (what the decoder and the dynamics read) changes; `deter` and the statistics stay."""
        out = {k: np.array(v, copy=True) for k, v in states.items()}
        stoch = out["stoch"]
        indices = np.atleast_1d(latent_index)
        if self.rssm.discrete:
            values = np.broadcast_to(np.asarray(value), indices.shape)
            if indices.max() >= stoch.shape[-2] or np.max(values) >= stoch.shape[-1]:
                raise UserError(f"latent_index < {stoch.shape[-2]} and value < {stoch.shape[-1]} for these latents")
            for i, v in zip(indices, values):
                stoch[..., i, :] = 0.0
                stoch[..., i, int(v)] = 1.0
        else:
            stoch[..., indices] = value
        return out


# ----------------------------------------------------------------------------- dream videos


def dream(model: DreamModel, episode: dict | None = None, states: dict | None = None, start: int = 0,
          horizon: int = 50, samples: int = 4, policy: str | None = None, key: str = "image") -> dict:
    """Dreams from state `start` (of `states`, else of `encode(episode)`), with the episode's own actions
    (unless `policy` or no episode), against the real continuation.

    Returns {"dreams": uint8 (H + 1, samples, h, w, c), "real": uint8 (H + 1, h, w, c) or None,
    "reward": (H + 1, samples), "states": the imagined states}.
    """
    if states is None:
        if episode is None:
            raise UserError("dream needs an episode or saved states")
        states = model.encode(episode)
    length = len(states["deter"])
    if not 0 <= start < length:
        raise UserError(f"--start {start} is outside the {length} states")
    first = index(states, slice(start, start + 1))
    if episode is not None and policy is None:
        actions = np.asarray(episode["action"])[start + 1:start + 1 + horizon]
        if not len(actions):
            raise UserError(f"the episode ends at step {len(episode['action']) - 1}; choose an earlier --start")
        imagined = model.imagine(first, actions=actions, samples=samples)
    else:
        imagined = model.imagine(first, policy=policy or "task", horizon=horizon, samples=samples)
    decoded = model.decode(imagined)
    if key not in decoded:
        raise UserError(f"the decoder does not reconstruct '{key}' (it makes {', '.join(sorted(decoded))})")
    real = None
    if episode is not None and key in episode:
        real = np.asarray(episode[key])[start:start + len(decoded[key])]
    return {"dreams": decoded[key], "real": real, "reward": decoded["reward"], "states": imagined}


def render_dream(dreams: Array, real: Array | None = None, scale: int = 1) -> Array:
    """Frames of a dream video: a labelled top row `real | dream 1 .. S`, and below it each dream's absolute
    error against the real frame (black = exact; blank once the real episode has ended).

    dreams: uint8 (T, S, h, w, c); real: uint8 (<= T, h, w, c) or None. Returns uint8 (T, H, W, 3).
    """
    from PIL import Image, ImageDraw

    frames, count, height, width, _ = dreams.shape
    dreams = _rgb(dreams)
    if scale > 1:
        dreams = dreams.repeat(scale, 2).repeat(scale, 3)
        height, width = height * scale, width * scale
    real_rgb = None
    if real is not None:
        real_rgb = _rgb(np.asarray(real))
        real_rgb = real_rgb.repeat(scale, 1).repeat(scale, 2) if scale > 1 else real_rgb
    gap, label = 2, 12
    columns = count + (real_rgb is not None)
    rows = 2 if real_rgb is not None else 1
    canvas = np.full((frames, label + rows * (height + gap), columns * (width + gap) - gap, 3), 40, np.uint8)
    for t in range(frames):
        col = 0
        has_real = real_rgb is not None and t < len(real_rgb)
        if real_rgb is not None:
            if has_real:
                canvas[t, label:label + height, :width] = real_rgb[t]
            col = 1
        for s in range(count):
            x = col * (width + gap) + s * (width + gap)
            canvas[t, label:label + height, x:x + width] = dreams[t, s]
            if real_rgb is not None:
                y = label + height + gap
                if has_real:
                    canvas[t, y:y + height, x:x + width] = np.abs(dreams[t, s].astype(np.int16) - real_rgb[t]).astype(np.uint8)
                else:
                    canvas[t, y:y + height, x:x + width] = 0
    titles = (["real"] if real_rgb is not None else []) + [f"dream {s + 1}" for s in range(count)]
    out = []
    for t in range(frames):
        image = Image.fromarray(canvas[t])
        draw = ImageDraw.Draw(image)
        for c, title in enumerate(titles):
            text = f"{title} t+{t}" if c == 0 else title
            draw.text((c * (width + gap) + 2, 0), text, fill=(230, 230, 230))
        if real_rgb is not None:
            draw.text((2, label + height + gap + 2), "|dream - real|", fill=(230, 230, 230))
        out.append(np.asarray(image))
    return np.stack(out)


def _rgb(frames: Array) -> Array:
    frames = np.asarray(frames)
    return np.repeat(frames, 3, -1) if frames.shape[-1] == 1 else frames


def write_video(path, frames: Array, fps: float = 8) -> pathlib.Path:
    """uint8 (T, H, W, 3) frames to a .gif (Pillow) or .mp4 (needs imageio-ffmpeg)."""
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        from torch_dreamer.tools.video import gif_bytes

        path.write_bytes(gif_bytes(frames, fps))
        return path
    try:
        import imageio.v2 as imageio

        imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    except Exception as error:  # imageio names the missing plugin; keep it to one line
        raise UserError(f"cannot write {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}; "
                        "use a .gif path or pip install imageio-ffmpeg for .mp4") from None
    return path
