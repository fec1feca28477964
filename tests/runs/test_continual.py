"""`dreamer continual`: every command of Continual-Dreamer's README runs (shortened: tiny model, few steps),
task sequences are the right ones, interference tasks share layout and start, and a resumed sequence ends
like an uncut one."""

import json
import pathlib
import re
import shlex

import numpy as np
import pytest

from torch_dreamer.cli import main
from torch_dreamer.runs.checkpoint import load_checkpoint
from tests.runs.conftest import TINY, read_metrics

SEED_README = pathlib.Path(__file__).resolve().parents[3] / "shared" / "seeds"
# The commands of Continual-Dreamer's README (../shared/seeds/002_*.txt), as its users type them.
COMMANDS = [
    "train_minigrid.py --cl --num_tasks=3 --tag=mg_new_cl_s1_1M --steps=750000 --seed=1 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --wandb_proj_name=minigrid_new --minlen=5 --rssm_full_recon",
    "train_minigrid.py --cl --num_tasks=3 --tag=mg_sb_fr_cl_s0_1M --wandb_proj_name=minigrid_state_bonus --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --wandb_proj_name=minigrid_new --minlen=5 --state_bonus --rssm_full_recon",
    "train_minigrid.py --wandb_proj_name=minigrid_new --cl --num_tasks=3 --tag=mg_new_cl_p2e0.9_s6_1M --steps=750000 --seed=6 --plan2explore --expl_intr_scale=0.9 --expl_extr_scale=0.9 --logdir=logs --del_exp_replay --minlen=50 --rssm_full_recon --sep_exp_eval_policies",
    "train_minihack.py --cl --cl_small --num_tasks=4 --tag=mh_cl_small_s0_1M --wandb_proj_name=minihack_task_dist --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --rssm_full_recon --minlen=5 --replay_capacity=1000000",
    "train_minihack.py --cl --cl_small --num_tasks=4 --tag=mh_cl_small_s0_1M --wandb_proj_name=minihack --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --minlen=5 --replay_capacity=1000000  --plan2explore --expl_intr_scale=0.9 --expl_extr_scale=0.9",
    "train_minihack.py --cl --cl_small --num_tasks=4 --tag=mh_cl_small_rs_s0_1M --wandb_proj_name=minihack_task_dist --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --minlen=5 --replay_capacity=1000000 --reservoir_sampling",
    "train_minihack.py --cl --cl_small --num_tasks=4 --tag=mh_cl_small_rs_s0_1M --wandb_proj_name=minihack --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --minlen=5 --replay_capacity=1000000  --plan2explore --expl_intr_scale=0.9 --expl_extr_scale=0.9 --reservoir_sampling",
    "train_minihack.py --cl --cl_small --num_tasks=4 --tag=mh_cl_small_rs_5050_s0_1M --wandb_proj_name=minihack --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --minlen=5 --replay_capacity=1000000 --reservoir_sampling --recent_past_sampl_thres=0.5",
    "train_minihack.py --cl --cl_small --num_tasks=4 --tag=mh_cl_small_cm_s0_1M --wandb_proj_name=minihack_task_dist --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --minlen=5 --replay_capacity=1000000 --coverage_sampling",
    "train_minihack.py --cl --cl_small --num_tasks=4 --tag=mh_cl_small_rwd_new_s0_1M --wandb_proj_name=minihack_task_dist --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --minlen=5 --replay_capacity=1000000 --reward_sampling",
    "train_minihack.py --cl --num_tasks=8 --tag=mh_cl_s0_1M --wandb_proj_name=cl_8_tasks_RS --wandb_group=dv2 --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --sep_exp_eval_policies --minlen=5 --replay_capacity=2000000",
    "train_minihack.py --cl --num_tasks=8 --tag=mh_cl_p2e_s0_1M --wandb_proj_name=cl_8_tasks_RS --steps=1000000 --seed=0 --logdir=logs_cl --del_exp_replay --minlen=5 --replay_capacity=2000000 --reservoir_sampling",
    "interference.py --proc --num_tasks=1 --wandb_proj_name=interference --tag=proc_interference_s0 --steps=1000000 --seed=0 --logdir=logs --del_exp_replay --minlen=5",
    "interference.py --proc --num_tasks=1 --wandb_proj_name=interference --tag=proc_interference_p2e0.9_s0 --steps=1000000 --seed=0 --logdir=logs --del_exp_replay --minlen=5 --plan2explore --expl_intr_scale=0.9 --expl_extr_scale=0.9",
    "interference.py --num_tasks=2 --wandb_proj_name=interference --wandb_proj_name=interference --tag=interference_sb_s0 --steps=1000000 --seed=0 --logdir=logs --del_exp_replay --minlen=5",
    "interference.py --num_tasks=2 --wandb_proj_name=interference --wandb_proj_name=interference --tag=interference_p2e0.5_sb_s3 --steps=1000000 --seed=3 --logdir=logs --del_exp_replay --minlen=5 --plan2explore --expl_intr_scale=0.5 --expl_extr_scale=0.5",
]
SUITE = {"train_minigrid.py": "minigrid", "train_minihack.py": "minihack", "interference.py": "interference"}
# Appended to shorten each command: a tiny model, 40 steps per task (task 0 adds a 55-step prefill
# episode, long enough for --minlen=50), one eval episode per task.
SHORT = [*TINY, "--prefill", "30", "--eval_every", "40", "--log_every", "20", "--cl.eval_eps_per_task", "1",
         "--dataset.batch", "2", "--dataset.length", "5", "--time_limit", "55", "--expl_head.layers", "1",
         "--expl_head.units", "16", "--disag_models", "2", "--wandb.mode", "disabled"]


