"""Data-parallel learners on torch.distributed (gloo on CPU): the 2-rank update equals the one-process
update on the same global batch, runs checkpoint and resume across world sizes, and 2 learners train
with Ray actors. Ranks are real processes: `torch.multiprocessing.spawn` for the update, torchrun (via
`dreamer train --nproc 2`) for runs."""

import os
import socket

import pytest
import torch
import torch.distributed as dist

from torch_dreamer.agent import dists
from torch_dreamer.agent.agent import Agent
from torch_dreamer.agent.grad_sync import GradSync
from torch_dreamer.cli import main
from torch_dreamer.config import resolve
from torch_dreamer.errors import UserError
from torch_dreamer.runs.checkpoint import load_checkpoint
from torch_dreamer.runs.distributed import broadcast_state
from tests.runs.conftest import TINY, read_metrics

T, B = 6, 4  # the global batch: B sequences of T steps, B / 2 per rank
# A reward normaliser that moves (momentum < 1) shows its statistics are averaged over the ranks.
AGENT_FLAGS = [*TINY, "--reward_norm.momentum", "0.9", "--deterministic", "True"]
OFFLINE = ["--configs", "gym_vector", "--replay.minlen", "5", "--dataset.batch", "4", "--dataset.length", "8",
           "--log_every", "2", "--eval_every", "1000", "--seed", "3", *TINY]


@pytest.fixture(autouse=True)
def loopback(monkeypatch):
    """Ranks talk over loopback only, one torch thread each (the CI machine has few cores)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_modes() -> None:
    """Replaces one-hot sampling (latents and actions) by the straight-through mode. Each process draws its
    own noise, row by row in a different order with 2 ranks than with 1, so without this the two updates
    differ by their random numbers; the comparison is about the gradient averaging."""
    mode = lambda self, sample_shape=torch.Size(): self.mode
    dists.OneHotDist.sample = mode
    dists.OneHotDist.rsample = mode


def make_agent() -> Agent:
    torch.manual_seed(0)
    config = resolve(["gym_vector"], AGENT_FLAGS)
    return Agent(config, {"vector": ((4,), "float32")}, 2, True)


def global_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    action = torch.nn.functional.one_hot(torch.randint(0, 2, (T, B), generator=generator), 2).float()
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    return {"vector": torch.randn(T, B, 4, generator=generator), "action": action,
            "reward": torch.randint(0, 2, (T, B), generator=generator).float(), "is_first": is_first,
            "is_last": torch.zeros(T, B, dtype=torch.bool), "is_terminal": torch.zeros(T, B, dtype=torch.bool)}


def one_update(batch: dict) -> dict:
    agent = make_agent()
    if dist.is_initialized():
        broadcast_state(agent)
    agent.train_step(batch)
    return {key: value.clone() for key, value in agent.state_dict().items() if torch.is_tensor(value)}


def rank_update(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    sample_modes()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        share = B // 2
        state = one_update({key: value[:, rank * share:(rank + 1) * share] for key, value in global_batch().items()})
        if rank == 0:
            torch.save(state, out)
        check_grad_sync(rank)
    finally:
        dist.destroy_process_group()
    # Gloo's worker threads can still hold finished async works at interpreter teardown, which sometimes
    # aborts the process ("terminate called without an active exception", pytorch#190489) after all the
    # work is done; leave without the teardown once the results are written.
    os._exit(0)


def check_grad_sync(rank: int) -> None:
    """Small buckets launch from backward (before the call), and a parameter only one rank used gets half
    that rank's gradient on both."""
    torch.manual_seed(0)
    used, unused_on_1 = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    # Buckets go in reverse order: used.bias, used.weight, then both of unused_on_1 (16 bytes each at most).
    params = [*unused_on_1.parameters(), *used.parameters()]
    sync = GradSync(params, bucket_bytes=16)
    assert len(sync.buckets) == 3
    x = torch.full((2, 3), float(rank + 1))
    loss = used(x).sum() + (unused_on_1(x).sum() if rank == 0 else 0)
    loss.backward(inputs=params)
    assert sync.next_launch >= 2, "the buckets of used parameters launch during backward"
    sync()
    expected_weight_grad = torch.full((3, 3), (2.0 * 1 + 2.0 * 2) / 2)  # sum over rows of x, averaged over ranks
    assert torch.allclose(used.weight.grad, expected_weight_grad)
    assert unused_on_1.weight.grad is not None
    assert torch.allclose(unused_on_1.weight.grad, torch.full((1, 3), 2.0 / 2))


def test_two_ranks_update_equals_one_process_update(tmp_path):
    sample_modes_now = dists.OneHotDist.sample, dists.OneHotDist.rsample
    try:
        sample_modes()
        torch.set_num_threads(1)
        single = one_update(global_batch())
    finally:
        dists.OneHotDist.sample, dists.OneHotDist.rsample = sample_modes_now
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(rank_update, args=(free_port(), str(out)), nprocs=2)
    ranks = torch.load(out)
    start = make_agent().state_dict()
    moved = [key for key in single if single[key].is_floating_point() and not torch.equal(single[key], start[key])]
    assert len(moved) > 10  # the update changed the world model, actor and critic
    for key, value in single.items():
        assert torch.allclose(ranks[key].float(), value.float(), atol=1e-5, rtol=0), key


