"""Optimizers against their update rules written out in closed form, checkpoints, clipping and
weight-decay groups."""
import json
import math

import numpy as np
import pytest

import minivit
from minivit import optim
from minivit.autograd import backend
from minivit.optim import SGD, Adam, AdamW, clip_grad_norm_, param_groups_weight_decay

STEPS = 5


def _params(shapes=((3, 4), (5,)), dtype=np.float64, device="cpu", seed=0):
    rng = np.random.default_rng(seed)
    return [minivit.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True, device=device)
            for s in shapes]


def _grads(params, steps=STEPS, seed=1):
    """A fixed sequence of gradients per step (not from a loss: the update rule is the point)."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(steps)]


def _run(opt, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = minivit.tensor(g, device=p.device)
        opt.step()


def _np(params):
    return [p.numpy().copy() for p in params]


# --- SGD -----------------------------------------------------------------------------------

def _sgd_reference(p0, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p0.copy(), None
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


@pytest.mark.parametrize("kw", [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.3),
    dict(momentum=0.9, nesterov=True),
    dict(weight_decay=0.1),
    dict(momentum=0.8, nesterov=True, weight_decay=0.05),
])
def test_sgd_matches_closed_form(kw):
    params = _params()
    p0, grads = _np(params), _grads(params)
    _run(SGD(params, lr=0.1, **kw), params, grads)
    for i, p in enumerate(params):
        want = _sgd_reference(p0[i], [g[i] for g in grads], 0.1, **kw)
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-13, atol=1e-14)


# --- Adam / AdamW --------------------------------------------------------------------------

def _adam_reference(p0, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("cls, kw, decoupled", [
    (Adam, dict(), False),
    (Adam, dict(betas=(0.8, 0.99), eps=1e-6), False),
    (Adam, dict(weight_decay=0.1), False),
    (AdamW, dict(weight_decay=0.1), True),
    (AdamW, dict(weight_decay=0.0), True),
])
def test_adam_matches_closed_form(cls, kw, decoupled):
    params = _params()
    p0, grads = _np(params), _grads(params)
    _run(cls(params, lr=0.01, **kw), params, grads)
    for i, p in enumerate(params):
        want = _adam_reference(p0[i], [g[i] for g in grads], 0.01, decoupled=decoupled, **kw)
        np.testing.assert_allclose(p.numpy(), want, rtol=1e-12, atol=1e-14)


def test_adamw_default_weight_decay_is_decoupled_and_differs_from_adam_l2():
    a, b = _params(), _params()
    grads = _grads(a)
    opt_w = AdamW(a, lr=0.01)
    assert opt_w.param_groups[0]["weight_decay"] == 1e-2
    _run(opt_w, a, grads)
    _run(Adam(b, lr=0.01, weight_decay=1e-2), b, grads)
    assert not np.allclose(a[0].numpy(), b[0].numpy(), rtol=0, atol=1e-9)
    # decay touches parameters with a zero gradient too (AdamW), by exactly lr*wd per step
    p = _params(shapes=((4,),))
    p0 = p[0].numpy().copy()
    _run(AdamW(p, lr=0.5, weight_decay=0.2), p, [[np.zeros(4)]] * 3)
    np.testing.assert_allclose(p[0].numpy(), p0 * (1 - 0.5 * 0.2) ** 3, rtol=1e-14)


def test_adam_state_layout():
    params = _params()
    opt = Adam(params, lr=0.01)
    _run(opt, params, _grads(params, steps=3))
    st = opt.state[params[0]]
    assert st["step"] == 3 and set(st) == {"step", "exp_avg", "exp_avg_sq"}
    assert st["exp_avg"].shape == params[0].shape


# --- groups, skipping, dtype ---------------------------------------------------------------

def test_param_groups_with_their_own_lr_and_defaults():
    a, b = _params(shapes=((3,),), seed=0), _params(shapes=((2, 2),), seed=5)
    opt = SGD([{"params": a}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1, weight_decay=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["weight_decay"] == 0.01  # default filled in
    assert opt.param_groups[0]["momentum"] == 0.0
    a0, b0 = a[0].numpy().copy(), b[0].numpy().copy()
    grads = _grads(a + b)
    _run(opt, a + b, grads)
    np.testing.assert_allclose(a[0].numpy(), _sgd_reference(a0, [g[0] for g in grads], 0.1,
                                                            weight_decay=0.01), rtol=1e-13)
    np.testing.assert_allclose(b[0].numpy(), _sgd_reference(b0, [g[1] for g in grads], 0.5,
                                                            momentum=0.9, weight_decay=0.01), rtol=1e-13)


def test_adam_per_group_lr_and_weight_decay():
    a, b = _params(shapes=((3,),), seed=0), _params(shapes=((2, 2),), seed=5)
    opt = AdamW([{"params": a, "weight_decay": 0.0}, {"params": b, "lr": 0.05}], lr=0.01, weight_decay=0.3)
    a0, b0 = a[0].numpy().copy(), b[0].numpy().copy()
    grads = _grads(a + b)
    _run(opt, a + b, grads)
    np.testing.assert_allclose(a[0].numpy(), _adam_reference(a0, [g[0] for g in grads], 0.01,
                                                             decoupled=True), rtol=1e-12)
    np.testing.assert_allclose(b[0].numpy(), _adam_reference(b0, [g[1] for g in grads], 0.05,
                                                             weight_decay=0.3, decoupled=True), rtol=1e-12)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
                                  lambda ps: AdamW(ps, lr=0.1)])
def test_parameters_without_grad_are_skipped(make):
    params = _params()
    opt = make(params)
    frozen = params[1].numpy().copy()
    for _ in range(3):
        params[0].grad = minivit.tensor(np.ones(params[0].shape))
        opt.step()
    np.testing.assert_array_equal(params[1].numpy(), frozen)
    assert params[1] not in opt.state or not opt.state[params[1]]


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                                  lambda ps: Adam(ps, lr=0.1, weight_decay=0.1),
                                  lambda ps: AdamW(ps, lr=0.1)])
def test_float32_stays_float32_in_place_and_grads_untouched(make):
    params = _params(dtype=np.float32)
    arrays = [p.data for p in params]
    opt = make(params)
    grads = _grads(params, steps=3)
    kept = [[g.copy() for g in step] for step in grads]
    _run(opt, params, grads)
    for p, arr in zip(params, arrays):
        assert p.data is arr and p.dtype == np.float32
        assert all(v.dtype == np.float32 for v in opt.state[p].values() if hasattr(v, "dtype"))
    for p, g in zip(params, kept[-1]):
        np.testing.assert_array_equal(p.grad.numpy(), g)  # the optimizer never edits gradients
    # and float32 agrees with the float64 closed form to float32 precision
    p64 = _params()
    _run(make(p64), p64, [[g.astype(np.float64) for g in step] for step in kept])
    for p, q in zip(params, p64):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)


def test_zero_grad_and_training_on_a_real_loss():
    w = minivit.tensor(np.array([3.0, -2.0], dtype=np.float32), requires_grad=True)
    opt = AdamW([w], lr=0.1, weight_decay=0.0)
    losses = []
    for _ in range(50):
        loss = ((w - 1.0) * (w - 1.0)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert w.grad is None
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    w.grad = minivit.tensor(np.ones(2, dtype=np.float32))
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(w.grad.numpy(), 0.0)


def test_step_closure_returns_loss():
    w = minivit.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = SGD([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    with minivit.no_grad():
        loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    np.testing.assert_allclose(w.numpy(), [0.8, 1.6])


def test_constructor_errors():
    w = _params()[0]
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        SGD(w, lr=0.1)
    with pytest.raises(ValueError, match="required"):
        SGD([w])
    with pytest.raises(ValueError, match="learning rate"):
        Adam([w], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW([w], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([w], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": [w]}, {"params": [w]}], lr=0.1)
    with pytest.raises(TypeError, match="expected a minivit Tensor"):
        SGD([np.zeros(3)], lr=0.1)


# --- state_dict ----------------------------------------------------------------------------

_MAKERS = {
    "sgd_momentum": lambda ps: SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.1,
                                   momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda ps: Adam(ps, lr=0.01, weight_decay=0.01),
    "adamw_groups": lambda ps: AdamW([{"params": ps[:1], "weight_decay": 0.0},
                                      {"params": ps[1:], "weight_decay": 0.05}], lr=0.01),
}


@pytest.mark.parametrize("name", list(_MAKERS))
def test_state_dict_round_trip_is_bit_identical(name):
    make = _MAKERS[name]
    grads = _grads(_params(dtype=np.float32), steps=6)
    # uninterrupted run
    ref = _params(dtype=np.float32)
    _run(make(ref), ref, grads)
    # 3 steps, save, fresh optimizer on copies of the parameters, load, 3 more steps
    first = _params(dtype=np.float32)
    opt = make(first)
    _run(opt, first, grads[:3])
    sd = opt.state_dict()
    sd = json.loads(json.dumps(_jsonable(sd)), object_hook=_unjson)  # survives a JSON+npz trip
    resumed = [minivit.tensor(p.numpy().copy(), requires_grad=True) for p in first]
    opt2 = make(resumed)
    opt2.load_state_dict(sd)
    _run(opt2, resumed, grads[3:])
    for p, q in zip(ref, resumed):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    # and the original keeps going unharmed by the snapshot
    _run(opt, first, grads[3:])
    for p, q in zip(ref, first):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def _jsonable(obj):
    """Mimic a checkpoint writer: arrays -> tagged lists, tuples -> lists, int keys -> str."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__arr__": obj.tolist(), "dtype": str(obj.dtype)}
    return obj


