"""Tests of torch_dreamer.config: --configs order, dotted and regex keys, type checks with one-line
errors, schedule strings, nested updates and immutability (reference §2, §4 schedules, §7 Setup)."""

import pickle

import pytest

from torch_dreamer import config as config_lib
from torch_dreamer.config import Config, resolve
from torch_dreamer.errors import UserError

NORM_KEYS = ["rssm.norm", "encoder.norm", "decoder.norm", "reward_head.norm", "discount_head.norm",
             "actor.norm", "critic.norm", "expl_head.norm"]


def _error(names=(), flags=()):
    with pytest.raises(UserError) as info:
        resolve(list(names), list(flags))
    message = str(info.value)
    assert "\n" not in message
    return message


# ----- the official values -----

def test_defaults_follow_the_official_configs():
    c = resolve([])
    assert (c.rssm.ensemble, c.rssm.hidden, c.rssm.deter, c.rssm.stoch, c.rssm.discrete) == (1, 1024, 1024, 32, 32)
    assert (c.rssm.act, c.rssm.norm, c.rssm.std_act, c.rssm.min_std) == ("elu", "none", "sigmoid2", 0.1)
    assert c.encoder.cnn_kernels == [4, 4, 4, 4] and c.decoder.cnn_kernels == [5, 5, 6, 6]
    assert c.encoder.cnn_depth == 48 and c.encoder.mlp_layers == [400] * 4
    assert c.kl.to_dict() == {"free": 0.0, "forward": False, "balance": 0.8, "free_avg": True}
    assert c.model_opt.to_dict() == {"opt": "adam", "lr": 1e-4, "eps": 1e-5, "clip": 100, "wd": 1e-6}
    assert (c.actor_opt.lr, c.critic_opt.lr) == (8e-5, 2e-4)
    assert (c.discount, c.discount_lambda, c.imag_horizon) == (0.99, 0.95, 15)
    assert (c.actor_grad, c.actor_grad_mix, c.actor_ent) == ("auto", 0.1, 2e-3)
    assert (c.slow_target, c.slow_target_update, c.slow_target_fraction) == (True, 100, 1)
    assert c.reward_norm.momentum == 1.0 and c.clip_rewards == "tanh"
    assert c.grad_heads == ["decoder", "reward", "discount"] and c.pred_discount is True
    assert (c.dataset.batch, c.dataset.length) == (16, 50)
    assert c.replay.capacity == 2e6 and c.replay.prioritize_ends is True
    assert isinstance(c.dataset.batch, int) and isinstance(c.model_opt.lr, float)


def test_atari_config_follows_the_official_values():
    c = resolve(["atari"])
    assert (c.rssm.hidden, c.rssm.deter, c.rssm.stoch, c.rssm.discrete) == (600, 600, 32, 32)
    assert (c.model_opt.lr, c.actor_opt.lr, c.critic_opt.lr) == (2e-4, 4e-5, 1e-4)
    assert (c.actor_ent, c.discount) == (1e-3, 0.999)
    assert (c.loss_scales.kl, c.loss_scales.discount, c.loss_scales.reward) == (0.1, 5.0, 1.0)
    assert (c.time_limit, c.action_repeat, c.train_every, c.prefill) == (27000, 4, 16, 50000)
    assert (c.steps, c.eval_every) == (5e7, 2.5e5)
    assert c.encoder.cnn_keys == "image" and c.encoder.mlp_keys == "$^"
    assert c.kl.balance == 0.8 and c.kl.free == 0.0 and c.actor_grad == "auto"
    assert c.model_opt.eps == 1e-5 and c.model_opt.wd == 1e-6 and c.model_opt.clip == 100


# ----- --configs order -----

def test_named_configs_apply_in_order():
    a = resolve(["atari", "dmc_vision"])
    assert a.rssm.deter == 200 and a.task == "dmc_walker_walk"
    assert a.time_limit == 27000                     # only atari sets it, so it survives
    assert a.loss_scales.kl == 0.1 and a.kl.free == 1.0
    b = resolve(["dmc_vision", "atari"])
    assert b.rssm.deter == 600 and b.task == "atari_pong"
    assert b.kl.free == 1.0                          # only dmc_vision sets it
    assert resolve(["defaults", "atari"]).flat == resolve(["atari"]).flat
    # Flags come last.
    assert resolve(["atari", "dmc_vision"], ["--rssm.deter", "32"]).rssm.deter == 32


def test_unknown_named_config():
    message = _error(["atary"])
    assert "atary" in message and "atari" in message


# ----- keys -----

def test_dotted_keys_and_value_types():
    c = resolve([], ["--rssm.deter", "64", "--model_opt.lr", "3e-4", "--kl.free_avg", "False",
                     "--task", "atari_breakout", "--encoder.cnn_kernels", "3,3", "--grad_heads", "decoder", "reward"])
    assert c.rssm.deter == 64 and isinstance(c.rssm.deter, int)
    assert c.model_opt.lr == 3e-4 and isinstance(c.model_opt.lr, float)
    assert c.kl.free_avg is False
    assert c.task == "atari_breakout"
    assert c.encoder.cnn_kernels == [3, 3]
    assert c.grad_heads == ["decoder", "reward"]
    assert c["rssm.deter"] == 64 and c["rssm"]["deter"] == 64
    assert resolve([], ["--rssm.deter=8"]).rssm.deter == 8


