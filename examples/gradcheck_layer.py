"""A gradient check, element by element: is a layer's backward right?

    python examples/gradcheck_layer.py          # LayerNorm, then self-attention
    python examples/gradcheck_layer.py --all    # every element of every parameter too

The backward of a layer gives the gradient of a scalar L with respect to each input element.
Finite differences give the same number without any calculus, from two forward passes:

    dL/dx_i  ~  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)          (central difference)

with an error of order eps^2. In float64 with eps = 1e-6 the two agree to about 1e-9; in
float32 rounding would swamp the difference, so checks always run in float64.

As the scalar we take L = sum(v * layer(x)) with a random v (not ones: with v = ones, a
LayerNorm backward that forgot the mean term would still pass, since the outputs of a row sum
to a constant). Then dL/dx is exactly what backward computes from the upstream gradient v.
"""
import argparse

import minivit
import numpy as np
from minivit import nn

EPS = 1e-6


def check(name, fn, x, params, show_all=False, max_rows=12):
    """Print numeric vs analytic gradients of L = sum(v * fn(x)) for x and each parameter."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal(fn(x).shape)  # the random upstream gradient

    def L():  # the scalar, without building a graph
        with minivit.no_grad():
            return float((fn(x).numpy() * v).sum())

    # analytic: one backward pass
    for t in [x, *params.values()]:
        t.grad = None
    (fn(x) * minivit.tensor(v)).sum().backward()

    print(f"\n=== {name} ===")
    print(f"{'tensor':22s} {'index':>12s} {'numeric':>16s} {'analytic':>16s} {'|diff|':>9s}")
    worst = 0.0
    for tname, t in [("x (input)", x), *params.items()]:
        analytic = t.grad.numpy()
        flat = t.data.reshape(-1)  # a view: changing flat[i] changes the tensor
        diffs = []
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + EPS
            plus = L()
            flat[i] = orig - EPS
            minus = L()
            flat[i] = orig  # put it back
            numeric = (plus - minus) / (2 * EPS)
            idx = np.unravel_index(i, t.shape)
            diff = abs(numeric - analytic[idx])
            diffs.append(diff)
            if show_all or (t is x and i < max_rows):  # every x element (up to max_rows)
                print(f"{tname:22s} {str(tuple(int(j) for j in idx)):>12s} {numeric:16.10f} "
                      f"{analytic[idx]:16.10f} {diff:9.1e}")
        if t is x and not show_all and flat.size > max_rows:
            print(f"{'':22s} ... {flat.size - max_rows} more elements")
        if t is not x and not show_all:  # parameters: one summary row each
            print(f"{tname:22s} {str(t.shape):>12s} {'(' + str(flat.size) + ' elements)':>33s} "
                  f"{max(diffs):9.1e} max")
        worst = max(worst, max(diffs))
    verdict = "PASS" if worst < 1e-6 else "FAIL"
    print(f"largest |numeric - analytic| = {worst:.1e}  -> {verdict}")
    # the engine's own check, the same idea with tolerances (atol 1e-5, rtol 1e-3)
    ok = minivit.gradcheck(fn, x, params=list(params.values()))
    print(f"minivit.gradcheck agrees: {ok}")


def main():
    parser = argparse.ArgumentParser(description="element-by-element gradient checks")
    parser.add_argument("--all", action="store_true", help="print every parameter element")
    args = parser.parse_args()
    minivit.manual_seed(0)
    rng = np.random.default_rng(1)

    # LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * weight + bias
    ln = nn.LayerNorm(4).to("float64")
    ln.weight.data[...] = rng.standard_normal(4)  # not the (1, 0) init: test the general case
    ln.bias.data[...] = rng.standard_normal(4)
    x = minivit.tensor(rng.standard_normal((2, 4)), requires_grad=True)  # float64 from NumPy
    check("LayerNorm(4) on x of shape (2, 4)", ln, x,
          {"weight": ln.weight, "bias": ln.bias}, args.all)

    # Self-attention: qkv projection, softmax(q k^T / sqrt(d)) v per head, output projection
    attn = nn.MultiheadSelfAttention(4, num_heads=2).to("float64").eval()
    x = minivit.tensor(rng.standard_normal((1, 3, 4)), requires_grad=True)  # 3 tokens of dim 4
    check("MultiheadSelfAttention(dim 4, 2 heads) on x of shape (1, 3, 4)", attn, x,
          dict(attn.named_parameters()), args.all)


if __name__ == "__main__":
    main()
