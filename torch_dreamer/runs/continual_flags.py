"""Continual-Dreamer's command lines, unchanged: `python train_minigrid.py --cl --num_tasks=3 ...` becomes
`dreamer continual minigrid --cl --num_tasks=3 ...`.

Flags keep their original names and meanings (reference: ../shared/reference/continual-dreamer.md §2) and
map onto config keys; any other `--key value` of our config works too, and unknown flags are one-line
errors (the original ignored them). `--key=value` and `--key value` both work; booleans work bare.

| flag | config key(s) |
|---|---|
| `--cl` | `cl.enabled` (off: one task, `--env` picks it) |
| `--num_tasks`, `--num_task_repeats`, `--unbalanced_steps a,b,..` | `cl.num_tasks`, `cl.num_task_repeats`, `cl.unbalanced_steps` |
| `--steps` (per task) | `cl.steps` |
| `--env`, `--cl_small`, `--eval_skills`, `--proc`, `--env_seed` | `cl.env`, `cl.small`, `cl.eval_skills`, `cl.proc`, `cl.env_seed` |
| `--seed`, `--logdir`, `--tag` | `seed`; logdir `{logdir}/minigrid_{tag}_{seed}` (minigrid, interference), `{logdir}/minihack_{tag}{seed}` |
| `--del_exp_replay` | `cl.del_exp_replay` (after the final checkpoint) |
| `--sep_exp_eval_policies` | `eval_policy task` (without it: `explore`, the original's shared policy) |
| `--wandb_proj_name`, `--wandb_group`, `--wandb_dir` | `wandb.project`, `wandb.group`, `wandb.dir`; any of them adds `wandb` to `loggers` (offline unless `WANDB_MODE` or `--wandb.mode` say otherwise) |
| `--minlen` | `replay.minlen` |
| `--rssm_full_recon` | with p2e: `grad_heads [decoder, reward, discount]`, `pred_discount True`; else `[decoder]`, `False` |
| `--state_bonus`, `--state_bonus_keep` | `cl.state_bonus`, `cl.state_bonus_keep` |
| `--plan2explore`, `--expl_intr_scale`, `--expl_extr_scale`, `--expl_every` | `expl_behavior plan2explore` and the same keys |
| `--reservoir_sampling`, `--coverage_sampling` | `replay.eviction reservoir`, `coverage` |
| `--recent_past_sampl_thres p`, `--reward_sampling`, `--uncertainty_sampling` | `replay.recent_past p`, `replay.sampling reward`, `uncertainty` |
| `--replay_capacity`, `--batch_size`, `--train_every`, `--beta` | `replay.capacity`, `dataset.batch`, `train_every`, `loss_scales.kl` |
| `--rssm_stoch`, `--rssm_discrete`, `--actor_ent`, `--discount` | `rssm.stoch`, `rssm.discrete`, `actor_ent`, `discount` |
"""

from __future__ import annotations

from torch_dreamer.errors import UserError

