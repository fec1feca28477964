"""Offline RL from a Minari dataset: convert its episodes once into our episode files.

``dreamer train --offline_dir minari:<dataset_id>`` names a dataset of the local Minari store
(``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``). `convert_minari` writes every episode
with `save_episode` and then a marker ``minari.json``; a later call with the same dataset id and
episode count finds the marker and converts nothing.

Mapping of one Minari episode (``observations`` of length ``T + 1``; ``actions``, ``rewards``,
``terminations``, ``truncations`` of length ``T``) to our episode (every array of length ``T + 1``):

- row 0 is the reset step: ``observations[0]``, zero action, reward 0, ``is_first``;
- row ``t + 1`` holds ``observations[t + 1]``, ``actions[t]``, ``rewards[t]`` and
  ``is_terminal = terminations[t]``; the final row has ``is_last`` (a truncation is only ``is_last``);
- actions: ``Discrete(n)`` -> one-hot float32 of size ``n`` (``start`` subtracted); ``Box`` ->
  float32 flattened to ``(A,)``, linearly rescaled into ``[-1, 1]`` when the bounds are not
  ``[-1, 1]`` (dimensions with an infinite bound pass through; the bounds go into ``minari.json``);
  other action spaces raise UserError;
- observations: a ``Box`` of uint8 with 3 dims ``(H, W, C)`` -> ``image`` (uint8, kept as is); any
  other ``Box`` -> ``vector`` float32 flattened to 1-D; a bare ``Discrete`` -> one-hot ``vector`` and
  ``MultiBinary``/``MultiDiscrete`` -> float32 ``vector`` (as `torch_dreamer.envs.wrap_env` does);
- a ``Dict`` space gives one key per entry: uint8 3-D Boxes stay images under their own key, other
  Boxes become float32 flattened, scalar Boxes and ``Discrete`` entries float32 scalars ``()``
  (logged, never encoded, like the env contract), ``MultiBinary``/``MultiDiscrete`` float32 vectors;
  entries the agent cannot use (``Text``, nested spaces) are dropped with a warning, like the env
  wrappers drop MiniGrid's ``mission``. Any other observation space raises UserError.

Conversion writes into the hidden folder ``<directory>/.minari-partial`` first, moves the finished
files into ``directory`` and writes ``minari.json`` last, so an interrupted conversion leaves no
marker (or one marked incomplete) and the next call cleans up and converts again.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from torch_dreamer.data.episodes import list_episodes, save_episode
from torch_dreamer.errors import UserError
from torch_dreamer.tools.files import atomic_write

PREFIX = "minari:"
MARKER = "minari.json"
FORMAT = 1  # bump when the mapping changes: older conversions are then redone
_STAGING = ".minari-partial"
_RESERVED = ("action", "reward", "is_first", "is_last", "is_terminal")


def is_minari(url: str) -> bool:
    """True for an offline source written ``minari:<dataset_id>``."""
    return isinstance(url, str) and url.startswith(PREFIX)


def minari_id(url: str) -> str:
    """The dataset id of ``minari:<dataset_id>`` (UserError when it is empty)."""
    dataset_id = url[len(PREFIX) :].strip() if is_minari(url) else str(url).strip()
    if not dataset_id:
        raise UserError("empty Minari dataset id: write minari:<dataset_id>, e.g. minari:D4RL/door/human-v2")
    return dataset_id


def convert_minari(dataset_id: str, directory, *, download: bool = False) -> dict:
    """Convert the local Minari dataset ``dataset_id`` into episode files in ``directory``, once.

    Returns ``{dataset_id, episodes, steps, discrete, act_dim}``. Nothing is converted when
    ``directory/minari.json`` records a finished conversion of the same dataset id and episode count
    (and its files are all there); then the dataset is not even needed locally any more. A marker of
    another dataset or count has its files removed and the dataset is converted anew. Episode files
    in ``directory`` that no conversion wrote raise UserError (they would be mixed into the data).

    ``download=True`` lets Minari download a dataset missing locally; by default a missing dataset
    raises UserError saying how to get it.
    """
    dataset_id = minari_id(dataset_id)
    directory = Path(directory)
    marker = _read_marker(directory)
    done = marker is not None and marker.get("complete") and marker.get("dataset_id") == dataset_id
    done = done and marker.get("format") == FORMAT and _files_present(directory, marker)

    try:
        dataset = _load(dataset_id, download)
    except UserError:
        if done:  # converted before; the raw dataset is no longer needed
            return _summary(marker)
        raise
    if done and marker.get("episodes") == int(dataset.total_episodes):
        return _summary(marker)

    _clean(directory, marker)
    foreign = list_episodes(directory)
    if foreign:
        raise UserError(
            f"{directory} already holds {len(foreign)} episode files that are not a conversion of Minari "
            f"dataset {dataset_id}; convert into an empty directory"
        )
    action_fn, info = _action_converter(dataset.action_space)
    obs_fn, obs_keys = _observation_converter(dataset.observation_space)

    staging = directory / _STAGING
    names, steps, episodes = [], 0, 0
    try:
        for data in dataset.iterate_episodes():
            episode = _convert_episode(data, obs_fn, action_fn, dataset_id)
            names.append(save_episode(staging, episode).name)
            steps += len(episode["action"]) - 1
            episodes += 1
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    record = {
        "format": FORMAT,
        "dataset_id": dataset_id,
        "episodes": episodes,
        "steps": steps,
        **info,
        "observations": obs_keys,
        "action_space": str(dataset.action_space),
        "observation_space": str(dataset.observation_space),
        "complete": False,
        "files": names,
    }
    directory.mkdir(parents=True, exist_ok=True)
    _write_marker(directory, record)  # lists the files, so an interrupted move is cleaned up
    for name in names:
        os.replace(staging / name, directory / name)
    shutil.rmtree(staging, ignore_errors=True)
    record["complete"] = True
    _write_marker(directory, record)
    return _summary(record)


# ----------------------------------------------------------------------------- loading


def _load(dataset_id: str, download: bool):
    try:
        import minari
    except ImportError:
        raise UserError("the 'minari' package is not installed; install it with: pip install 'minari[hdf5]'") from None
    try:
        return minari.load_dataset(dataset_id, download=download)
    except FileNotFoundError:
        raise UserError(
            f"Minari dataset {dataset_id} is not in the local Minari store; get it with: minari download {dataset_id}"
        ) from None
    except ImportError as exc:  # the dataset's storage backend (h5py, pyarrow) is missing
        raise UserError(f"cannot read Minari dataset {dataset_id}: {exc}") from None
    except Exception as exc:  # malformed id, unsupported version, download failure...
        raise UserError(f"cannot load Minari dataset {dataset_id}: {type(exc).__name__}: {exc}") from None


def _summary(record: dict) -> dict:
    return {key: record[key] for key in ("dataset_id", "episodes", "steps", "discrete", "act_dim")}


# ----------------------------------------------------------------------------- marker


def _read_marker(directory: Path) -> dict | None:
    try:
        record = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_marker(directory: Path, record: dict) -> None:
    with atomic_write(directory / MARKER) as f:
        f.write(json.dumps(record, indent=1).encode())


def _own_files(directory: Path, marker: dict | None) -> list[Path]:
    names = marker.get("files", []) if marker else []
    return [directory / name for name in names if isinstance(name, str) and name == Path(name).name]


def _files_present(directory: Path, marker: dict) -> bool:
    files = _own_files(directory, marker)
    return len(files) == marker.get("episodes") and all(path.is_file() for path in files)


def _clean(directory: Path, marker: dict | None) -> None:
    """Remove what an earlier (other or interrupted) conversion left: its files, staging and marker."""
    for path in _own_files(directory, marker):
        path.unlink(missing_ok=True)
    shutil.rmtree(directory / _STAGING, ignore_errors=True)
    (directory / MARKER).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- actions


def _action_converter(space):
    """``(fn, info)``: fn maps Minari actions ``(T, ...)`` to float32 ``(T, A)``; info goes into the marker."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)
        eye = np.eye(n, dtype=np.float32)

        def onehot(actions):
            index = np.asarray(actions).reshape(-1).astype(np.int64) - start
            if index.size and (index.min() < 0 or index.max() >= n):
                raise ValueError(f"discrete action outside {space}")
            return eye[index]

        return onehot, {"discrete": True, "act_dim": n}
    if not isinstance(space, spaces.Box):
        raise UserError(f"unsupported Minari action space {space}: only Discrete and Box actions are supported")
    low = space.low.reshape(-1).astype(np.float64)
    high = space.high.reshape(-1).astype(np.float64)
    size = low.size
    info = {"discrete": False, "act_dim": int(size)}
    if np.all(low == -1) and np.all(high == 1):
        return lambda actions: np.asarray(actions, np.float32).reshape(-1, size), info
    # Finite dimensions map linearly onto [-1, 1]; unbounded ones pass through (official NormalizeAction).
    mask = np.isfinite(low) & np.isfinite(high)
    lo, width = np.where(mask, low, -1.0), np.where(mask & (high > low), high - low, 2.0)

    def rescale(actions):
        actions = np.asarray(actions, np.float64).reshape(-1, size)
        scaled = np.clip(2.0 * (actions - lo) / width - 1.0, -1.0, 1.0)
        return np.where(mask, scaled, actions).astype(np.float32)

    info["action_low"] = [float(x) if np.isfinite(x) else None for x in low]
    info["action_high"] = [float(x) if np.isfinite(x) else None for x in high]
    return rescale, info