def test_batch_must_divide_by_the_learners(tmp_path, capsys):
    code = main(["train", "--nproc", "2", "--logdir", str(tmp_path / "run"), "--offline_dir", str(tmp_path),
                 "--dataset.batch", "5", "--configs", "gym_vector"])
    assert code == 2
    assert "--dataset.batch 5 is the global batch and must divide by the 2 learners" in capsys.readouterr().err


def test_gpus_beyond_those_visible_and_unknown_lr_scaling_are_one_line_errors(tmp_path, capsys):
    logdir = tmp_path / "run"
    flags = ["--logdir", str(logdir), "--offline_dir", str(tmp_path), "--configs", "gym_vector"]
    visible = torch.cuda.device_count()
    assert main(["train", "--gpus", str(visible + 1), *flags]) == 2
    assert f"--gpus {visible + 1} asked for, but PyTorch sees {visible} CUDA GPUs" in capsys.readouterr().err
    assert main(["train", "--nproc", "2", "--lr_scaling", "cubic", *flags]) == 2
    err = capsys.readouterr().err
    assert "lr_scaling" in err and "cubic" in err and len(err.strip().splitlines()) == 1
    assert not logdir.exists()  # refused before anything was written


def test_compile_graph_is_refused_on_a_cpu_and_with_several_learners(tmp_path, capsys):
    logdir = tmp_path / "run"
    flags = ["--logdir", str(logdir), "--offline_dir", str(tmp_path), "--configs", "gym_vector", "--compile", "graph"]
    from torch_dreamer.runs.distributed import check_config

    with pytest.raises(UserError, match="--compile graph runs in one learner process"):
        check_config(resolve(["gym_vector"], ["--compile", "graph", "--workers", "1"]), 2)
    check_config(resolve(["gym_vector"], ["--compile", "graph", "--workers", "1"]), 1)
    if not torch.cuda.is_available():
        assert main(["train", *flags, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "needs a CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not logdir.exists()  # refused before anything was written


def test_lr_scaling_multiplies_every_learning_rate():
    from torch_dreamer.runs.distributed import scale_learning_rates

    config = resolve(["gym_vector"], ["--lr_scaling", "linear"])
    scaled = scale_learning_rates(config, 4)
    keys = [key for key in config.flat if key.endswith("_opt.lr")]
    assert len(keys) >= 3 and all(scaled.flat[k] == pytest.approx(4 * config.flat[k]) for k in keys)
    root = scale_learning_rates(config.update({"lr_scaling": "sqrt"}), 4)
    assert all(root.flat[k] == pytest.approx(2 * config.flat[k]) for k in keys)
    assert scale_learning_rates(config.update({"lr_scaling": "none"}), 4).flat["model_opt.lr"] == config.flat["model_opt.lr"]


def test_two_ranks_train_checkpoint_and_resume_on_one_and_two(tmp_path, capfd, make_official_episodes):
    data = make_official_episodes(tmp_path / "episodes", count=6, length=30)
    logdir = tmp_path / "run"
    args = ["train", "--logdir", str(logdir), "--offline_dir", str(data), *OFFLINE]
    assert main([*args, "--nproc", "2", "--steps", "4"]) == 0
    out = capfd.readouterr().out
    assert out.count("Finished:") == 1 and "learners 2" in out  # rank 0 alone reports
    first = load_checkpoint(logdir / "checkpoint.pt")
    assert first["counters"]["updates"] == 4
    assert [row["step"] for row in read_metrics(logdir) if "model_loss" in row] == [2, 4]  # one writer
    assert main([*args, "--steps", "6"]) == 0  # one process resumes the 2-rank checkpoint
    second = load_checkpoint(logdir / "checkpoint.pt")
    assert second["counters"]["updates"] == 6
    assert main([*args, "--nproc", "2", "--steps", "8"]) == 0
    third = load_checkpoint(logdir / "checkpoint.pt")
    assert third["counters"]["updates"] == 8
    changed = [key for key, value in third["agent"].items() if torch.is_tensor(value) and value.is_floating_point()
               and not torch.equal(value, second["agent"][key])]
    assert changed, "the 2-rank resume trained"


def test_two_learners_with_two_ray_actors(tmp_path, monkeypatch):
    """End to end on CartPole: Ray actors write the replay, 2 gloo learners train from it. Slow-ish (Ray and
    3 interpreters start); kept as small as the run allows."""
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    monkeypatch.setenv("RAY_ADDRESS", context.address_info["address"])  # the learner's RayPool joins this cluster
    try:
        logdir = tmp_path / "run"
        code = main(["train", "--nproc", "2", "--logdir", str(logdir), "--configs", "gym_vector",
                     "--task", "gym_CartPole-v1", "--steps", "220", "--prefill", "100", "--eval_every", "1000",
                     "--log_every", "50", "--replay.minlen", "5", "--dataset.batch", "4", "--dataset.length", "8",
                     "--policy_refresh", "5", "--policy_refresh_s", "0.5", "--train_ratio", "8",
                     "--workers", "2", "--worker_backend", "ray", *TINY])
    finally:
        ray.shutdown()
    assert code == 0
    counters = load_checkpoint(logdir / "checkpoint.pt")["counters"]
    assert counters["updates"] > 0 and counters["step"] >= 220
    logged = set().union(*(row.keys() for row in read_metrics(logdir)))
    assert {"model_loss", "replay_ratio", "actor_train-0_episodes", "actor_train-1_episodes"} <= logged
