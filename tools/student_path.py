"""How far a reader walks from ``minivit.gelu`` to the arithmetic: ``python tools/student_path.py``.

A script of the repository, not installed with the package: run it from your clone, with
minivit installed there (``pip install -e .``).

Calls ``minivit.gelu`` on a (1024, 512) float32 tensor, then ``.sum().backward()``, under
``sys.settrace``, and counts the named functions of minivit's own files that run (lambdas and
comprehensions left out), and the files they sit in: in reference mode (the textbook bodies)
and in fast mode, the forward alone and forward and backward. ``--list`` prints them in the
order they first run.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np

import minivit

ROOT = os.path.dirname(minivit.__file__)


def student_path(reference: bool, backward: bool, shape=(1024, 512)) -> list:
    """The (file, function) pairs of minivit that one GELU call (and its backward) runs, in the
    order they first run; files relative to the package."""
    x = minivit.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                       requires_grad=True)
    seen: list = []

    def tracer(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(ROOT) \
                and not code.co_name.startswith("<"):
            key = (os.path.relpath(code.co_filename, ROOT), code.co_name)
            if key not in seen:
                seen.append(key)

    with minivit.reference_mode() if reference else contextlib.nullcontext():
        minivit.gelu(x).sum().backward()   # first call: imports and registries out of the count
        x.grad = None
        sys.settrace(tracer)
        try:
            y = minivit.gelu(x)
            if backward:
                y.sum().backward()
        finally:
            sys.settrace(None)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print every function")
    args = parser.parse_args()
    for reference in (True, False):
        for backward in (False, True):
            path = student_path(reference, backward)
            files = sorted({f for f, _ in path})
            print(f"{'reference' if reference else 'fast':9s} "
                  f"{'forward and backward' if backward else 'forward':20s} "
                  f"{len(path):3d} functions in {len(files):2d} files")
            if args.list:
                for f, name in path:
                    print(f"    {f}: {name}")


if __name__ == "__main__":
    main()