def _unjson(d):
    if "__arr__" in d:
        return np.asarray(d["__arr__"], dtype=d["dtype"])
    return d


def test_state_dict_layout_is_pytorch_like_and_a_snapshot():
    params = _params(shapes=((2,), (3,), (4,)))
    opt = AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.01)
    params[0].grad = minivit.tensor(np.ones(2))
    params[2].grad = minivit.tensor(np.ones(4))
    opt.step()
    sd = opt.state_dict()
    assert sorted(sd) == ["param_groups", "state"]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert sorted(sd["state"]) == [0, 2]  # parameter 1 had no gradient, so no state
    assert all(isinstance(v, np.ndarray) for st in sd["state"].values() for v in st.values())
    assert int(sd["state"][0]["step"]) == 1
    before = sd["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], before)


def test_load_state_dict_mismatch_errors():
    params = _params(shapes=((2,), (3,), (4,)))
    sd = SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="2 parameter groups.*has 1"):
        SGD(params, lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the saved state and 1"):
        SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1).load_state_dict(sd)
    opt = AdamW(params[:1], lr=0.1)
    params[0].grad = minivit.tensor(np.ones(2))
    opt.step()
    with pytest.raises(ValueError, match="shape"):
        AdamW(params[1:2], lr=0.1).load_state_dict(opt.state_dict())