def shorten(command: str, tmp_path) -> list[str]:
    script, *flags = shlex.split(command)
    flags = [re.sub(r"^--steps=.*", "--steps=40", f) for f in flags]
    flags = [re.sub(r"^--logdir=(.*)", lambda m: f"--logdir={tmp_path / m.group(1)}", f) for f in flags]
    return ["continual", SUITE[script], *flags, *SHORT]


def test_the_commands_match_the_seed_readme():
    text = "".join(p.read_text() for p in SEED_README.glob("002_*.txt")) if SEED_README.exists() else ""
    if not text:
        pytest.skip("../shared/seeds is not present")
    typed = [" ".join(line.split()[1:]) for line in text.splitlines() if line.startswith("python ") and ".py --" in line]
    assert [" ".join(c.split()) for c in COMMANDS] == [" ".join(t.split()) for t in typed if "dreamerv2/" not in t]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.split("--tag=")[1].split()[0] for c in COMMANDS])
def test_every_readme_command_runs(command, tmp_path, one_thread):
    argv = shorten(command, tmp_path)
    assert main(argv) == 0
    logdirs = [p.parent for p in tmp_path.rglob("metrics.jsonl")]
    assert len(logdirs) == 1
    logdir = logdirs[0]
    tag = re.search(r"--tag=(\S+)", command).group(1)
    assert tag in logdir.name  # the original's naming: {logdir}/minigrid_{tag}_{seed}
    rows = read_metrics(logdir)
    logged = set().union(*(row.keys() for row in rows))
    assert {"eval_return_0", "eval_success_0", "er_task_0", "train_return"} <= logged
    if "--del_exp_replay" in command:
        assert not (logdir / "train_episodes").exists()  # deleted after the final checkpoint
    counters = load_checkpoint(logdir / "checkpoint.pt")["counters"]
    tasks = 1 if "--proc" in command else int(re.search(r"--num_tasks=(\d)", command).group(1))
    assert counters["task_index"] == tasks


