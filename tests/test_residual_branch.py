"""The layers that end a residual branch: ``layer(x, residual=r, drop_path=dp)`` is
``r + dp(layer(x))`` (issue 24: models call their modules, fusion happens inside the layers).

Each case below is run both ways, the layer's keyword form and the plain unfused form written
out, with the same random seed (the drop path's mask, any dropout's), in training mode with a
drop path that drops (rate 0.5), with one that passes through (rate 0, ``Identity``, none), and
in eval mode: outputs and the gradients of the input, the residual and every parameter must be
equal, on the fast bodies and on the reference bodies. Where the drop path passes through, the
add must happen inside the layer's op (no ``add`` node in the graph: the speed the models rely
on); where it drops, the layer computes its output, drops it and adds. Then the float64
gradient of the new arguments against finite differences (reference bodies, hypothesis-drawn
shapes, a fixed drop-path mask), the fast bodies against the reference bodies in float32, and
the models: their blocks end with the fused op while the drop path passes through.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit
from minivit import nn
from minivit.autograd.gradcheck import gradcheck
from minivit.models import create_model


def _t(a, grad=True, dtype=np.float64):
    return minivit.tensor(np.asarray(a, dtype=dtype), requires_grad=grad)


# name: (build the layer, x shape, output shape, call with residual and drop path, plain form,
#        whether the layer has a fused add (False: the add is a separate op anyway))
def _bn(**kw):
    bn = nn.BatchNormAct2d(3, **kw)
    bn.weight.data = np.array([1.2, 0.8, 1.1])
    bn.bias.data = np.array([0.1, -0.2, 0.05])
    return bn


CASES = {
    "linear": (lambda: nn.Linear(3, 4), (2, 5, 3), (2, 5, 4),
               lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
               lambda m, x, r, dp: r + dp(m(x)), True),
    "linear_gelu": (lambda: nn.Linear(3, 4), (2, 5, 3), (2, 5, 4),
                    lambda m, x, r, dp: m(x, act=nn.GELU(), residual=r, drop_path=dp),
                    lambda m, x, r, dp: r + dp(nn.GELU()(m(x))), False),
    "linear_columns": (lambda: nn.LinearColumns(3, 4), (3, 4, 2), (4, 4, 2),
                       lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                       lambda m, x, r, dp: r + dp(m(x)), True),
    "conv1x1_channels_last": (lambda: nn.Conv2d(3, 4, 1, channels_last=True), (2, 3, 3, 3),
                              (2, 3, 3, 4), lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                              lambda m, x, r, dp: r + dp(m(x)), True),
    "depthwise_channels_last": (lambda: nn.Conv2d(3, 3, 3, padding=1, groups=3,
                                                  channels_last=True), (2, 3, 3, 3),
                                (2, 3, 3, 3), lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                                lambda m, x, r, dp: r + dp(m(x)), False),
    "conv3x3_nchw": (lambda: nn.Conv2d(3, 2, 3, padding=1), (2, 3, 4, 4), (2, 2, 4, 4),
                     lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                     lambda m, x, r, dp: r + dp(m(x)), False),
    "mlp": (lambda: nn.Mlp(4, 6, act_layer=partial(nn.GELU, approximate="tanh")), (2, 3, 4),
            (2, 3, 4), lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
            lambda m, x, r, dp: r + dp(m(x)), True),
    "mlp_dropout": (lambda: nn.Mlp(4, 6, drop=0.3), (2, 3, 4), (2, 3, 4),
                    lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                    lambda m, x, r, dp: r + dp(m(x)), "eval"),
    "mlp_columns": (lambda: nn.Mlp(3, 5, linear_layer=nn.LinearColumns), (3, 4, 2), (3, 4, 2),
                    lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                    lambda m, x, r, dp: r + dp(m(x)), True),
    "attention": (lambda: nn.MultiheadSelfAttention(4, 2), (2, 3, 4), (2, 3, 4),
                  lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                  lambda m, x, r, dp: r + dp(m(x)), True),
    # BoTNet's block end: ReLU(shortcut + DropPath(BN(x))), the ReLU handed in as ``act``
    "batchnorm_relu_after_add": (lambda: _bn(apply_act=False, channels_last=True), (4, 2, 2, 3),
                                 (4, 2, 2, 3),
                                 lambda m, x, r, dp: m(x, residual=r, act=nn.ReLU(), drop_path=dp),
                                 lambda m, x, r, dp: nn.ReLU()(r + dp(m(x))), True),
    "batchnorm_plain": (lambda: _bn(apply_act=False), (4, 3, 2, 2), (4, 3, 2, 2),
                        lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                        lambda m, x, r, dp: r + dp(m(x)), True),
    "batchnorm_gelu": (lambda: _bn(act_layer=nn.GELU), (4, 3, 2, 2), (4, 3, 2, 2),
                       lambda m, x, r, dp: m(x, residual=r, drop_path=dp),
                       lambda m, x, r, dp: m.act(r + dp(m(x, act=nn.Identity()))), False),
}

# the drop paths: (module, training) -> whether it drops samples
DROP_PATHS = {
    "droppath_0.5_train": (lambda b: nn.DropPath(0.5, batch_dim=b), True),
    "droppath_0_train": (lambda b: nn.DropPath(0.0, batch_dim=b), True),
    "identity_train": (lambda b: nn.Identity(), True),
    "droppath_0.5_eval": (lambda b: nn.DropPath(0.5, batch_dim=b), False),
}


def _batch_dim(name):
    return 1 if "columns" in name else 0     # tokens-first maps: the samples on axis 1


def _op_names(y) -> set:
    """The names of the ops in y's graph."""
    names, todo, seen = set(), [y.creator], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen or not hasattr(node, "op_name"):
            continue
        seen.add(id(node))
        names.add(node.op_name())
        todo.extend(n for n, _ in node.next_functions)
    return names


