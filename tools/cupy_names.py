"""Write the public names of a real CuPy install to ``tests/cupy_standin/cupy_names.json``.

The test suite's CuPy stand-in (``tests/cupy_standin``) offers only names that real CuPy has, so
code that passes on the stand-in cannot call something CuPy lacks. This script reads them from
an installed CuPy; it needs no GPU (``import cupy`` works without one):

    python -m venv /tmp/cupyenv && /tmp/cupyenv/bin/pip install 'cupy-cuda12x>=14'
    /tmp/cupyenv/bin/python tools/cupy_names.py

and commit the JSON file it writes.
"""
from __future__ import annotations

import importlib
import json
import pathlib

MODULES = ("cupy", "cupy.random", "cupy.linalg", "cupy.fft", "cupy.cuda", "cupy.cuda.runtime",
           "cupy.lib", "cupy.lib.stride_tricks", "cupyx", "cupyx.scipy", "cupyx.scipy.special")
CLASSES = {"ndarray": "cupy.ndarray", "RandomState": "cupy.random.RandomState",
           "Device": "cupy.cuda.Device", "MemoryPool": "cupy.cuda.MemoryPool",
           "ElementwiseKernel": "cupy.ElementwiseKernel",
           "ReductionKernel": "cupy.ReductionKernel", "RawKernel": "cupy.RawKernel",
           "Stream": "cupy.cuda.Stream", "Event": "cupy.cuda.Event"}
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "cupy_standin" / "cupy_names.json"


def _resolve(dotted: str):
    mod, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def main() -> None:
    import cupy  # noqa: PLC0415

    names = {"version": cupy.__version__, "modules": {}, "classes": {}}
    for m in MODULES:
        names["modules"][m] = sorted(n for n in dir(importlib.import_module(m))
                                     if not n.startswith("_"))
    for key, dotted in CLASSES.items():
        names["classes"][key] = sorted(n for n in dir(_resolve(dotted))
                                       if not n.startswith("_") or n.startswith("__"))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(names, indent=0, sort_keys=True) + "\n")
    print(f"wrote {OUT} (CuPy {cupy.__version__})")


if __name__ == "__main__":
    main()