def test_load_state_dict_casts_and_restores_hyperparameters(device):
    src = _params(dtype=np.float64)
    opt = AdamW(src, lr=0.02, betas=(0.8, 0.9))
    _run(opt, src, _grads(src, steps=2))
    sd = opt.state_dict()
    dst = _params(dtype=np.float32, device=device)
    opt2 = AdamW(dst, lr=1.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.02 and opt2.param_groups[0]["betas"] == (0.8, 0.9)
    assert opt2.param_groups[0]["params"][0] is dst[0]
    for p in dst:
        st = opt2.state[p]
        assert st["step"] == 2
        for key in ("exp_avg", "exp_avg_sq"):
            assert st[key].dtype == np.float32 and backend.device_of(st[key]) == device


def test_optimizer_on_device_matches_cpu(device):
    grads = _grads(_params(dtype=np.float32), steps=4)
    results = []
    for dev in ("cpu", device):
        ps = _params(dtype=np.float32, device=dev)
        opt = AdamW([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0}], lr=0.01)
        _run(opt, ps, grads)
        ps2 = _params(dtype=np.float32, device=dev)
        _run(SGD(ps2, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), ps2, grads)
        assert all(p.device == dev for p in ps + ps2)
        results.append(_np(ps + ps2))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --- clip_grad_norm_ -----------------------------------------------------------------------

