"""CuPy's ElementwiseKernel and ReductionKernel for the stand-in: the CUDA-C body interpreted.

The subset our kernels use: statements ``T u = expr;`` and ``name = expr;``; expressions with
``+ - * /``, comparisons, ``?:``, parentheses, casts ``(T)`` / ``(float)`` / ``(double)``, the
math functions below, identifiers and numeric literals. The types follow C and CuPy: ``T``
(any single capital letter) is bound to the dtype of the arrays passed for it, and all of them
must agree; a scalar parameter of a named type (``float64 l2``) is converted to it; an
unsuffixed float literal is a double (so ``0.5 * x`` with float ``x`` computes in double, as
nvcc does), an ``f``-suffixed one a float, an integer literal an int; a cast converts; an
assignment converts to the variable's type. NumPy's promotion of a float32 array with a
float64 scalar (NEP 50) is C's usual arithmetic conversion, so the arithmetic itself is NumPy's.
"""
from __future__ import annotations

import math
import re

import numpy as np

_TYPES = {"float": np.float32, "float32": np.float32, "double": np.float64,
          "float64": np.float64, "int": np.int32, "int32": np.int32, "int64": np.int64,
          "long long": np.int64, "bool": np.bool_, "float16": np.float16, "half": np.float16,
          "uint8": np.uint8, "unsigned char": np.uint8, "size_t": np.uint64,
          "bfloat16": None}

_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:[eE][-+]?\d+)?f?|\d*\.\d+(?:[eE][-+]?\d+)?f?|"
                    r"\d+[eE][-+]?\d+f?|\d+)|([A-Za-z_]\w*)|(<=|>=|==|!=|&&|\|\||[-+*/%()<>?:,!\[\]]))")


def _special(fn):
    u = np.frompyfunc(fn, 1, 1)

    def f(x):
        x = np.asarray(x)
        dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        r = np.asarray(u(x.astype(np.float64))).astype(np.float64).astype(dt)
        return r if r.ndim else dt.type(r)
    return f


_FUNCS = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "erf": _special(
    math.erf), "erfc": _special(math.erfc), "fabs": np.abs, "abs": np.abs, "expm1": np.expm1,
    "log1p": np.log1p, "max": np.maximum, "min": np.minimum, "fmax": np.fmax, "fmin": np.fmin,
    "rsqrt": lambda x: 1 / np.sqrt(x), "isfinite": np.isfinite, "floor": np.floor,
    "exp2": np.exp2, "sin": np.sin, "cos": np.cos, "pow": np.power}


