"""Compile every CUDA kernel of minivit with NVRTC, for float and double, without a GPU.

NVRTC is a library (``pip install nvidia-cuda-nvrtc-cu12``); compiling to PTX needs no GPU and
no driver, so this catches syntax and type errors in the kernels on any machine:

    pip install nvidia-cuda-nvrtc-cu12
    python tools/nvrtc_check.py            # or --arch compute_75 --arch compute_90 ...

The RawKernels (``minivit/kernels/cuda_rows.py``, ``cuda_conv.py``) are compiled as they are;
an ElementwiseKernel or ReductionKernel body (``minivit/kernels/cuda.py``, the data kernels of
``minivit/data/gpu.py``) is compiled inside a kernel of the shape CuPy generates for it (its
parameters as ``T`` values or references, its statements in the loop body). Exits 1 naming the
kernel and NVRTC's log on the first failure.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import re
import sys
import sysconfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from minivit.data import gpu as data_gpu  # noqa: E402
from minivit.kernels import cuda_conv, cuda_rows  # noqa: E402

CTYPES = {"float32": "float", "float64": "double", "int32": "int", "bool": "bool",
          "int64": "long long", "uint8": "unsigned char"}


def _libnvrtc():
    roots = [sysconfig.get_paths()["purelib"]] + sys.path
    for root in roots:
        for path in glob.glob(os.path.join(root, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")):
            if "alt" not in path and "builtins" not in path:
                return ctypes.CDLL(path)
    return ctypes.CDLL("libnvrtc.so.12")


def compile_source(lib, src: str, name: str, arch: str) -> str:
    """'' when it compiles, else NVRTC's log."""
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    if rc:
        return f"nvrtcCreateProgram failed ({rc})"
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++14"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return log.value.decode(errors="replace") if rc else ""


def _param_decl(spec: str, t: str, out: bool) -> list[str]:
    """C parameters for CuPy's: ``T x`` a value (a reference for outputs), ``raw T x`` a
    pointer (indexed as CuPy's CArray is); placeholders other than T are int64 here (the
    class-index targets)."""
    params = [p.split() for p in spec.split(",") if p.strip()]
    return [f"{'const ' if w[0] == 'raw' and not out else ''}"
            f"{t if w[-2] == 'T' else CTYPES.get(w[-2], w[-2])}"
            f"{' *' if w[0] == 'raw' else ' &' if out else ''} {w[-1]}" for w in params]


def elementwise_source(kernel, t: str) -> str:
    """A kernel shaped as CuPy's for an ElementwiseKernel / ReductionKernel description."""
    ins = _param_decl(kernel["in"], t, False)
    outs = _param_decl(kernel["out"], t, True)
    body = kernel["body"]
    args = ", ".join(ins + outs)
    return (f"typedef {t} T;\ntypedef long long I;\n"
            f"__device__ void body(long long i, {args}) {{\n{body};\n}}\n"
            f"extern \"C\" __global__ void {kernel['name']}() {{}}\n")


def elementwise_kernels():
    """The ElementwiseKernel/ReductionKernel descriptions of minivit.kernels.cuda, read from
    its source (no CuPy needed)."""
    import inspect  # noqa: PLC0415

    from minivit.kernels import cuda  # noqa: PLC0415

    src = inspect.getsource(cuda._k)
    kernels = []
    src = re.sub(r"#[^\n]*", "", src)   # comments between the arguments
    for m in re.finditer(r'"(\w+)": ew\(\s*((?:"[^"]*"\s*)+),\s*((?:"[^"]*"\s*)+),\s*((?:"[^"]*"\s*'
                         r'(?:#[^\n]*\n\s*)?)+),\s*"(\w+)"', src):
        def joined(group):
            return "".join(re.findall(r'"([^"]*)"', group))
        kernels.append({"name": m.group(5), "in": joined(m.group(2)), "out": joined(m.group(3)),
                        "body": joined(m.group(4))})
    return kernels


def data_kernels():
    """The ElementwiseKernels that build a batch on the GPU (``minivit.data.gpu.SPECS``)."""
    return [{"name": name, "in": ins, "out": outs, "body": body}
            for ins, outs, body, name in data_gpu.SPECS.values()]


def raw_kernels():
    """(module, kernel name) of every RawKernel."""
    return [(mod, name) for mod in (cuda_rows, cuda_conv) for name in mod.SOURCES]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="e.g. compute_80 (default 75, 80, 90)")
    args = ap.parse_args(argv)
    archs = args.arch or ["compute_75", "compute_80", "compute_90"]
    lib = _libnvrtc()
    n = 0
    for arch in archs:
        for t, dtype in (("float", "float32"), ("double", "float64")):
            for mod, name in raw_kernels():
                log = compile_source(lib, mod.source(name, dtype), name, arch)
                if log:
                    print(f"FAILED {name} ({t}, {arch}):\n{log}")
                    return 1
                n += 1
            for k in elementwise_kernels() + data_kernels():
                log = compile_source(lib, elementwise_source(k, t), k["name"], arch)
                if log:
                    print(f"FAILED {k['name']} ({t}, {arch}):\n{log}")
                    return 1
                n += 1
    print(f"{n} compilations OK ({', '.join(archs)}; float and double)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
