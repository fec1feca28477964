"""The replay anywhere (an S3-compatible server on loopback) and full-episode training with carried state."""

import gymnasium as gym
import numpy as np

from torch_dreamer.cli import main
from torch_dreamer.config import resolve
from torch_dreamer.data import count_episodes
from torch_dreamer.envs import wrap_env
from torch_dreamer.runs.checkpoint import load_checkpoint
from torch_dreamer.runs.train import Trainer
from tests.runs.conftest import TINY, read_metrics

SHORT = ["--configs", "gym_vector", "--task", "gym_CartPole-v1", "--prefill", "100", "--eval_every", "100",
         "--log_every", "50", "--replay.minlen", "5", "--dataset.batch", "4", "--dataset.length", "8"]


def test_sequential_mode_carries_the_state_across_batches(tmp_path, one_thread):
    config = resolve(["gym_vector"], TINY + SHORT[2:] + [
        "--logdir", str(tmp_path), "--steps", "200", "--dataset.mode", "sequential", "--train_every", "10"])
    envs = gym.vector.SyncVectorEnv([lambda: wrap_env(gym.make("CartPole-v1"), config)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    trainer = Trainer(config, envs, None)
    batches = []
    original = trainer.agent.train_step

    def spy(data, state=None, **kwargs):
        batches.append((data["is_first"][0].clone(), state))
        return original(data, state, **kwargs)

    trainer.agent.train_step = spy
    result = trainer.run()
    assert result["updates"] > 5
    # From the second batch on, the learner passes the previous batch's last posterior (B, ...) back in,
    # and the sampler continues episodes (is_first[0] False in most slots).
    carried = [state for _, state in batches[1:]]
    assert all(state is not None and state["deter"].shape[0] == 4 for state in carried)
    continuing = sum(int((~first).sum()) for first, _ in batches[1:])
    assert continuing > len(batches[1:])  # most slots continue an episode rather than restart


def test_replay_on_s3(tmp_path, s3_endpoint, one_thread):
    url = "s3://replay-bucket/cartpole"
    logdir = tmp_path / "run"
    assert main(["train", "--logdir", str(logdir), "--steps", "200", "--replay_dir", url, *SHORT, *TINY]) == 0
    episodes, steps = count_episodes(url)
    assert episodes > 3 and steps >= 150  # the unfinished last episode is not kept at the end of a run
    keys = [o["Key"] for o in s3_endpoint.list_objects_v2(Bucket="replay-bucket", Prefix="cartpole/")["Contents"]]
    assert all(k.startswith("cartpole/") and k.endswith(".npz") for k in keys)  # no temp objects left behind
    # A resumed run counts the episodes in the bucket: no second prefill.
    assert main(["train", "--logdir", str(logdir), "--steps", "260", "--replay_dir", url, *SHORT, *TINY]) == 0
    assert load_checkpoint(logdir / "checkpoint.pt")["counters"]["step"] >= 260
    assert not any(r.get("train_return") is not None and r["step"] < 200 for r in read_metrics(logdir)[-3:])
    # The same bucket trains offline, and workers write into it.
    assert main(["train", "--logdir", str(tmp_path / "offline"), "--offline_dir", url, "--steps", "5",
                 "--log_every", "5", "--eval_every", "5", *SHORT[:2], *SHORT[-6:], *TINY]) == 0
    assert main(["train", "--logdir", str(tmp_path / "workers"), "--steps", "150", "--workers", "1",
                 "--replay_dir", "s3://replay-bucket/workers", "--policy_dir", "s3://replay-bucket/policy",
                 "--policy_refresh_s", "0.5", *SHORT, *TINY]) == 0
    assert count_episodes("s3://replay-bucket/workers")[1] >= 150
    assert np.isfinite(load_checkpoint(tmp_path / "workers" / "checkpoint.pt")["counters"]["updates"])