# ----------------------------------------------------------------------------- observations


def _is_image(space) -> bool:
    return len(space.shape) == 3 and space.dtype == np.uint8


def _onehot(n: int, start: int):
    eye = np.eye(n, dtype=np.float32)
    return lambda values: eye[np.asarray(values).reshape(-1).astype(np.int64) - start]


def _flat(values):
    values = np.asarray(values)
    return values.reshape(len(values), -1).astype(np.float32)


def _scalar(values):
    values = np.asarray(values)
    return values.reshape(len(values)).astype(np.float32)


def _image(values):
    return np.ascontiguousarray(np.asarray(values, np.uint8))


def _leaf(space, top: bool):
    """``(fn, shape, dtype)`` for one observation space, or None when the agent cannot use it."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        if _is_image(space):
            return _image, tuple(space.shape), "uint8"
        size = int(np.prod(space.shape))
        if not top and size == 1 and len(space.shape) == 0:
            return _scalar, (), "float32"
        return _flat, (size,), "float32"
    if isinstance(space, spaces.Discrete):
        if top:
            return _onehot(int(space.n), int(space.start)), (int(space.n),), "float32"
        return _scalar, (), "float32"
    if isinstance(space, (spaces.MultiBinary, spaces.MultiDiscrete)):
        return _flat, (int(np.prod(space.shape)),), "float32"
    return None


def _observation_converter(space):
    """``(fn, keys)``: fn maps Minari observations to ``{key: array (T+1, ...)}``; keys: shapes and dtypes."""
    from gymnasium import spaces

    if not isinstance(space, spaces.Dict):
        leaf = _leaf(space, top=True)
        if leaf is None:
            raise UserError(
                f"unsupported Minari observation space {space}: use a Box, Discrete, MultiBinary, "
                "MultiDiscrete or a Dict of them"
            )
        fn, shape, dtype = leaf
        key = "image" if dtype == "uint8" else "vector"
        return (lambda obs: {key: fn(obs)}), {key: [list(shape), dtype]}
    converters, keys, dropped = {}, {}, []
    for name, sub in space.spaces.items():
        leaf = _leaf(sub, top=False)
        if leaf is None:
            dropped.append(str(name))
            continue
        if str(name) in _RESERVED:
            raise UserError(f"Minari observation key '{name}' clashes with the episode key of the same name")
        converters[name] = leaf[0]
        keys[str(name)] = [list(leaf[1]), leaf[2]]
    if dropped:
        warnings.warn(f"dropping Minari observation keys the agent cannot use: {', '.join(dropped)}", stacklevel=3)
    if not converters:
        raise UserError(f"no usable observation in Minari observation space {space}")
    return (lambda obs: {str(name): fn(obs[name]) for name, fn in converters.items()}), keys


# ----------------------------------------------------------------------------- episodes


def _convert_episode(data, obs_fn, action_fn, dataset_id: str) -> dict:
    """One Minari ``EpisodeData`` as our episode dict (see the module docstring)."""
    rewards = np.asarray(data.rewards, np.float32).reshape(-1)
    length = len(rewards)
    try:
        observations = obs_fn(data.observations)
        actions = action_fn(data.actions)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise UserError(f"episode {data.id} of Minari dataset {dataset_id} cannot be converted: {exc}") from None
    terminations = np.asarray(data.terminations, bool).reshape(-1)
    lengths = {key: len(value) for key, value in observations.items()}
    if any(n != length + 1 for n in lengths.values()) or len(actions) != length or len(terminations) != length:
        raise UserError(
            f"episode {data.id} of Minari dataset {dataset_id} is malformed: {length} rewards, "
            f"{len(actions)} actions, {len(terminations)} terminations, observations {lengths}"
        )
    rows = length + 1
    action = np.zeros((rows, actions.shape[1]), np.float32)
    action[1:] = actions
    reward = np.zeros(rows, np.float32)
    reward[1:] = rewards
    is_first = np.zeros(rows, bool)
    is_first[0] = True
    is_last = np.zeros(rows, bool)
    is_last[-1] = True
    is_terminal = np.zeros(rows, bool)
    is_terminal[1:] = terminations
    return {
        **observations,
        "action": action,
        "reward": reward,
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_terminal,
    }