def test_task_lists_flags_and_errors(tmp_path):
    from torch_dreamer.runs.continual_cli import build
    from torch_dreamer.errors import UserError

    config, evals = build("minigrid", ["--cl", "--num_tasks=3", f"--logdir={tmp_path}"])
    assert config.cl.tasks == ["minigrid_MiniGrid-DoorKey-8x8-v0", "minigrid_MiniGrid-LavaCrossingS9N1-v0",
                               "minigrid_MiniGrid-SimpleCrossingS9N1-v0"] and evals == config.cl.tasks
    assert config.time_limit == 100 and config.render_size == [64, 64] and config.seed == 42
    config, _ = build("minihack", ["--cl", "--cl_small", "--num_tasks", "4", "--reservoir_sampling",
                                   "--recent_past_sampl_thres", "0.5", "--beta=0.5"])
    assert config.cl.tasks[1] == "minihack_MiniHack-Room-Trap-15x15-v0" and config.replay.eviction == "reservoir"
    assert config.replay.recent_past == 0.5 and config.loss_scales.kl == 0.5
    config, _ = build("minigrid", ["--cl", "--plan2explore", "--sep_exp_eval_policies", "--unbalanced_steps=10,20,30"])
    assert config.expl_behavior == "plan2explore" and config.grad_heads == ["decoder"] and not config.pred_discount
    assert config.eval_policy == "task" and config.cl.unbalanced_steps == [10, 20, 30]
    config, _ = build("minigrid", ["--env", "1", "--rssm.deter", "64"])  # no --cl: the one task --env names
    assert config.cl.tasks == ["minigrid_MiniGrid-LavaCrossingS9N1-v0"] and config.rssm.deter == 64
    with pytest.raises(UserError, match="unknown"):
        build("minigrid", ["--cl", "--no_such_flag", "1"])
    with pytest.raises(UserError, match="num_tasks"):
        build("minigrid", ["--cl", "--num_tasks=5"])


def test_task_schedule_repeats_and_unbalanced_budgets(tmp_path):
    from torch_dreamer.runs.continual import task_schedule
    from torch_dreamer.runs.continual_cli import build

    config, _ = build("minigrid", ["--cl", "--num_tasks=2", "--num_task_repeats=2", "--unbalanced_steps=100,300"])
    assert [(i, steps) for i, _, steps in task_schedule(config)] == [(0, 100), (1, 300), (0, 100), (1, 300)]


def test_interference_tasks_share_layout_and_start_and_differ_in_goal():
    from torch_dreamer.envs.fourrooms import interference_id, make_interference

    envs = [make_interference(interference_id(5, goal)) for goal in (0, 1)]
    for env in envs:
        env.reset()
    a, b = (env.unwrapped for env in envs)
    walls = lambda grid: [(x, y) for x in range(grid.width) for y in range(grid.height)
                          if grid.get(x, y) is not None and grid.get(x, y).type == "wall"]
    assert walls(a.grid) == walls(b.grid) and tuple(a.agent_pos) == tuple(b.agent_pos)
    goal = lambda env: [(x, y) for x in range(env.grid.width) for y in range(env.grid.height)
                        if env.grid.get(x, y) is not None and env.grid.get(x, y).type == "goal"]
    assert goal(a) != goal(b)
    # The layout is fixed across episodes, and another seed gives another layout (--proc, --env_seed).
    envs[0].reset(seed=123)
    assert walls(envs[0].unwrapped.grid) == walls(b.grid)
    other = make_interference(interference_id(6, 0))
    other.reset()
    assert walls(other.unwrapped.grid) != walls(a.grid)


