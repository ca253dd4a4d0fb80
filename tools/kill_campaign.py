"""Kill micro training runs with SIGKILL (kill -9) at random moments and check nothing is lost.

    python tools/kill_campaign.py --kills 60 --seed 1

Each trial starts ``minivit train`` on a micro ViT (3 epochs of 96 images, about a second of
training), kills it at a random moment after its run folder appears, checks the folder
(``minivit.runfolder.check_folder``: last/best/metrics/config consistent), resumes it (killed
again at random, up to ``--kills-per-trial`` times), lets the last resume finish, and compares
the result with an uninterrupted run: last.npz and best.npz bit for bit, metrics.jsonl and
steps.jsonl line for line (timings aside). The counts printed at the end are the campaign's
result. ``tests/test_crash.py`` uses the same helpers with kills at fixed points.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minivit.checkpoint import load_checkpoint, tree_leaves
from minivit.runfolder import check_folder, read_log

MICRO = ["--model", "vit_cifar", "--model-arg", "depth=1", "--model-arg", "embed_dim=16",
         "--model-arg", "num_heads=2", "--model-arg", "mlp_ratio=2.0",
         "--model-arg", "drop_path_rate=0.1", "--epochs", "3", "--batch-size", "32",
         "--train-limit", "96", "--test-limit", "64", "--eval-batch-size", "64",
         "--lr", "0.003", "--warmup-epochs", "0.5", "--log-interval", "2", "--no-progress"]
TIMINGS = ("epoch_time_s", "train_imgs_per_s", "time_s", "imgs_per_s")


def train_command(run: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "minivit", "train",
            *(["--resume", str(run)] if resume else ["--out", str(run)]), *MICRO]


def environment(kill_at: str | None = None) -> dict:
    env = dict(os.environ, MINIVIT_NO_REEXEC="1", PYTHONHASHSEED="0")
    env.pop("MINIVIT_TEST_KILL_AT", None)
    if kill_at:
        env["MINIVIT_TEST_KILL_AT"] = kill_at
    return env


def train(run: Path, resume: bool, kill_at: str | None = None, timeout: float = 300):
    """Run ``minivit train`` to its end, or to its self-kill at the crash point ``kill_at``."""
    return subprocess.run(train_command(run, resume), env=environment(kill_at), timeout=timeout,
                          capture_output=True, text=True)


def train_and_kill(run: Path, resume: bool, delay: float, timeout: float = 300):
    """Start ``minivit train``; ``delay`` seconds after its run folder holds config.json,
    SIGKILL it. Returns (returncode, killed)."""
    proc = subprocess.Popen(train_command(run, resume), env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    while proc.poll() is None and not (run / "config.json").exists():
        if time.monotonic() - start > timeout:
            proc.kill()
            raise TimeoutError("the run folder never appeared")
        time.sleep(0.005)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout)
    return proc.returncode, killed


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def differences(run: Path, reference: Path) -> list[str]:
    """Where a finished run differs from the reference run (timings and the folder name in
    the saved config aside): checkpoints bit for bit, the logs line for line."""
    found = []
    for name in ("last.npz", "best.npz"):
        a = dict(tree_leaves(load_checkpoint(run / name)))
        b = dict(tree_leaves(load_checkpoint(reference / name)))
        if a.keys() != b.keys():
            found.append(f"{name}: entries differ")
            continue
        for key, va in a.items():
            if key in ("/config/out",):
                continue
            vb = b[key]
            same = (va.dtype == vb.dtype and va.shape == vb.shape
                    and va.tobytes() == vb.tobytes()) if isinstance(va, np.ndarray) else va == vb
            if not same:
                found.append(f"{name}: {key} differs")
    for name, key in (("metrics.jsonl", "epoch"), ("steps.jsonl", "step")):
        a = _without_timings(read_log(run / name, key))
        b = _without_timings(read_log(reference / name, key))
        if a != b:
            found.append(f"{name} differs ({len(a)} vs {len(b)} lines)")
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    if leftovers:
        found.append(f"left behind: {leftovers}")
    return found


def where_it_died(run: Path) -> str:
    """A rough label of the moment a kill hit, from what it left."""
    names = [p.name for p in run.iterdir()] if run.exists() else []
    tmp = [n for n in names if n.endswith(".tmp")]
    if tmp:
        return "inside a save of " + tmp[0].split(".")[1] + "." + tmp[0].split(".")[2]
    raw = (run / "metrics.jsonl").read_bytes() if (run / "metrics.jsonl").exists() else b""
    if raw and not raw.endswith(b"\n"):
        return "inside a metrics append"
    if "last.npz" not in names:
        return "before the first checkpoint"
    return f"training (last.npz at epoch {load_checkpoint(run / 'last.npz')['epoch']})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50, help="SIGKILLs in all (default 50)")
    ap.add_argument("--kills-per-trial", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    reference = root / "reference"
    proc = subprocess.Popen(train_command(reference, False), env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (reference / "config.json").exists():
        time.sleep(0.005)
    t0 = time.monotonic()
    if proc.wait() != 0:
        print(proc.stderr.read(), file=sys.stderr)
        return 1
    span = time.monotonic() - t0   # kills land between config.json and the end of the run
    print(f"reference run: {span:.1f} s from its config.json to its end", flush=True)
    counts = {"kills": 0, "exited before the kill": 0, "consistent after a kill": 0,
              "inconsistent after a kill": 0, "trials": 0, "resumed bit-exact": 0,
              "resume differs": 0, "resume failed": 0}
    places: dict[str, int] = {}
    trial = 0
    while counts["kills"] < args.kills:
        trial += 1
        run = root / f"trial{trial:03d}"
        resume = False
        for _ in range(rng.randint(1, args.kills_per_trial)):
            rc, killed = train_and_kill(run, resume, rng.uniform(0.0, span))
            resume = True
            if not killed:
                counts["exited before the kill"] += 1
                break
            counts["kills"] += 1
            place = where_it_died(run)
            key = place.split(" (")[0] if place.startswith("training") else place
            places[key] = places.get(key, 0) + 1
            problems = check_folder(run)
            counts["consistent after a kill" if not problems else "inconsistent after a kill"] += 1
            for p in problems:
                print(f"trial {trial}: after a kill {place}: {p}")
        counts["trials"] += 1
        r = train(run, resume=resume)
        if r.returncode != 0:
            counts["resume failed"] += 1
            print(f"trial {trial}: resume failed: {r.stderr.strip()[-300:]}")
            continue
        diff = differences(run, reference)
        counts["resumed bit-exact" if not diff else "resume differs"] += 1
        print(f"trial {trial}: {counts['kills']} kills so far", flush=True)
        for d in diff:
            print(f"trial {trial}: {d}")
        if not args.keep:
            shutil.rmtree(run)
    print(json.dumps({"counts": counts, "where the kills landed": places}, indent=2))
    if not args.keep:
        shutil.rmtree(root)
    bad = counts["inconsistent after a kill"] + counts["resume differs"] + counts["resume failed"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