def _tokens(src: str):
    pos, out = 0, []
    src = src.strip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise SyntaxError(f"kernel stand-in: cannot read {src[pos:pos + 20]!r}")
        out.append(m.group(m.lastindex))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over one expression; returns a tree of tuples."""

    def __init__(self, toks, typevars):
        self.t, self.i, self.typevars = toks, 0, typevars

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want=None):
        tok = self.peek()
        if want is not None and tok != want:
            raise SyntaxError(f"kernel stand-in: expected {want!r}, got {tok!r}")
        self.i += 1
        return tok

    def is_type(self, tok):
        return tok in _TYPES or tok in self.typevars

    def expr(self):
        c = self.logic()
        if self.peek() == "?":
            self.take()
            a = self.expr()
            self.take(":")
            return ("?", c, a, self.expr())
        return c

    _LEVELS = (("&&", "||"), ("<", ">", "<=", ">=", "==", "!="), ("+", "-"), ("*", "/", "%"))

    def logic(self, level=0):
        """Left-associative binary operators, loosest binding first (C's precedence)."""
        if level == len(self._LEVELS):
            return self.unary()
        a = self.logic(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self.take()
            a = (op, a, self.logic(level + 1))
        return a

    def unary(self):
        tok = self.peek()
        if tok == "-":
            self.take()
            return ("neg", self.unary())
        if tok == "!":
            self.take()
            return ("not", self.unary())
        if (tok == "(" and self.i + 2 < len(self.t) and self.is_type(self.t[self.i + 1])
                and self.t[self.i + 2] == ")"):
            self.take()
            ty = self.take()
            self.take(")")
            return ("cast", ty, self.unary())
        return self.primary()

    def primary(self):
        tok = self.take()
        if tok == "(":
            e = self.expr()
            self.take(")")
            return e
        if tok[0].isdigit() or tok[0] == ".":
            if tok.endswith("f"):
                return ("lit", np.float32(float(tok[:-1])))
            if re.fullmatch(r"\d+", tok):
                return ("lit", int(tok))
            return ("lit", np.float64(float(tok)))
        if self.peek() == "(":
            self.take()
            args = []
            while self.peek() != ")":
                args.append(self.expr())
                if self.peek() == ",":
                    self.take()
            self.take(")")
            if tok not in _FUNCS:
                raise SyntaxError(f"kernel stand-in: unknown function {tok}()")
            return ("call", tok, args)
        if self.peek() == "[":   # a raw array's element
            self.take()
            idx = self.expr()
            self.take("]")
            return ("index", tok, idx)
        return ("var", tok)


_BIN = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide,
        "<": np.less, ">": np.greater, "<=": np.less_equal, ">=": np.greater_equal,
        "==": np.equal, "!=": np.not_equal, "&&": np.logical_and, "||": np.logical_or}


def _eval(node, env, types):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "var":
        if node[1] not in env:
            raise NameError(f"kernel stand-in: {node[1]!r} is not defined")
        return env[node[1]]
    if kind == "neg":
        return np.negative(_eval(node[1], env, types))
    if kind == "not":
        return np.logical_not(_eval(node[1], env, types))
    if kind == "cast":
        return _cast(_eval(node[2], env, types), types[node[1]])
    if kind == "call":
        return _FUNCS[node[1]](*(_eval(a, env, types) for a in node[2]))
    if kind == "index":
        arr = env[node[1]]
        return arr.reshape(-1)[np.asarray(_eval(node[2], env, types)).astype(np.int64)]
    if kind == "?":
        return np.where(_eval(node[1], env, types), _eval(node[2], env, types),
                        _eval(node[3], env, types))
    a, b = _eval(node[1], env, types), _eval(node[2], env, types)
    if node[0] == "/" and np.result_type(a, b).kind in "iu":   # C integer division
        return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))
    if node[0] == "%":
        return np.fmod(a, b)
    return _BIN[kind](a, b)


def _cast(v, dt):
    dt = np.dtype(dt)
    if isinstance(v, np.ndarray) and v.ndim:
        return v.astype(dt)
    return dt.type(v)


def _params(spec: str):
    """'T x, float64 l2, raw T a' -> [(name, type, raw)]."""
    out = []
    for p in spec.split(","):
        words = p.split()
        if not words:
            continue
        raw = words[0] == "raw"
        words = words[1:] if raw else words
        out.append((words[-1], " ".join(words[:-1]), raw))
    return out


def _statements(src: str, typevars):
    """[(declared_type or None, target, tree)] for 'T u = expr; y = expr;'."""
    src = re.sub(r"//[^\n]*", "", src)
    out = []
    for s in src.split(";"):
        s = s.strip()
        if not s:
            continue
        m = re.fullmatch(r"(?:(const\s+)?([A-Za-z_]\w*)\s+)?([A-Za-z_]\w*)\s*=\s*(.+)", s, re.S)
        if not m:
            raise SyntaxError(f"kernel stand-in: cannot read the statement {s!r}")
        p = _Parser(_tokens(m.group(4)), typevars)
        tree = p.expr()
        if p.peek() is not None:
            raise SyntaxError(f"kernel stand-in: trailing {p.peek()!r} in {s!r}")
        out.append((m.group(2), m.group(3), tree))
    return out


