"""Immutable, type-checked configuration in the official DreamerV2 style.

Keys are nested (``config.rssm.deter``) and can be updated by dotted name
(``rssm.deter``) or by regular expression over dotted names (``.*\\.norm``), from
Python with ``Config.update`` or from the command line with ``--key value``.
"""

from __future__ import annotations

import difflib
import pathlib
import re
import sys
from typing import Any, Iterable, Mapping

import yaml

from torch_dreamer.errors import UserError
from torch_dreamer.tools.files import atomic_write

CONFIGS_FILE = pathlib.Path(__file__).with_name("configs.yaml")

# Keys that hold a float or a schedule string such as 'linear(3e-3,3e-4,2.5e6)'.
# The official type check rejects schedule strings for these; we accept them.
SCHEDULE_KEYS = ("actor_ent", "actor_grad_mix", "expl_intr_scale", "expl_extr_scale")
SCHEDULE_PATTERN = re.compile(r"^(linear|warmup|exp|horizon)\(.*\)$")
# Keys with a numeric default that also take these words (`precision: 32 | 16 | bf16`).
WORD_CHOICES = {"precision": ("bf16",)}


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` and `1.0e8` as floats (YAML 1.2), as users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+[eE][-+]?\d+$|^[-+]?\d+\.\d*$"),
    list("-+0123456789."),
)


def load_yaml(text_or_path) -> Any:
    text = pathlib.Path(text_or_path).read_text() if isinstance(text_or_path, pathlib.Path) else text_or_path
    data = yaml.load(text, Loader=_Loader)
    return _ints_back(data)


def _ints_back(value):
    # The float resolver also matches plain integers such as `16`; keep those ints.
    if isinstance(value, dict):
        return {k: _ints_back(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints_back(v) for v in value]
    return value


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = prefix + str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _nest(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


class Config(Mapping):
    """A frozen nested mapping; attribute and item access; `update` returns a new Config."""

    def __init__(self, *args, **kwargs):
        tree = dict(*args, **kwargs)
        flat = _flatten(tree)
        object.__setattr__(self, "_flat", flat)
        object.__setattr__(self, "_tree", _nest(flat))

    # Mapping interface over the top level.
    def __getitem__(self, name):
        if "." in name:
            return self._flat[name]
        value = self._tree[name]
        return Config(value) if isinstance(value, dict) else value

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is immutable; use config.update({...}) for a changed copy")

    def __iter__(self):
        return iter(self._tree)

    def __len__(self):
        return len(self._tree)

    def __contains__(self, name):
        return name in self._flat or name in self._tree

    def __repr__(self):
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._flat.items()) + ")"

    def __getstate__(self):
        return self._flat

    def __setstate__(self, flat):
        object.__setattr__(self, "_flat", dict(flat))
        object.__setattr__(self, "_tree", _nest(flat))

    @property
    def flat(self) -> dict[str, Any]:
        return dict(self._flat)

    def to_dict(self) -> dict:
        return _nest(self._flat)

    def yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path) -> None:
        with atomic_write(path) as file:
            file.write(self.yaml().encode())

    def update(self, *updates: Mapping, **kwargs) -> "Config":
        """Returns a copy with the given keys changed.

        Keys may be dotted (`rssm.deter`), nested dicts, or regexes over dotted
        names (`.*\\.norm`). Values are checked against the type of the current value.
        """
        flat = dict(self._flat)
        for update in list(updates) + [kwargs]:
            for key, value in _flatten_update(update).items():
                if key in flat:
                    targets = [key]
                else:
                    targets = _regex_targets(key, flat)
                for target in targets:
                    flat[target] = _coerce(target, value, flat[target])
        return Config(_nest(flat))

    def parse_flags(self, argv: Iterable[str] | None = None, known_only: bool = False) -> "Config":
        """Applies `--key value [value ...]` pairs from argv (default: sys.argv[1:])."""
        argv = list(sys.argv[1:] if argv is None else argv)
        updates, rest = parse_flag_pairs(argv)
        if rest and not known_only:
            raise UserError(f"unexpected argument '{rest[0]}': flags look like --key value")
        config = self
        for key, values in updates:
            config = config.update({key: _flag_value(key, values, config)})
        return config


def _flatten_update(update: Mapping) -> dict[str, Any]:
    flat = {}
    for key, value in update.items():
        key = str(key)
        # A nested dict under a real key updates its members; under a regex it is a value.
        if isinstance(value, Mapping) and not _looks_like_regex(key):
            for sub, subvalue in _flatten(value).items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[key] = value
    return flat


def _looks_like_regex(key: str) -> bool:
    return any(c in key for c in "*+?[]()^$\\|")


def _regex_targets(key: str, flat: Mapping[str, Any]) -> list[str]:
    if _looks_like_regex(key):
        try:
            pattern = re.compile(key)
        except re.error as e:
            raise UserError(f"config key '{key}' is neither a known key nor a valid regex ({e})") from None
        targets = [name for name in flat if pattern.fullmatch(name)]
        if targets:
            return targets
        raise UserError(f"config regex '{key}' matches no key; run `dreamer config` to list the keys")
    close = difflib.get_close_matches(key, list(flat), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; run `dreamer config` to list the keys"
    raise UserError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Converts `value` to the type of `default`, or raises a one-line UserError."""
    leaf = key.split(".")[-1]
    if leaf in SCHEDULE_KEYS and isinstance(value, str):
        text = value.strip()
        if SCHEDULE_PATTERN.match(text):
            return text
        try:
            return float(text)
        except ValueError:
            pass
        raise UserError(f"config key '{key}' takes a number or a schedule like linear(a,b,n), not {value!r}")
    if leaf in WORD_CHOICES and isinstance(value, str) and value.strip() in WORD_CHOICES[leaf]:
        return value.strip()
    try:
        return _convert(value, default)
    except (ValueError, TypeError):
        expected = type(default).__name__
        raise UserError(f"config key '{key}' expects {expected} (like {default!r}), got {value!r}") from None


def _convert(value: Any, default: Any) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ValueError(value)
        number = float(value) if isinstance(value, str) else value
        if float(number) != int(float(number)):
            raise ValueError(value)
        return int(float(number))
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        if default:
            return [_convert(v, default[0]) for v in value]
        return list(value)
    raise TypeError(default)


def parse_flag_pairs(argv: list[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Splits `--key v1 v2 --other v` into [(key, [v1, v2]), (other, [v])]; returns leftovers."""
    pairs, rest = [], []
    key = None
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2 and not _is_number(arg):
            name = arg[2:]
            if "=" in name:
                name, value = name.split("=", 1)
                pairs.append((name, [value]))
                key = None
                continue
            key = name
            pairs.append((key, []))
        elif key is not None:
            pairs[-1][1].append(arg)
        else:
            rest.append(arg)
    for name, values in pairs:
        if not values:
            raise UserError(f"flag --{name} needs a value")
    return pairs, rest


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _flag_value(key: str, values: list[str], config: Config):
    try:
        targets = [key] if key in config.flat else [t for t in config.flat if _looks_like_regex(key) and re.fullmatch(key, t)]
    except re.error:
        targets = []  # Config.update reports the invalid regex as a UserError
    default = config.flat[targets[0]] if targets else None
    if isinstance(default, (list, tuple)):
        # Accepts `a b`, `a,b` and the YAML-style `[a, b]`.
        parsed = []
        for v in values:
            parsed.extend(x.strip() for x in v.strip("[]").split(",") if x.strip())
        return parsed
    if len(values) > 1:
        raise UserError(f"flag --{key} takes one value, got {len(values)}: {' '.join(values)}")
    text = values[0]
    if isinstance(default, str) or default is None:
        return text
    return text


def load_configs(path=CONFIGS_FILE) -> dict[str, dict]:
    return load_yaml(pathlib.Path(path))


def defaults_config() -> Config:
    return Config(load_configs()["defaults"])


def resolve(names: Iterable[str], overrides: Iterable[str] = (), base: Config | None = None) -> Config:
    """`defaults` updated by each named config block in order, then by `--key value` flags."""
    blocks = load_configs()
    config = base if base is not None else Config(blocks["defaults"])
    for name in names:
        if name == "defaults":
            continue
        if name not in blocks:
            close = difflib.get_close_matches(name, list(blocks), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown config '{name}' (known: {', '.join(blocks)}){hint}")
        config = config.update(blocks[name])
    return config.parse_flags(list(overrides))


# ----- value checks: the whole resolved config, before any logdir, file or env is touched -----

ACTIVATIONS = ("elu", "relu", "tanh", "silu", "swish", "gelu", "leaky_relu", "none")
NORMS = ("none", "layer")
HEAD_DISTS = ("mse", "binary", "normal", "tanh_normal", "trunc_normal", "onehot")
ACTOR_DISTS = ("auto", "onehot", "normal", "tanh_normal", "trunc_normal")
EXPL_BEHAVIORS = ("greedy", "plan2explore", "model_loss", "modelloss", "random")
CHOICES = {
    "precision": ("32", "16", "bf16"),
    "clip_rewards": ("identity", "sign", "tanh"),
    "actor_grad": ("auto", "reinforce", "dynamics", "both"),
    "actor.dist": ACTOR_DISTS,
    "critic.dist": HEAD_DISTS,
    "reward_head.dist": HEAD_DISTS,
    "discount_head.dist": HEAD_DISTS,
    "expl_head.dist": HEAD_DISTS,
    "rssm.std_act": ("softplus", "sigmoid", "sigmoid2"),
    "eval_policy": ("task", "explore"),
    "disag_target": ("stoch", "deter", "embed", "feat"),
    "expl_model_loss": ("kl",),
    "envs_parallel": ("none", "process"),
    "atari_actions": ("minimal", "all"),
    "minigrid_view": ("partial", "full", "symbolic"),
    "minihack_obs": ("pixel_crop", "glyphs"),
    "nonfinite_env": ("error", "drop"),
    "model_opt.opt": ("adam",),
    "actor_opt.opt": ("adam",),
    "critic_opt.opt": ("adam",),
    "expl_opt.opt": ("adam",),
}
AT_LEAST_ONE = ("envs", "action_repeat", "train_every", "train_steps", "eval_every", "log_every", "dataset.batch",
                "dataset.length", "replay.minlen", "imag_horizon", "rssm.ensemble", "rssm.hidden",
                "rssm.deter", "rssm.stoch", "encoder.cnn_depth", "decoder.cnn_depth", "reward_head.units",
                "discount_head.units", "actor.units", "critic.units", "expl_head.units", "disag_models",
                "slow_target_update")
NON_NEGATIVE = ("replay.maxlen", "steps", "prefill", "pretrain", "eval_eps", "time_limit", "replay.capacity", "expl_until", "expl_every",
                "expl_noise", "eval_noise", "rssm.discrete", "rssm.min_std", "actor.min_std", "reward_head.layers",
                "discount_head.layers", "actor.layers", "critic.layers", "expl_head.layers", "kl.free",
                "checkpoint_every", "checkpoint_minutes", "max_episode_steps", "disag_offset", "reward_norm.eps",
                "expl_reward_norm.eps")
UNIT_INTERVAL = ("discount_lambda", "kl.balance", "reward_norm.momentum", "expl_reward_norm.momentum")
REGEX_KEYS = ("encoder.mlp_keys", "encoder.cnn_keys", "decoder.mlp_keys", "decoder.cnn_keys", "log_keys_sum",
              "log_keys_mean", "log_keys_max")
HEADS = ("decoder", "reward", "discount")


def check_schedule(key: str, value) -> None:
    """A number, or linear(a,b,n) | warmup(n,v) | exp(a,b,h) | horizon(a,b,n) with numbers and n, h != 0."""
    if not isinstance(value, str):
        return
    text = value.replace(" ", "")
    forms = {"linear": 3, "warmup": 2, "exp": 3, "horizon": 3}
    match = re.fullmatch(r"(\w+)\((.*)\)", text)
    if match and match.group(1) in forms:
        args = match.group(2).split(",")
        try:
            numbers = [float(arg) for arg in args]
        except ValueError:
            numbers = None
        if numbers is not None and len(numbers) == forms[match.group(1)]:
            scale = numbers[0] if match.group(1) == "warmup" else numbers[2]
            if scale != 0:
                return
            raise UserError(f"--{key} {value}: the schedule's duration must not be 0")
    raise UserError(f"--{key} takes a number or a schedule linear(a,b,n), warmup(n,v), exp(a,b,h) or "
                    f"horizon(a,b,n), not '{value}'")


def validate(config: Config) -> None:
    """Value checks over the whole resolved config; the first problem is a one-line `UserError`.

    Types were checked when the config was built; this checks ranges and choices, so a mistake such as
    `--dataset.batch 0`, `--eval_every 0` or a typo in `--actor.dist` stops the command before the logdir,
    any file or any env is touched (and not after a prefill).
    """
    flat = config.flat

    def fail(key, requirement):
        raise UserError(f"--{key} {requirement}, got {flat[key]!r}")

    for key, choices in CHOICES.items():
        if key in flat and str(flat[key]) not in choices:
            fail(key, f"must be one of {', '.join(choices)}")
    for key in ("rssm.act", "encoder.act", "decoder.act", "reward_head.act", "discount_head.act", "actor.act",
                "critic.act", "expl_head.act"):
        if key in flat and flat[key] not in ACTIVATIONS:
            fail(key, f"must be one of {', '.join(ACTIVATIONS)}")
    for key in ("rssm.norm", "encoder.norm", "decoder.norm", "reward_head.norm", "discount_head.norm", "actor.norm",
                "critic.norm", "expl_head.norm"):
        if key in flat and flat[key] not in NORMS:
            fail(key, f"must be one of {', '.join(NORMS)}")
    if str(flat["expl_behavior"]).strip().lower().replace("-", "_") not in EXPL_BEHAVIORS:
        fail("expl_behavior", "must be one of greedy, plan2explore, model_loss, random")
    for key in AT_LEAST_ONE:
        if key in flat and flat[key] < 1:
            fail(key, "must be >= 1")
    for key in NON_NEGATIVE:
        if key in flat and flat[key] < 0:
            fail(key, "must be >= 0")
    for key in UNIT_INTERVAL:
        if key in flat and not 0 <= flat[key] <= 1:
            fail(key, "must be between 0 and 1")
    if not 0 < flat["discount"] <= 1:
        fail("discount", "must be in (0, 1]")
    if not 0 < flat["slow_target_fraction"] <= 1:
        fail("slow_target_fraction", "must be in (0, 1]")
    for block in ("model_opt", "actor_opt", "critic_opt", "expl_opt"):
        if not flat[f"{block}.lr"] > 0:
            fail(f"{block}.lr", "must be > 0")
        if not flat[f"{block}.eps"] > 0:
            fail(f"{block}.eps", "must be > 0")
        if flat[f"{block}.clip"] < 0:
            fail(f"{block}.clip", "must be >= 0 (0 = no clipping)")
        if not 0 <= flat[f"{block}.wd"] < 1:
            fail(f"{block}.wd", "must be in [0, 1)")
    for key in [k for k in flat if k.startswith("loss_scales.")]:
        if flat[key] < 0:
            fail(key, "must be >= 0")
    for key in ("actor_ent", "actor_grad_mix", "expl_intr_scale", "expl_extr_scale"):
        check_schedule(key, flat[key])
    for key in REGEX_KEYS:
        try:
            re.compile(str(flat[key]))
        except re.error as error:
            fail(key, f"must be a valid regular expression ({error})")
    unknown = [name for name in flat["grad_heads"] if name not in HEADS]
    if unknown:
        fail("grad_heads", f"names heads of the world model ({', '.join(HEADS)})")
    if flat["replay.ongoing"]:
        fail("replay.ongoing", "(sampling unfinished episodes) is not supported; use False, the official default")
    if flat["replay.maxlen"] and flat["replay.minlen"] > flat["replay.maxlen"]:
        fail("replay.minlen", f"must be <= replay.maxlen ({flat['replay.maxlen']})")
    if len(flat["render_size"]) != 2 or min(flat["render_size"]) < 1:
        fail("render_size", "must be two sizes >= 1 (height width)")
    if flat["dmc_camera"] < -1:
        fail("dmc_camera", "must be >= -1 (-1 = the task's default camera)")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(flat["device"])):
        fail("device", "must be auto, cpu, cuda or cuda:N")