def _run(call, layer, dp, x, r, up, seed=3):
    """The names of the ops in the graph, the output and the gradients of x, r and the
    layer's parameters."""
    layer.zero_grad()
    xt, rt = _t(x), _t(r)
    minivit.manual_seed(seed)
    y = call(layer, xt, rt, dp)
    ops = _op_names(y)
    (y * _t(up, False)).sum().backward()
    return ops, [y.numpy(), xt.grad.numpy(), rt.grad.numpy()] + [
        p.grad.numpy() for _, p in layer.named_parameters()]


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("dp_name", list(DROP_PATHS))
@pytest.mark.parametrize("name", list(CASES))
def test_keyword_form_is_the_unfused_form(name, dp_name, reference):
    build, x_shape, out_shape, call, plain, fused = CASES[name]
    make_dp, training = DROP_PATHS[dp_name]
    rng = np.random.default_rng(len(name))
    minivit.manual_seed(0)
    layer = build().double().train(training)
    dp = make_dp(_batch_dim(name)).train(training)
    x, r, up = (rng.standard_normal(s) for s in (x_shape, out_shape, out_shape))
    with minivit.reference_mode(reference):
        ops, got = _run(call, layer, dp, x, r, up)
        _, want = _run(plain, layer, dp, x, r, up)
        _, kept = _run(plain, layer, nn.Identity(), x, r, up)
    what = ["output", "input gradient", "residual gradient"] + [
        n + " gradient" for n, _ in layer.named_parameters()]
    for w, g, a in zip(what, got, want):
        np.testing.assert_allclose(g, a, rtol=1e-13, atol=1e-13, err_msg=f"{name}: {w}")
    if dp_name == "droppath_0.5_train":
        assert not np.allclose(got[0], kept[0]), "the drop path changed nothing"
        assert "add" in ops                            # computed, dropped, then added
    elif fused is True or (fused == "eval" and not training):
        assert "add" not in ops, f"{name}: the residual add was not fused"


@pytest.mark.parametrize("name", ["linear", "mlp", "attention", "batchnorm_relu_after_add"])
def test_no_drop_path_is_the_residual_alone(name):
    build, x_shape, out_shape, call, plain, _ = CASES[name]
    rng = np.random.default_rng(0)
    layer = build().double()
    x, r = rng.standard_normal(x_shape), rng.standard_normal(out_shape)
    y = call(layer, _t(x), _t(r), None).numpy()
    ref = plain(layer, _t(x), _t(r), nn.Identity()).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["linear", "linear_columns", "conv1x1_channels_last", "mlp",
                                  "attention", "batchnorm_plain"])
def test_drop_path_without_residual_is_a_one_line_error(name):
    build, x_shape, *_ = CASES[name]
    layer = build()
    with pytest.raises(ValueError, match=r"drop_path= drops a residual branch and needs "
                                         r"residual=, got residual=None$"):
        layer(minivit.randn(*x_shape), drop_path=nn.DropPath(0.1))


def test_passes_through():
    dp, drop = nn.DropPath(0.2), nn.Dropout(0.2)
    assert nn.layers.passes_through(None) and nn.layers.passes_through(nn.Identity())
    assert nn.layers.passes_through(nn.DropPath(0.0)) and nn.layers.passes_through(nn.Dropout(0))
    assert not nn.layers.passes_through(dp) and not nn.layers.passes_through(drop)
    dp.eval()
    drop.eval()
    assert nn.layers.passes_through(dp) and nn.layers.passes_through(drop)
    assert not nn.layers.passes_through(nn.ReLU())       # any other module may change x


# --- gradients of the new arguments against finite differences (float64, reference bodies) --

