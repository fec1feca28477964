"""Soak test of issue 10: kill -9, Ctrl-C and SIGTERM at random moments of `dreamer train`, then resume.

A logdir is trained again and again by `python -m torch_dreamer.cli train` subprocesses (CartPole,
`--configs gym_vector`, the tiny networks of tests/runs/conftest.py TINY, a checkpoint every 2 updates so
that many signals land in or near checkpoint writes). Each cycle starts the same command (so every cycle
after the first is a resume), waits a random time (a third of them within the first seconds: imports,
checkpoint load, the first steps) and sends one signal: SIGKILL to the process group (kill -9), SIGINT to the
process group (Ctrl-C in a terminal), or SIGTERM to the process (what Slurm and Kubernetes send). Every
`--fresh-every` cycles a new logdir starts, so signals also land in prefills of new runs. After each cycle it
checks:

- every episode file loads (none torn) and no episode is stored twice (same arrays);
- no episode file disappeared (episodes are never lost once written);
- Ctrl-C / SIGTERM: exit code 130, no traceback, "Interrupted at step N" and every one of those N steps on
  disk (nothing lost), and the checkpoint written at step N when the run had trained;
- kill -9: the steps lost are at most the unfinished episode (`time_limit` steps);
- the checkpoint's counters (step, updates) never go back, and a resumed run starts at or after them;
- metrics.jsonl: every line parses, except at most a partial last line right after a kill -9, which the
  next run removes.

At the end one more run finishes normally (`--steps` just above the counter) to show the logdir resumes.
Counts and failures go to benchmarks/results/soak-cpu-<date>.json.

    OMP_NUM_THREADS=1 python benchmarks/soak.py --each 20            # the issue's scale (~15 min on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/soak.py --each 8 --budget 300
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch_dreamer.data import list_episodes, load_episode  # noqa: E402
from torch_dreamer.runs.checkpoint import load_checkpoint  # noqa: E402
from tests.runs.conftest import TINY  # noqa: E402

TIME_LIMIT = 100  # CartPole episodes end by this many steps: the most a kill -9 may lose
COMMAND = ["--configs", "gym_vector", "--task", "gym_CartPole-v1", "--prefill", "1500", "--eval_every", "200",
           "--log_every", "50", "--eval_eps", "1", "--time_limit", str(TIME_LIMIT), "--dataset.batch", "4",
           "--dataset.length", "10", "--replay.minlen", "10", "--train_every", "5", "--checkpoint_every", "2",
           "--checkpoint_minutes", "0"] + TINY
SIGNALS = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}


def episodes(logdir: pathlib.Path) -> dict[str, dict]:
    """{file name: {"steps", "hash"}} of every train episode file; raises if one does not load."""
    out = {}
    for path in list_episodes(logdir / "train_episodes"):
        episode = load_episode(path)
        digest = hashlib.sha1()
        for key in sorted(episode):
            digest.update(key.encode())
            digest.update(episode[key].tobytes())
        out[path.name] = {"steps": len(episode["action"]) - 1, "hash": digest.hexdigest()}
    return out


def counters(logdir: pathlib.Path) -> dict:
    path = logdir / "checkpoint.pt"
    if not path.exists():
        return {"step": 0, "updates": 0}
    payload = load_checkpoint(path, check=True)
    return {"step": int(payload["counters"]["step"]), "updates": int(payload["counters"]["updates"])}


def metrics_lines(logdir: pathlib.Path) -> tuple[int, int, bool]:
    """(lines, unparseable lines, whether the only bad line is a partial last one)."""
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return 0, 0, True
    text = path.read_text()
    lines = text.splitlines()
    bad = []
    for index, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            bad.append(index)
    partial_tail = bad == [len(lines) - 1] and not text.endswith("\n")
    return len(lines), len(bad), not bad or partial_tail


def run_cycle(logdir, kind, delay, steps, env, after_line: str | None = None) -> dict:
    """One run, signalled `delay` seconds after it starts (or after it prints `after_line`)."""
    cmd = [sys.executable, "-m", "torch_dreamer.cli", "train", "--logdir", str(logdir), "--steps", str(steps)]
    proc = subprocess.Popen(cmd + COMMAND, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    started = time.time()
    lines, errors = [], []
    readers = [threading.Thread(target=lambda s=stream, into=into: into.extend(iter(s.readline, "")), daemon=True)
               for stream, into in ((proc.stdout, lines), (proc.stderr, errors))]
    for reader in readers:
        reader.start()
    if after_line is not None:  # e.g. the prefill: wait for its line, then a short random delay
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not any(after_line in line for line in lines):
            time.sleep(0.01)
    until = (started if after_line is None else time.time()) + delay
    while time.time() < until and proc.poll() is None:
        time.sleep(0.01)
    signalled = proc.poll() is None  # else it ended by itself before the signal
    if signalled:
        if kind == "term":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, SIGNALS[kind])
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"kind": kind, "hung": True}
    for reader in readers:
        reader.join(10)
    return {"kind": kind, "delay": round(time.time() - started if after_line else delay, 2), "signalled": signalled,
            "rc": proc.returncode, "after": after_line, "seconds": round(time.time() - started, 2),
            "out": "".join(lines), "err": "".join(errors)}


def check(cycle, before, after, logdir) -> list[str]:
    """The invariants of one cycle; returns the problems found."""
    problems = []
    kind, out, err = cycle["kind"], cycle.get("out", ""), cycle.get("err", "")
    if cycle.get("hung"):
        return ["the process did not exit after the signal"]
    lost_files = set(before["episodes"]) - set(after["episodes"])
    if lost_files:
        problems.append(f"{len(lost_files)} episode files disappeared")
    hashes = [e["hash"] for e in after["episodes"].values()]
    if len(hashes) != len(set(hashes)):
        problems.append(f"{len(hashes) - len(set(hashes))} duplicated episodes")
    if after["counters"]["step"] < before["counters"]["step"] or after["counters"]["updates"] < before["counters"]["updates"]:
        problems.append(f"checkpoint went back: {before['counters']} -> {after['counters']}")
    start = re.search(r"Resuming at step (\d+) of the checkpoint", out)
    if start and int(start.group(1)) < before["counters"]["step"]:
        problems.append(f"resumed at step {start.group(1)} before the checkpoint's {before['counters']['step']}")
    _, _, metrics_ok = after["metrics"]
    if not metrics_ok or (kind != "kill" and after["metrics"][1]):
        problems.append(f"metrics.jsonl has {after['metrics'][1]} unparseable lines")
    disk = sum(e["steps"] for e in after["episodes"].values())
    if kind == "kill":
        if cycle["signalled"] and cycle["rc"] != -signal.SIGKILL:
            problems.append(f"kill -9 gave exit code {cycle['rc']}")
        deficit = max(0, after["counters"]["step"] - disk)
        if deficit > TIME_LIMIT + before["deficit"]:
            problems.append(f"kill -9 lost {deficit - before['deficit']} steps (more than one unfinished episode)")
    else:
        if "Traceback" in err or "Traceback" in out:
            problems.append("traceback: " + err.strip().splitlines()[-1][:200] if err.strip() else "traceback")
        if cycle["signalled"] and cycle["rc"] not in (130, -signal.SIGTERM):
            problems.append(f"{kind} gave exit code {cycle['rc']}: {err.strip()[-200:]}")
        interrupted = re.search(r"Interrupted at step (\d+); (episodes(?: and checkpoint)?) saved", out)
        if interrupted:
            step = int(interrupted.group(1))
            if disk + before["deficit"] < step:
                problems.append(f"interrupted at step {step} but only {disk} steps on disk "
                                f"(+{before['deficit']} lost earlier)")
            if "checkpoint" in interrupted.group(2) and after["counters"]["step"] != step:
                problems.append(f"checkpoint at step {after['counters']['step']}, interrupted at {step}")
    return problems


def snapshot(logdir) -> dict:
    eps, ctr = episodes(logdir), counters(logdir)
    disk = sum(e["steps"] for e in eps.values())
    return {"episodes": eps, "counters": ctr, "metrics": metrics_lines(logdir), "disk": disk,
            "deficit": max(0, ctr["step"] - disk)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--each", type=int, default=20, help="signals of each kind (kill -9, Ctrl-C, SIGTERM)")
    parser.add_argument("--budget", type=float, default=0, help="stop starting cycles after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=12.0)
    parser.add_argument("--fresh-every", type=int, default=7,
                        help="cycles per logdir (a new run, signalled in its prefill); not a multiple of 3, so "
                             "each kind of signal lands in prefills")
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the logdir")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    root = pathlib.Path(tempfile.mkdtemp(prefix="soak-"))
    kinds = [kind for _ in range(args.each) for kind in ("kill", "int", "term")]
    started, results, failures = time.time(), [], []
    steps = 10**7  # never reached: every cycle ends by its signal
    for index, kind in enumerate(kinds):
        if args.budget and time.time() - started > args.budget:
            break
        logdir = root / f"run{index // args.fresh_every}"
        fresh = index % args.fresh_every == 0
        early = rng.random() < 1 / 3  # the first moments of a (resumed) run: imports, checkpoint load, first steps
        if fresh:  # a new run: signalled in its prefill
            delay, after_line = rng.uniform(0.0, 0.8), "Prefill dataset"
        else:
            delay, after_line = (rng.uniform(1.0, 4.0) if early else rng.uniform(4.0, args.max_delay)), None
        before = snapshot(logdir)
        cycle = run_cycle(logdir, kind, delay, steps, env, after_line)
        try:
            after = snapshot(logdir)
            problems = check(cycle, before, after, logdir)
        except Exception as error:  # a torn file or checkpoint: the worst outcome, recorded as such
            after, problems = before, [f"unreadable after the signal: {type(error).__name__}: {error}"]
        phase = "prefill" if cycle.get("after") else "first seconds" if delay < 4.0 else "training/evaluation"
        summary = {k: v for k, v in cycle.items() if k not in ("out", "err")}
        if problems:
            summary.update({"out_tail": cycle.get("out", "")[-400:], "err_tail": cycle.get("err", "")[-400:]})
        summary.update({"logdir": logdir.name, "phase": phase, "step": after["counters"]["step"], "updates": after["counters"]["updates"],
                        "episodes": len(after["episodes"]), "disk_steps": after["disk"], "problems": problems})
        results.append(summary)
        failures += [f"cycle {index} ({kind}, {delay:.1f}s): {p}" for p in problems]
        print(f"[{index:2d}] {kind:4s} after {delay:4.1f}s rc {cycle.get('rc')} step {summary['step']} updates "
              f"{summary['updates']} episodes {summary['episodes']}" + (f"  PROBLEMS {problems}" if problems else ""),
              flush=True)
    # A final run that ends by itself: the logdir resumes and finishes after everything above.
    final_target = counters(logdir)["step"] + 100
    before = snapshot(logdir)
    final = run_cycle(logdir, "int", 600, max(final_target, before["disk"] + 100), env)
    after = snapshot(logdir)
    final_ok = final.get("rc") == 0 and "Finished" in final.get("out", "") and after["metrics"][1] == 0
    stale = [p.name for p in logdir.rglob(".tmp-*")]  # the last logdir, after its final clean run
    if not final_ok:
        failures.append(f"final run: rc {final.get('rc')}: {final.get('err', '')[-300:]}")
    if stale:
        failures.append(f"temp files left after the final run: {stale[:5]}")
    count = lambda kind, key=None: sum(1 for r in results if r["kind"] == kind and (key is None or key(r)))
    report = {
        "what": "kill -9 / Ctrl-C / SIGTERM at random moments of `dreamer train` (CartPole, tiny networks), then resume",
        "date": datetime.date.today().isoformat(),
        "scale": f"{len(results)} cycles ({args.each} of each kind asked"
                 + (f", stopped by a {args.budget:.0f} s budget" if len(results) < len(kinds) else "")
                 + "); the issue asks 20 of each",
        "machine": f"{os.cpu_count()} CPU cores (shared), torch threads 1",
        "seconds": round(time.time() - started, 1),
        "signals": {kind: {"sent": count(kind, lambda r: r.get("signalled")),
                           "clean": count(kind, lambda r: not r["problems"]),
                           "in_prefill": count(kind, lambda r: r["phase"] == "prefill"),
                           "in_first_4s": count(kind, lambda r: r["phase"] == "first seconds"),
                           "later": count(kind, lambda r: r["phase"] == "training/evaluation")}
                    for kind in ("kill", "int", "term")},
        "resumed": f"{sum(1 for i, r in enumerate(results) if i % args.fresh_every and not r['problems'])}/"
                   f"{sum(1 for i, _ in enumerate(results) if i % args.fresh_every)} cycles that resumed an "
                   f"interrupted run passed every check ({len({r['logdir'] for r in results})} logdirs)",
        "final_run_finished": final_ok,
        "final": {"step": after["counters"]["step"], "updates": after["counters"]["updates"],
                  "episodes": len(after["episodes"]), "disk_steps": after["disk"],
                  "duplicated_episodes": len(after["episodes"]) - len({e["hash"] for e in after["episodes"].values()}),
                  "metrics_lines": after["metrics"][0], "metrics_unparseable": after["metrics"][1]},
        "failures": failures,
        "cycles": results,
    }
    out = pathlib.Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"soak-cpu-{report['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cycles"}, indent=1))
    print(f"written {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