@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm_matches_numpy(norm_type):
    params = _params(shapes=((3, 4), (5,), (2, 2, 2)), dtype=np.float32)
    grads = _grads(params, steps=1)[0]
    for p, g in zip(params, grads):
        p.grad = minivit.tensor(g * 3.0)
    params.append(minivit.tensor(np.ones(2, np.float32), requires_grad=True))  # no grad: ignored
    flat = np.concatenate([g.ravel() * 3.0 for g in grads]).astype(np.float64)
    want = np.linalg.norm(flat, ord=norm_type)
    total = clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(want, rel=1e-5)
    coef = 1.0 / (want + 1e-6)
    for p, g in zip(params, grads):
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad.numpy(), g * 3.0 * coef, rtol=1e-5)
    after = np.concatenate([p.grad.numpy().ravel() for p in params[:3]]).astype(np.float64)
    assert np.linalg.norm(after, ord=norm_type) == pytest.approx(1.0, rel=1e-4)


def test_clip_grad_norm_below_max_leaves_grads_alone():
    w = minivit.tensor(np.zeros(3, np.float32), requires_grad=True)
    w.grad = minivit.tensor(np.array([0.3, 0.4, 0.0], np.float32))
    before = w.grad.data
    assert clip_grad_norm_(w, max_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(w.grad.numpy(), np.array([0.3, 0.4, 0.0], np.float32))
    assert w.grad.data is before
    assert clip_grad_norm_([minivit.tensor(np.zeros(2), requires_grad=True)], 1.0) == 0.0
    w.grad = minivit.tensor(np.array([np.inf, 1.0, 0.0], np.float32))
    with pytest.raises(RuntimeError, match="inf"):
        clip_grad_norm_([w], 1.0, error_if_nonfinite=True)


# --- param_groups_weight_decay -------------------------------------------------------------

def _tiny_model():
    """A tiny model built from minivit.nn when it is there, else a stand-in with the same API."""
    try:
        from minivit import nn
        Module, Parameter = nn.Module, nn.Parameter
    except (ImportError, AttributeError):
        Module = Parameter = None
    shapes = {"cls_token": (1, 1, 4), "pos_embed": (1, 5, 4), "patch_embed.proj.weight": (4, 3, 2, 2),
              "patch_embed.proj.bias": (4,), "blocks.0.norm1.weight": (4,), "blocks.0.norm1.bias": (4,),
              "blocks.0.attn.qkv.weight": (12, 4), "blocks.0.attn.relative_position_bias_table": (9, 2),
              "blocks.0.pos.height_rel": (3, 2), "blocks.0.gamma": (4,), "blocks.0.mlp.fc1.weight": (8, 4),
              "head.weight": (10, 4), "head.bias": (10,), "frozen.weight": (2, 2)}
    if Module is None:
        class StandIn:
            def __init__(self):
                self.p = {k: minivit.tensor(np.zeros(s, np.float32), requires_grad=True)
                          for k, s in shapes.items()}
                self.p["frozen.weight"].requires_grad = False

            def named_parameters(self):
                return iter(self.p.items())
        return StandIn()

    def build(prefix):
        m = Module()
        children = {}
        for name, s in shapes.items():
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "." in rest:
                children.setdefault(rest.split(".")[0], None)
            else:
                setattr(m, rest, Parameter(minivit.zeros(s)))
        for child in children:
            setattr(m, child, build(prefix + child + "."))
        return m

    model = build("")
    model.frozen.weight.requires_grad = False
    return model


def test_param_groups_weight_decay_timm_rules():
    model = _tiny_model()
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=["head.weight"])
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = sorted(names[id(p)] for p in groups[0]["params"])
    decay = sorted(names[id(p)] for p in groups[1]["params"])
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05
    assert no_decay == sorted(["cls_token", "pos_embed", "patch_embed.proj.bias", "blocks.0.norm1.weight",
                               "blocks.0.norm1.bias", "blocks.0.attn.relative_position_bias_table",
                               "blocks.0.pos.height_rel", "blocks.0.gamma", "head.bias", "head.weight"])
    assert decay == sorted(["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"])
    # patterns, and groups feed straight into an optimizer
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=["blocks.*.mlp.*"])
    assert "blocks.0.mlp.fc1.weight" in {names[id(p)] for p in groups[0]["params"]}
    opt = AdamW(groups, lr=1e-3, weight_decay=0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.05]
    with pytest.raises(TypeError, match="named_parameters"):
        param_groups_weight_decay([1, 2], 0.05)


def test_public_api():
    for name in ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_", "param_groups_weight_decay",
                 "lr_scheduler"]:
        assert hasattr(optim, name)
