"""One rank of the data-parallel tests (tests/test_distributed.py), started by mpiexec:

    mpiexec -n 2 python tests/dist_worker.py CONFIG.json [--resume RUN] [--stop-after N]
                                                         [--fail kill|raise|hang:STEP] [--standin]

Runs ``minivit.train.fit`` on the TrainConfig in CONFIG.json. Every file operation inside the
run folder is recorded by an audit hook into ``<folder>.writes-rank<r>.json`` (beside it), so
a test can check that rank 0 alone wrote there. ``--fail MODE:STEP``: rank 1 kills itself
(SIGKILL), raises, or stops (SIGSTOP: a hang) at its STEP-th training step.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys

from minivit import train
from minivit.distributed import get_world
from minivit.nn import functional as F


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--resume", default=None)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--fail", default=None)
    ap.add_argument("--standin", action="store_true",
                    help="run --device cuda on the CuPy stand-in of tests/cupy_standin")
    args = ap.parse_args()
    if args.standin:
        import cupy_standin  # noqa: PLC0415

        cupy_standin.install()
    cfg = train.TrainConfig.from_json(json.loads(open(args.config).read()))
    world = get_world()
    folder = os.path.abspath(args.resume or cfg.out)
    touched: list = []

    def audit(event, event_args):
        if event in ("open", "os.rename", "os.replace", "os.remove", "os.mkdir", "os.unlink"):
            path, mode = event_args[0], event_args[1] if event == "open" else "w"
            write = event != "open" or (isinstance(mode, str) and any(c in mode for c in "wax+"))\
                or (isinstance(event_args[2], int) and event_args[2] & (os.O_WRONLY | os.O_RDWR))
            inside = isinstance(path, (str, bytes, os.PathLike)) and \
                (os.path.abspath(os.fsdecode(path)) + os.sep).startswith(folder + os.sep)
            if write and inside:
                touched.append([event, os.fsdecode(path)])

    sys.addaudithook(audit)
    atexit.register(lambda: open(f"{folder}.writes-rank{world.rank}.json", "w").write(
        json.dumps(touched)))
    if args.fail:
        mode, step = args.fail.split(":")
        calls = [0]
        cross_entropy = F.cross_entropy

        def failing(*a, **k):
            calls[0] += 1
            if world.rank == 1 and calls[0] == int(step):
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if mode == "hang":
                    os.kill(os.getpid(), signal.SIGSTOP)
                raise RuntimeError(f"rank 1 failed on purpose at step {step}")
            return cross_entropy(*a, **k)

        F.cross_entropy = failing
    train.fit(cfg, resume=args.resume, stop_after_epochs=args.stop_after)


if __name__ == "__main__":
    main()
