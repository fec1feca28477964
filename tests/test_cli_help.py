"""`--help` / `-h` on every `dreamer` subcommand: usage, the most used keys, where the full list is, examples."""

import pytest

from torch_dreamer.cli import main


@pytest.mark.parametrize("command", ["train", "actor", "eval", "config", "plot"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_subcommand_has_help(command, flag, capsys):
    assert main([command, flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dreamer {command}")
    assert "xamples:" in out and f"dreamer {command} " in out.split("xamples:")[1]
    if command in ("train", "actor", "config"):
        assert "dreamer config" in out  # where every key is listed
    if command in ("train", "config"):
        assert "--configs" in out and "atari" in out and "gym_vector" in out and "debug" in out


def test_help_after_other_flags_and_the_top_level_usage(capsys):
    assert main(["train", "--logdir", "x", "--configs", "atari", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: dreamer train")
    assert main(["--help"]) == 0
    assert "dreamer COMMAND --help" in capsys.readouterr().out