def test_a_resumed_sequence_continues_where_it_stopped(tmp_path, one_thread, monkeypatch):
    """Ctrl-C in task 1; re-running the command continues task 1 at its step with the replay's exact
    membership (reservoir), and ends with the task index and counters of an uncut run."""
    from torch_dreamer.data import EpisodeStore
    from torch_dreamer.runs import continual

    def argv(name):
        return ["continual", "minigrid", "--cl", "--num_tasks=2", "--steps=60", "--seed=3", f"--logdir={tmp_path / name}",
                "--minlen=5", "--tag=r", "--reservoir_sampling", "--replay_capacity=150", *SHORT]

    assert main(argv("uncut")) == 0
    uncut = load_checkpoint(next((tmp_path / "uncut").rglob("checkpoint.pt")))["counters"]
    calls = {"n": 0}
    evaluate = continual.ContinualRun._evaluate

    def interrupting(self):
        calls["n"] += 1
        if calls["n"] == 3:  # the second evaluation of task 1, 40 steps into it
            raise KeyboardInterrupt
        return evaluate(self)

    monkeypatch.setattr(continual.ContinualRun, "_evaluate", interrupting)
    assert main(argv("cut")) == 130
    monkeypatch.setattr(continual.ContinualRun, "_evaluate", evaluate)
    path = next((tmp_path / "cut").rglob("checkpoint.pt"))
    saved = load_checkpoint(path)
    assert saved["counters"]["task_index"] == 1 and 0 < saved["counters"]["task_step"] < 60
    members = saved["replay"]["members"]
    restored = {}
    load_state = EpisodeStore.load_state_dict

    def spy(store, state):
        load_state(store, state)
        restored["names"] = [key.rsplit("/", 1)[-1] for key in store.keys()]

    monkeypatch.setattr(EpisodeStore, "load_state_dict", spy)
    assert main(argv("cut")) == 0
    assert restored["names"] == members  # exactly the held episodes, not "the newest files"
    final = load_checkpoint(path)["counters"]
    assert (final["task_index"], final["task_step"], final["step"]) == (uncut["task_index"], uncut["task_step"],
                                                                         uncut["step"])
    rows = read_metrics(path.parent)
    assert max(r["step"] for r in rows if "eval_success_1" in r) == final["step"]


def test_uncertainty_sampling_eval_skills_and_wandb_dir_run(tmp_path, one_thread, capsys):
    """--uncertainty_sampling trains on surprise-weighted chunks (priorities reach the checkpoint),
    --eval_skills evaluates MultiSkill too, --wandb_dir names wandb's folder and turns wandb on, and
    --cl.reference adds forward transfer to the final summary."""
    from torch_dreamer.runs.continual_cli import build

    reference = tmp_path / "ref"
    for task in range(2):  # single-task runs that never succeed: forward transfer is then the run's own AUC
        (reference / f"task_{task}").mkdir(parents=True)
        (reference / f"task_{task}" / "metrics.jsonl").write_text(
            "\n".join(json.dumps({"step": s, "eval_success_0": 0.0}) for s in (20, 40)) + "\n")
    flags = ["--cl", "--num_tasks=2", "--uncertainty_sampling", "--eval_skills", "--steps=40", "--tag=u",
             f"--logdir={tmp_path}", f"--wandb_dir={tmp_path / 'wb'}", "--minlen=5", "--cl.reference", str(reference)]
    config, evals = build("minigrid", flags + SHORT)
    assert config.replay.sampling == "uncertainty" and "wandb" in config.loggers
    assert config.wandb.dir == str(tmp_path / "wb") and evals[-1].endswith("MultiSkill-N2-v0")
    assert main(["continual", "minigrid", *flags, *SHORT]) == 0
    logdir = next(tmp_path.glob("minigrid_u_*/metrics.jsonl")).parent  # not the reference runs
    logged = set().union(*(row.keys() for row in read_metrics(logdir)))
    assert {"eval_return_0", "eval_return_1", "eval_return_2"} <= logged  # task 2 = MultiSkill (eval only)
    priority = load_checkpoint(logdir / "checkpoint.pt")["sampler_state"]["priority"]
    assert priority and all(np.isfinite(v) and v >= 0 for v in priority.values())
    assert (tmp_path / "wb").is_dir()
    finished = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Finished:")]
    assert finished and "cl_forward_transfer" in finished[-1]