def test_regex_keys_set_every_match():
    c = resolve([], ["--.*\\.norm", "layer"])
    assert [c[key] for key in NORM_KEYS] == ["layer"] * len(NORM_KEYS)
    assert c.reward_norm.momentum == 1.0               # reward_norm.* is not a `.norm` key
    crafter = resolve(["crafter"])
    assert [crafter[key] for key in NORM_KEYS] == ["layer"] * len(NORM_KEYS)
    assert (crafter.rssm.deter, crafter.discount, crafter.actor_ent) == (1024, 0.999, 3e-3)
    lrs = resolve([], ["--.*_opt\\.lr", "1e-3"])
    assert all(lrs[f"{n}_opt.lr"] == 1e-3 for n in ("model", "actor", "critic", "expl"))
    assert "matches no key" in _error(flags=["--.*\\.nrom", "layer"])
    assert "regex" in _error(flags=["--rssm.(deter", "4"])


def test_float_notation_for_ints():
    c = resolve([], ["--prefill", "1e6", "--dataset.batch", "32.0"])
    assert c.prefill == 1_000_000 and isinstance(c.prefill, int)
    assert c.dataset.batch == 32 and isinstance(c.dataset.batch, int)
    assert Config(resolve([])).update({"prefill": 5e4}).prefill == 50000
    message = _error(flags=["--prefill", "1.5"])
    assert "prefill" in message and "int" in message


def test_unknown_key_names_the_closest_keys():
    message = _error(flags=["--rssm.detr", "8"])
    assert "rssm.detr" in message and "'rssm.deter'" in message
    message = _error(flags=["--discout", "0.9"])
    assert "'discount'" in message


def test_wrong_types_are_rejected():
    for flags, key in ((["--rssm.deter", "abc"], "rssm.deter"), (["--jit", "maybe"], "jit"),
                       (["--model_opt.lr", "fast"], "model_opt.lr"), (["--encoder.cnn_kernels", "a,b"], "encoder.cnn_kernels")):
        message = _error(flags=flags)
        assert key in message, message
    assert "needs a value" in _error(flags=["--rssm.deter"])
    assert "unexpected argument" in _error(flags=["oops"])
    assert "one value" in _error(flags=["--rssm.deter", "8", "9"])
    with pytest.raises(UserError):
        resolve([]).update({"rssm.deter": True})


def test_schedule_strings_from_flags():
    c = resolve([], ["--actor_ent", "linear(3e-3,3e-4,2.5e6)", "--actor_grad_mix", "linear(0.1,0,2.5e6)"])
    assert c.actor_ent == "linear(3e-3,3e-4,2.5e6)" and c.actor_grad_mix == "linear(0.1,0,2.5e6)"
    c = resolve([], ["--actor_ent", "warmup(1e4,1e-3)", "--actor_grad_mix", "exp(1,0,1e5)"])
    assert c.actor_ent == "warmup(1e4,1e-3)" and c.actor_grad_mix == "exp(1,0,1e5)"
    assert resolve([], ["--actor_ent", "horizon(10,100,1e6)"]).actor_ent == "horizon(10,100,1e6)"
    c = resolve([], ["--actor_ent", "1e-4"])
    assert c.actor_ent == 1e-4 and isinstance(c.actor_ent, float)
    for garbage in ("fast", "linear", "lin(1,2,3)"):
        message = _error(flags=["--actor_ent", garbage])
        assert "actor_ent" in message and "schedule" in message


def test_precision_takes_numbers_and_bf16():
    assert resolve([], ["--precision", "bf16"]).precision == "bf16"
    assert resolve([], ["--precision", "16"]).precision == 16
    assert resolve([], ["--precision", "bf16", "--precision", "32"]).precision in (32, "32")
    assert "precision" in _error(flags=["--precision", "fp8"])


# ----- Config objects -----

def test_nested_dict_update_keeps_siblings():
    base = resolve([])
    new = base.update({"rssm": {"deter": 8, "stoch": 4}}, kl={"free": 1.0})
    assert (new.rssm.deter, new.rssm.stoch, new.rssm.hidden, new.rssm.discrete) == (8, 4, 1024, 32)
    assert new.kl.free == 1.0 and new.kl.balance == 0.8
    assert base.rssm.deter == 1024 and base.kl.free == 0.0      # the original is unchanged
    assert new.update({"rssm.deter": 16}).rssm.deter == 16


def test_config_is_immutable():
    c = resolve([])
    with pytest.raises(AttributeError):
        c.discount = 0.5
    with pytest.raises(AttributeError):
        c.rssm.deter = 5
    with pytest.raises(TypeError):
        c["discount"] = 0.5
    with pytest.raises(AttributeError):
        c.no_such_key
    flat = c.flat
    flat["discount"] = 0.5
    assert c.discount == 0.99                                    # .flat is a copy
    tree = c.to_dict()
    tree["rssm"]["deter"] = 5
    assert c.rssm.deter == 1024


def test_save_and_pickle_round_trip(tmp_path):
    c = resolve(["atari"], ["--actor_ent", "linear(3e-3,3e-4,2.5e6)", "--precision", "bf16"])
    path = tmp_path / "config.yaml"
    c.save(path)
    loaded = resolve([]).update(config_lib.load_yaml(path))
    assert loaded.flat == c.flat
    assert pickle.loads(pickle.dumps(c)).flat == c.flat


def test_list_flags_accept_spaces_commas_and_brackets():
    from torch_dreamer.config import resolve

    for flags in (["decoder", "reward"], ["decoder,reward"], ["[decoder,", "reward]"], ["[decoder, reward]"]):
        assert resolve([], ["--grad_heads", *flags]).grad_heads == ["decoder", "reward"]
    assert resolve([], ["--grad_heads", "[decoder]"]).grad_heads == ["decoder"]