class _Base:
    def _bind(self, params, values):
        """(env, types): each argument checked and converted, T bound to the arrays' dtype."""
        from . import _refuse, ndarray  # noqa: PLC0415

        types = dict(_TYPES)
        for (name, ty, _raw), v in zip(params, values):
            if isinstance(v, np.ndarray):
                _refuse(v)
            if type(v) is ndarray and ty in self.typevars:
                if ty in types and types[ty] is not None and np.dtype(types[ty]) != v._a.dtype:
                    raise TypeError(f"Type is mismatched. {name} {v._a.dtype} {types[ty]}")
                types[ty] = v._a.dtype
        env = {}
        for (name, ty, _raw), v in zip(params, values):
            if type(v) is ndarray:
                if ty not in self.typevars and np.dtype(types[ty]) != v._a.dtype:
                    env[name] = v._a.astype(types[ty])
                else:
                    env[name] = v._a
            else:
                if types.get(ty) is None:
                    raise TypeError(f"kernel stand-in: cannot determine type {ty} of {name}")
                env[name] = np.dtype(types[ty]).type(v)
        return env, types


class ElementwiseKernel(_Base):
    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True,
                 preamble="", no_return=False, return_tuple=False, **kwargs):
        self.name = name
        self.ins, self.outs = _params(in_params), _params(out_params)
        self.typevars = {ty for _, ty, _ in self.ins + self.outs if ty not in _TYPES}
        self.body = _statements(operation, self.typevars)
        self.no_return, self.return_tuple = no_return, return_tuple

    def __call__(self, *args, size=None, block_size=None, stream=None):
        from . import _SIDE_WRITTEN, _wrap, launch, ndarray, stream_reads  # noqa: PLC0415

        if _SIDE_WRITTEN:
            stream_reads([a._a for a in args if type(a) is ndarray])
        n_in = len(self.ins)
        if len(args) not in (n_in, n_in + len(self.outs)):
            raise TypeError(f"Wrong number of arguments for {self.name!r}")
        outs = list(args[n_in:]) or [None] * len(self.outs)
        given = [(p, o) for p, o in zip(self.outs, outs) if o is not None]
        env, types = self._bind(self.ins + [p for p, _ in given],
                                list(args[:n_in]) + [o for _, o in given])
        arrays = [env[n] for n, _, raw in self.ins if not raw and isinstance(env[n], np.ndarray)]
        arrays += [o._a for o in outs if o is not None]
        if size is not None:
            shape = (int(size),)
        elif arrays:
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
        else:
            raise ValueError(f"{self.name!r}: the loop size cannot be determined (pass size=)")
        env["i"] = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
        for (name, ty, _), o in zip(self.outs, outs):
            if o is None:
                if types.get(ty) is None:
                    raise TypeError(f"kernel stand-in: cannot determine the type of {name}")
                o = _wrap(np.zeros(shape, dtype=types[ty]))
                outs[self.outs.index((name, ty, _))] = o
            elif type(o) is not ndarray:
                raise TypeError(f"output {name} of {self.name!r} must be a cupy.ndarray")
            env[name] = o._a
        vtypes = {n: types[ty] for n, ty, _ in self.ins + self.outs}
        for decl, target, tree in self.body:
            with np.errstate(all="ignore"):   # a GPU gives inf/nan silently
                v = _eval(tree, env, types)
            dt = types[decl] if decl else vtypes.get(target)
            if dt is None:
                raise NameError(f"kernel stand-in: {target!r} assigned before declaration")
            vtypes[target] = dt
            env[target] = _cast(v, dt)
        for (name, _, _), o in zip(self.outs, outs):
            val = env[name]
            if val is not o._a:
                o._a[...] = val
        launch(f"kernel.{self.name}")
        if self.no_return:
            return None
        return outs[0] if len(outs) == 1 and not self.return_tuple else tuple(outs)


_REDUCE = {"a+b": np.sum, "max(a,b)": np.max, "min(a,b)": np.min, "fmax(a,b)": np.nanmax,
           "fmin(a,b)": np.nanmin}


