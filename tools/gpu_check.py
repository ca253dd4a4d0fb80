"""Everything to check and measure on the day a GPU is at hand, in one command (< 8 minutes).

    pip install -e ".[gpu,test]"          # ".[gpu-cuda13,test]" for CUDA 13 drivers
    python tools/gpu_check.py --out gpu_check.json [--data /path/to/cifar-10-batches-py]

It runs, each in its own process with a time limit:
  1. the GPU tests, ``pytest -m gpu`` (every CUDA-parametrised test, now on the real GPU),
  2. ``minivit bench --device cuda`` for the five CIFAR models (batch 128),
  3. one epoch of vit_cifar on full CIFAR-10 with ``minivit train --device cuda``
     (``--data`` names a CIFAR-10 folder or archive; without it minivit downloads it),
and writes one JSON file: the GPU's name, memory and compute capability, CuPy's and CUDA's
versions, the test counts, every bench row, the epoch's time, images per second and accuracy,
and each step's exit code and duration. A failed step is recorded and the next one runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gpu_info() -> dict:
    """The GPU and software versions, or why there is no usable GPU."""
    from minivit.autograd import backend  # noqa: PLC0415

    if not backend.is_cupy_available():
        return {"usable": False, "reason": backend.cuda_unavailable_reason()}
    cp = backend._import_cupy()
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {"usable": True, "name": name.decode() if isinstance(name, bytes) else str(name),
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cp.cuda.runtime.driverGetVersion()}


def run(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd`` from the repository root: exit code, seconds, the output's tail."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "tail": out[-3000:]}


def pytest_counts(output: str) -> dict:
    """{'passed': n, 'failed': n, ...} from pytest's summary line."""
    return {k: int(n) for n, k in re.findall(
        r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", output)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    ap.add_argument("--data", help="CIFAR-10 folder or archive for the training epoch")
    ap.add_argument("--skip", action="append", default=[], choices=["tests", "bench", "epoch"],
                    help="leave out a step (repeatable)")
    args = ap.parse_args(argv)
    py = sys.executable
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": gpu_info()}
    if not report["gpu"]["usable"]:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"no usable GPU: {report['gpu']['reason']}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        if "tests" not in args.skip:
            r = run([py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                    timeout=150)
            report["tests"] = {**r, "counts": pytest_counts(r["tail"])}
        if "bench" not in args.skip:
            bench_json = Path(tmp) / "bench.json"
            r = run([py, "-m", "minivit", "bench", "--device", "cuda", "--steps", "10",
                     "--json", str(bench_json)], timeout=180)
            report["bench"] = {**r, "rows": json.loads(bench_json.read_text())
                               if bench_json.exists() else None}
        if "epoch" not in args.skip:
            run_dir = Path(tmp) / "vit-epoch"
            cmd = [py, "-m", "minivit", "train", "--model", "vit_cifar", "--dataset", "cifar10",
                   "--epochs", "1", "--device", "cuda", "--out", str(run_dir), "--no-progress"]
            if args.data:
                cmd += ["--data", args.data]
            r = run(cmd, timeout=150)
            metrics = run_dir / "metrics.jsonl"
            report["epoch"] = {**r, "metrics": [json.loads(ln) for ln in
                                                metrics.read_text().splitlines() if ln.strip()]
                               if metrics.exists() else None}
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    ok = all(report[k]["rc"] == 0 for k in ("tests", "bench", "epoch") if k in report)
    print(f"wrote {args.out} ({report['gpu']['name']}): "
          + ", ".join(f"{k} rc={report[k]['rc']} in {report[k]['seconds']} s"
                      for k in ("tests", "bench", "epoch") if k in report))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