# flag -> (kind, config key or None when handled by `translate`)
FLAGS = {
    "cl": ("bool", "cl.enabled"),
    "num_tasks": ("int", "cl.num_tasks"),
    "num_task_repeats": ("int", "cl.num_task_repeats"),
    "unbalanced_steps": ("list", "cl.unbalanced_steps"),
    "cl_small": ("bool", "cl.small"),
    "steps": ("float", "cl.steps"),
    "env": ("int", "cl.env"),
    "seed": ("int", "seed"),
    "tag": ("str", None),
    "logdir": ("str", None),
    "del_exp_replay": ("bool", "cl.del_exp_replay"),
    "sep_exp_eval_policies": ("bool", None),
    "wandb_proj_name": ("str", "wandb.project"),
    "wandb_group": ("str", "wandb.group"),
    "wandb_dir": ("str", "wandb.dir"),
    "minlen": ("int", "replay.minlen"),
    "rssm_full_recon": ("bool", None),
    "state_bonus": ("bool", "cl.state_bonus"),
    "state_bonus_keep": ("bool", "cl.state_bonus_keep"),
    "plan2explore": ("bool", None),
    "expl_intr_scale": ("float", "expl_intr_scale"),
    "expl_extr_scale": ("float", "expl_extr_scale"),
    "expl_every": ("int", "expl_every"),
    "reservoir_sampling": ("bool", None),
    "coverage_sampling": ("bool", None),
    "recent_past_sampl_thres": ("float", "replay.recent_past"),
    "reward_sampling": ("bool", None),
    "uncertainty_sampling": ("bool", None),
    "replay_capacity": ("float", "replay.capacity"),
    "batch_size": ("int", "dataset.batch"),
    "train_every": ("int", "train_every"),
    "beta": ("float", "loss_scales.kl"),
    "rssm_stoch": ("int", "rssm.stoch"),
    "rssm_discrete": ("int", "rssm.discrete"),
    "actor_ent": ("str", "actor_ent"),
    "discount": ("float", "discount"),
    "env_seed": ("int", "cl.env_seed"),
    "proc": ("bool", "cl.proc"),
    "eval_skills": ("bool", "cl.eval_skills"),
}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def split_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """(Continual-Dreamer flags by name with raw string values, the other `--key value` flags)."""
    known, rest, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument '{arg}'; flags look like --key value or --key=value")
        name, eq, value = arg[2:].partition("=")
        if name in FLAGS:
            kind = FLAGS[name][0]
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if not eq and kind == "bool" and (nxt is None or nxt.startswith("--") or nxt.lower() not in TRUE + FALSE):
                value = "true"  # a bare boolean flag
            elif not eq:
                if nxt is None:
                    raise UserError(f"flag --{name} needs a value")
                value, i = nxt, i + 1
            known[name] = value
        else:
            rest.append(f"--{name}")
            if eq:
                rest.append(value)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                rest.append(argv[i + 1])  # our config's `--key value`; its own parser checks it
                i += 1
        i += 1
    return known, rest


def _typed(name: str, value: str):
    kind = FLAGS[name][0]
    try:
        if kind == "bool":
            if value.lower() not in TRUE + FALSE:
                raise ValueError
            return value.lower() in TRUE
        if kind == "int":
            return int(float(value))
        if kind == "float":
            return float(value)
        if kind == "list":
            return [float(v) for v in value.strip("[]").replace(" ", "").split(",") if v]
        return value
    except ValueError:
        raise UserError(f"flag --{name} expects {kind}, got '{value}'") from None


def translate(known: dict) -> tuple[dict, dict]:
    """(config updates by dotted key, run options: tag, logdir) of parsed Continual-Dreamer flags."""
    values = {name: _typed(name, raw) for name, raw in known.items()}
    updates = {FLAGS[name][1]: value for name, value in values.items() if FLAGS[name][1]}
    if "sep_exp_eval_policies" in values:
        updates["eval_policy"] = "task" if values["sep_exp_eval_policies"] else "explore"
    if values.get("plan2explore"):
        updates["expl_behavior"] = "plan2explore"
        full = values.get("rssm_full_recon", False)
        updates["grad_heads"] = ["decoder", "reward", "discount"] if full else ["decoder"]
        updates["pred_discount"] = bool(full)
    strategies = [name for name in ("reservoir_sampling", "coverage_sampling") if values.get(name)]
    if len(strategies) > 1:
        raise UserError("--reservoir_sampling and --coverage_sampling choose different evictions; pick one")
    if strategies:
        updates["replay.eviction"] = strategies[0].split("_")[0]
    if {"wandb_proj_name", "wandb_group", "wandb_dir"} & set(values):
        # The original always logged to wandb; here naming a project turns it on (offline unless
        # WANDB_MODE or --wandb.mode say otherwise); an explicit --loggers still wins.
        updates["loggers"] = ["terminal", "jsonl", "tensorboard", "wandb"]
    if values.get("reward_sampling"):
        updates["replay.sampling"] = "reward"   # as the original, it overrides --recent_past_sampl_thres
    elif values.get("uncertainty_sampling"):
        updates["replay.sampling"] = "uncertainty"
    if "actor_ent" in updates:
        try:
            updates["actor_ent"] = float(updates["actor_ent"])
        except ValueError:
            pass  # a schedule string such as linear(3e-3,3e-4,1e6)
    options = {"tag": values.get("tag", ""), "logdir": values.get("logdir", "logs")}
    return updates, options


def run_logdir(suite: str, options: dict, seed: int) -> str:
    """The original's naming: `{logdir}/minigrid_{tag}_{seed}` and `{logdir}/minihack_{tag}{seed}`."""
    tag = options["tag"]
    if suite == "minihack":
        return f"{options['logdir']}/minihack_{tag}{seed}"
    return f"{options['logdir']}/{suite}_{tag}_{seed}"
