"""Atari 2600 through ale-py, with the official DreamerV2 settings.

Sticky actions (p=0.25), 30 no-op starts, frame skip 4 with a max-pool over the last two
frames, no frame stacking, no life signal unless `atari_lives_terminal`.
"""

from __future__ import annotations

import difflib

import gymnasium

from torch_dreamer.errors import UserError, missing_extra

# The official task names are the old atari-py ROM names; a few differ from ale-py's ids.
ALIASES = {"james_bond": "jamesbond"}


def _import_ale():
    try:
        import ale_py
    except ImportError:
        raise missing_extra("ale_py", "atari") from None
    gymnasium.register_envs(ale_py)
    return ale_py


def _squash(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def rom_id(game: str) -> str:
    """Maps `pong`, `james_bond`, `space_invaders`, `MontezumaRevenge`... to an ale-py ROM id."""
    ale_py = _import_ale()
    roms = ale_py.roms.get_all_rom_ids()
    game = ALIASES.get(game, game)
    by_squashed = {_squash(rom): rom for rom in roms}
    if _squash(game) in by_squashed:
        return by_squashed[_squash(game)]
    close = difflib.get_close_matches(game.lower(), roms + list(ALIASES), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('atari_' + c for c in close)}?" if close else ""
    raise UserError(f"unknown Atari game '{game}'{hint}")


def make_atari(game: str, config) -> gymnasium.Env:
    """The preprocessed Atari env; its frame skip is the action repeat, so the caller adds none."""
    _import_ale()
    from ale_py.registration import rom_id_to_name

    rom = rom_id(game)
    if config.atari_actions not in ("minimal", "all"):
        raise UserError(f"atari_actions must be 'minimal' or 'all', got '{config.atari_actions}'")
    env = gymnasium.make(
        f"ALE/{rom_id_to_name(rom)}-v5",
        frameskip=1,
        repeat_action_probability=0.25,
        full_action_space=config.atari_actions == "all",
    )
    height, width = (int(s) for s in config.render_size)
    try:
        return _preprocess(env, config, height, width)
    except gymnasium.error.DependencyNotInstalled:
        env.close()
        raise missing_extra("cv2 (opencv-python-headless)", "atari") from None


def _preprocess(env, config, height, width):
    return gymnasium.wrappers.AtariPreprocessing(
        env,
        noop_max=30,
        frame_skip=4,
        screen_size=(width, height),  # gymnasium takes (width, height); render_size is (height, width)
        terminal_on_life_loss=bool(config.atari_lives_terminal),
        grayscale_obs=bool(config.atari_grayscale),
        grayscale_newaxis=True,
    )