class ReductionKernel(_Base):
    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, preamble="", options=(), **kwargs):
        self.name = name
        self.ins, self.outs = _params(in_params), _params(out_params)
        self.typevars = {ty for _, ty, _ in self.ins + self.outs if ty not in _TYPES}
        p = _Parser(_tokens(map_expr), self.typevars)
        self.map = p.expr()
        key = reduce_expr.replace(" ", "")
        if key not in _REDUCE:
            raise SyntaxError(f"kernel stand-in: reduction {reduce_expr!r} not interpreted")
        self.reduce = _REDUCE[key]
        self.post = _statements(post_map_expr, self.typevars)
        self.reduce_type = reduce_type

    def __call__(self, *args, out=None, axis=None, keepdims=False, stream=None):
        from . import _SIDE_WRITTEN, _wrap, launch, ndarray, stream_reads  # noqa: PLC0415

        if _SIDE_WRITTEN:
            stream_reads([a._a for a in args + (out,) if type(a) is ndarray])

        env, types = self._bind(self.ins, args[:len(self.ins)])
        ty = self.outs[0][1]
        rt = np.dtype(_TYPES.get(self.reduce_type, self.reduce_type) if self.reduce_type
                      else types[self.ins[0][1]])
        mapped = _cast(np.asarray(_eval(self.map, env, types)), rt)
        if axis is not None and not isinstance(axis, tuple):
            axis = (axis,)
        env["a"] = self.reduce(mapped, axis=axis, keepdims=keepdims).astype(rt)
        odt = np.dtype(types[ty])
        for decl, target, tree in self.post:
            env[target] = _cast(_eval(tree, env, types), types[decl] if decl else odt)
        r = np.asarray(env[self.outs[0][0]]).astype(odt)
        launch(f"kernel.{self.name}")
        if out is not None:
            out._a[...] = r
            return out
        return _wrap(r)


RAW_KERNELS: dict = {}


def register_raw(name, fn, source_sha256: str):
    """A RawKernel the stand-in runs: ``fn(grid, block, args, shared_mem)`` does in NumPy what
    the CUDA source whose SHA-256 starts with ``source_sha256`` does (``raw_twins.py``)."""
    RAW_KERNELS[name] = (source_sha256, fn)


def _body(code: str) -> str:
    """The source without its first line when that is the ``typedef ... T;`` of the dtype."""
    first, _, rest = code.partition("\n")
    return rest if first.startswith("typedef ") else code


class RawKernel:
    def __init__(self, code, name, options=(), **kwargs):
        import hashlib  # noqa: PLC0415

        self.code, self.name = code, name
        if name not in RAW_KERNELS:
            raise NotImplementedError(f"RawKernel {name!r}: no NumPy twin registered with the "
                                      "stand-in (tests/cupy_standin/raw_twins.py)")
        sha, self._twin = RAW_KERNELS[name]
        got = hashlib.sha256(_body(code).encode()).hexdigest()
        if not got.startswith(sha):
            raise RuntimeError(f"the CUDA source of RawKernel {name!r} changed (sha256 {got[:16]},"
                               f" twin written for {sha}): re-check its NumPy twin in "
                               "tests/cupy_standin/raw_twins.py against it and update the hash")

    def __call__(self, grid, block, args, *, shared_mem=0):
        from . import _SIDE_WRITTEN, _refuse, launch, ndarray, stream_reads  # noqa: PLC0415

        if _SIDE_WRITTEN:
            stream_reads([a._a for a in args if type(a) is ndarray])

        for a in args:
            if isinstance(a, np.ndarray):
                _refuse(a)
            if type(a) is ndarray and not a._a.flags.c_contiguous:
                raise ValueError(f"RawKernel {self.name!r}: a non-contiguous array argument")
        self._twin(tuple(grid), tuple(block), tuple(args), shared_mem)
        launch(f"raw.{self.name}")
