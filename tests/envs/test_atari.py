"""Atari through ale-py with the official preprocessing."""

import pytest

from torch_dreamer.envs import make_env
from torch_dreamer.envs.atari import rom_id
from torch_dreamer.errors import UserError

pytest.importorskip("ale_py")


@pytest.mark.parametrize(
    "game, rom",
    [
        ("pong", "pong"),
        ("james_bond", "jamesbond"),
        ("space_invaders", "space_invaders"),
        ("montezuma_revenge", "montezuma_revenge"),
        ("MsPacman", "ms_pacman"),
        ("private_eye", "private_eye"),
    ],
)
def test_official_names_map_to_roms(game, rom):
    assert rom_id(game) == rom


def test_unknown_game_suggests_close_matches(h):
    with pytest.raises(UserError, match="atari_space_invaders"):
        make_env(h.make_config("atari", task="atari_space_invader"))


def test_grayscale_minimal_actions(h, closing):
    env = make_env(h.make_config("atari"))
    closing(env)
    assert env.action_space.n == 6  # Pong's minimal action set
    h.check_env(env, image=(64, 64, 1))


def test_colour_all_actions(h, closing):
    config = h.make_config("atari", task="atari_james_bond", atari_grayscale=False, atari_actions="all")
    env = make_env(config)
    closing(env)
    assert env.action_space.n == 18
    h.check_env(env, image=(64, 64, 3))


def test_render_size_and_preprocessing(h, closing):
    env = make_env(h.make_config("atari", render_size=[48, 32]))
    closing(env)
    h.check_env(env, image=(48, 32, 1))
    inner = env.unwrapped
    assert inner._frameskip == 1 and inner.ale.getFloat("repeat_action_probability") == 0.25
    preprocessing = env
    while not hasattr(preprocessing, "noop_max"):
        preprocessing = preprocessing.env
    assert preprocessing.frame_skip == 4 and preprocessing.noop_max == 30
    assert preprocessing.terminal_on_life_loss is False


def test_time_limit_truncates(h, closing):
    env = make_env(h.make_config("atari", time_limit=3))
    closing(env)
    env.reset()
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_bad_action_set_name(h):
    with pytest.raises(UserError, match="atari_actions"):
        make_env(h.make_config("atari", atari_actions="full"))