GRAD_CASES = ["linear", "linear_gelu", "linear_columns", "conv1x1_channels_last",
              "depthwise_channels_last", "mlp", "mlp_columns", "attention",
              "batchnorm_relu_after_add", "batchnorm_gelu"]


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(GRAD_CASES), rate=st.sampled_from([0.0, 0.5]),
       training=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_gradients_of_input_residual_and_parameters(name, rate, training, seed):
    """d/dx, d/dresidual and d/dparameters of layer(x, residual=r, drop_path=DropPath(rate)),
    the mask fixed by the seed (drawn again, the same, in every evaluation)."""
    build, x_shape, out_shape, call, _, _ = CASES[name]
    rng = np.random.default_rng(seed)
    minivit.manual_seed(seed)
    layer = build().double().train(training)
    dp = nn.DropPath(rate, batch_dim=_batch_dim(name)).train(training)
    x, r = _t(rng.standard_normal(x_shape)), _t(rng.standard_normal(out_shape))

    def fn(xt, rt):
        minivit.manual_seed(seed)
        return call(layer, xt, rt, dp)

    assert gradcheck(fn, x, r, params=list(layer.parameters()), seed=seed)


# --- the fast bodies against the reference bodies, float32 -------------------------------

@pytest.mark.parametrize("dp_name", ["droppath_0.5_train", "droppath_0_train"])
@pytest.mark.parametrize("name", ["linear", "mlp_columns", "conv1x1_channels_last", "attention",
                                  "batchnorm_relu_after_add"])
def test_fast_matches_reference_in_float32(name, dp_name):
    build, x_shape, out_shape, call, _, _ = CASES[name]
    make_dp, training = DROP_PATHS[dp_name]
    rng = np.random.default_rng(7)
    x, r, up = (rng.standard_normal(s).astype(np.float32)
                for s in (x_shape, out_shape, out_shape))
    results = []
    for reference in (False, True):
        minivit.manual_seed(0)
        layer = build().float().train(training)
        dp = make_dp(_batch_dim(name)).train(training)
        with minivit.reference_mode(reference):
            layer.zero_grad()
            xt, rt = _t(x, dtype=np.float32), _t(r, dtype=np.float32)
            minivit.manual_seed(3)
            y = call(layer, xt, rt, dp)
            (y * _t(up, False, np.float32)).sum().backward()
        assert y.dtype == np.float32
        results.append([y.numpy(), xt.grad.numpy(), rt.grad.numpy()]
                       + [p.grad.numpy() for p in layer.parameters()])
    for f, ref in zip(*results):       # the SUMS tolerance of tests/test_kernels.py
        np.testing.assert_allclose(f, ref, rtol=1e-4, atol=2e-5 * max(1.0, np.abs(ref).max()))


# --- the models: each residual branch ends inside its last layer ----------------------------

# per model: (block class, the child whose output is x + drop_path(branch) or None for the
# block's own output, the ops that made it while the drop path passes through (following the
# first input back): the last layer with the add inside; and while it drops: the add)
BLOCK_ENDS = {
    "maxvit_cifar": [("MbConvBlock", None, ("linear",), ("add",)),
                     ("PartitionAttention", None, ("linear",), ("add",))],
    "mlp_mixer_cifar": [("MixerBlock", "mlp_tokens", ("reshape", "linear_columns"), ("add",)),
                        ("MixerBlock", "mlp_channels", ("linear",), ("add",))],
    "botnet_cifar": [("BottleneckBlock", None, ("reshape", "batchnorm"), ("relu", "add")),
                     ("SelfAttnBlock", None, ("reshape", "batchnorm"), ("relu", "add"))],
}


def _chain(y, n):
    """The names of the op that made y, the op that made its first input, ... (n of them)."""
    names, node = [], y.creator
    for _ in range(n):
        names.append(node.op_name())
        node = node.next_functions[0][0]
    return tuple(names)


@pytest.mark.parametrize("drop_path_rate,training", [(0.0, True), (0.2, False), (0.2, True)],
                         ids=["no_drop_path", "eval", "drop_path_training"])
@pytest.mark.parametrize("name", list(BLOCK_ENDS))
def test_model_blocks_end_with_the_fused_add(name, drop_path_rate, training):
    """The CIFAR configurations (no drop path) keep the fused add of their block ends; with a
    drop path the add is fused in eval and separate in training."""
    minivit.manual_seed(0)
    model = create_model(name, drop_path_rate=drop_path_rate).train(training)
    seen = []
    for m in list(model.modules()):
        for kind, child, fused, dropped in BLOCK_ENDS[name]:
            if type(m).__name__ == kind:
                # (MaxViT's rates ramp up from 0: its first block has none)
                drops = not nn.layers.passes_through(m.drop_path)
                want = dropped if drops else fused
                target = m if child is None else getattr(m, child)
                target.register_forward_hook(
                    lambda mod, args, out, w=want, k=kind: seen.append((k, w, _chain(out, len(w)))))
    model(minivit.randn(2, 3, 32, 32))
    assert {k for k, _, _ in seen} == {k for k, *_ in BLOCK_ENDS[name]}
    for kind, want, got in seen:
        assert got == want, kind
    dropping = any(w[0] in ("add", "relu") for _, w, _ in seen)
    assert dropping == (drop_path_rate > 0 and training)
