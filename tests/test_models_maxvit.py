"""MaxViT (minivit/models/maxvit.py): sizes, shapes, gradients, input checks,
reference logits (timm, via tests/fixtures/ref_maxvit*.npz made by
tools/make_reference_maxvit.py) and overfitting."""
import importlib
import json
import os
import sys
import time

import numpy as np
import pytest

import minivit
import minivit.nn.functional as F

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
REFERENCE_KEYS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference",
                              "maxvit_tiny_tf_224.txt")


def _module(name):
    """Import ``minivit.models.<name>`` even while the package ``__init__`` (which imports all
    five model files) fails on a file that is not there yet."""
    full = f"minivit.models.{name}"
    try:
        importlib.import_module(full)
    except ImportError:
        if full not in sys.modules:
            raise
    return sys.modules[full]


maxvit = _module("maxvit")


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def randomize_(model, seed=0, dtype=np.float64):
    """Non-trivial values (and ``dtype``) for every parameter, norms' scales near 1."""
    if dtype == np.float64:
        model.double()      # parameters and floating buffers (BatchNorm running statistics)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if "relative_position_bias_table" in name:
            v = 0.5 * rng.standard_normal(p.shape)
        elif p.ndim >= 2:
            v = rng.standard_normal(p.shape) / np.sqrt(np.prod(p.shape[1:]))
        elif "norm" in name and name.endswith("weight"):
            v = 1.0 + 0.2 * rng.standard_normal(p.shape)
        else:
            v = 0.1 * rng.standard_normal(p.shape)
        p.data = v.astype(dtype)
    return model


MICROS = {
    # tf head (LayerNorm + tanh pre-logits), stem with bias, both stages strided (TF 'same'
    # padding in the stem and the depthwise convs), width change with the 1x1 shortcut conv
    "tf": dict(img_size=16, stem_width=8, stem_bias=True, dims=(8, 16), depths=(1, 1),
               strides=(2, 2), window_size=2, dim_head=4, head_hidden_size=16),
    # maxvit_cifar's layout: stride-1 first stage, window = grid = 4 at 8x8, norm + fc head
    "cifar": dict(img_size=16, stem_width=8, stem_bias=False, dims=(8, 16), depths=(1, 1),
                  strides=(1, 2), window_size=2, dim_head=4, head_hidden_size=None),
}


# --------------------------------------------------------------------------------------------


def test_paper_scale_parameter_count_and_names():
    model = maxvit.maxvit_tiny_tf_224()
    assert n_params(model) == 30_916_528
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 560
    assert not any("index" in k for k in shapes)   # relative index buffers are non-persistent
    if os.path.exists(REFERENCE_KEYS):  # timm's key list, kept beside the repository
        ref = {}
        for line in open(REFERENCE_KEYS):
            if not line.startswith("#") and line.strip():
                key, shape, _ = line.rstrip("\n").split("\t")
                ref[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        assert shapes == ref
    blk = model.stages[0].blocks[0]
    assert blk.attn_block.attn.rel_pos.relative_position_bias_table.shape == (2, 13, 13)
    assert blk.conv.norm1.eps == 1e-3 and blk.attn_block.norm1.eps == 1e-5


def test_paper_scale_forward():
    model = maxvit.maxvit_tiny_tf_224().eval()
    with minivit.no_grad():
        y = model(minivit.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000)
    assert np.isfinite(y.numpy()).all()


def test_cifar_config_count_shapes_train_and_eval():
    model = maxvit.maxvit_cifar(num_classes=10)
    assert n_params(model) == 1_297_326
    assert n_params(maxvit.maxvit_cifar(num_classes=100)) == 1_297_326 + 90 * 129
    assert model.feat_size == (8, 8)
    x = minivit.randn(2, 3, 32, 32)
    model.train()
    y = model(x)
    assert y.shape == (2, 10) and np.isfinite(y.numpy()).all()
    model.eval()
    with minivit.no_grad():
        assert model(x).shape == (2, 10)
    registry = _module("registry")
    assert {"maxvit_cifar", "maxvit_tiny_tf_224"} <= set(registry.list_models("maxvit"))
    small = registry.create_model("maxvit_cifar", num_classes=10, depths=(1, 1))
    assert len(small.stages[1].blocks) == 1
    with pytest.raises(TypeError, match="unknown MaxViT config"):
        maxvit.maxvit_cifar(num_classes=10, not_an_option=1)


def test_drop_path_is_train_only():
    model = randomize_(maxvit.maxvit_cifar(num_classes=10, depths=(1, 1),
                                   drop_path_rate=0.5), dtype=np.float32)
    x = minivit.randn(4, 3, 32, 32)
    model.train()
    assert not np.allclose(model(x).numpy(), model(x).numpy())
    model.eval()
    with minivit.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())

def test_wrong_input_size_errors():
    model = maxvit.maxvit_cifar(num_classes=10)
    with pytest.raises(ValueError,
                       match=r"expects input of shape \(B, 3, 32, 32\), got \(2, 3, 28, 28\)"):
        model(minivit.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        model(minivit.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="6x6 map at stage 1, not divisible by the window size 4"):
        maxvit.maxvit_cifar(num_classes=10, img_size=24)
    with pytest.raises(ValueError, match="not divisible by the window size 7"):
        maxvit.maxvit_tiny_tf_224(img_size=256)
    with pytest.raises(ValueError, match="head width"):
        maxvit.maxvit_cifar(num_classes=10, stem_width=48, dims=(48, 128))


def test_partitions_and_bias_convention():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float64).reshape(2, 4, 4, 1)
    t = minivit.tensor(x)
    win = maxvit.window_partition(t, 2).numpy()
    grid = maxvit.grid_partition(t, 2).numpy()
    np.testing.assert_array_equal(win[1, :, 0], x[0, 0:2, 2:4, 0].reshape(-1))   # contiguous tile
    np.testing.assert_array_equal(grid[1, :, 0], x[0, 0::2, 1::2, 0].reshape(-1))  # dilated grid
    np.testing.assert_array_equal(maxvit.window_reverse(minivit.tensor(win), 2, 4, 4).numpy(), x)
    np.testing.assert_array_equal(maxvit.grid_reverse(minivit.tensor(grid), 2, 4, 4).numpy(), x)
    # RelPosBiasTf: bias[h, (qy,qx), (ky,kx)] = table[h, ky-qy+P-1, kx-qx+P-1] (key - query)
    rp = maxvit.RelPosBiasTf(3, num_heads=2)
    table = np.random.default_rng(0).standard_normal((2, 5, 5)).astype(np.float32)
    rp.relative_position_bias_table.data = table
    bias = rp.get_bias().numpy()
    for qi in range(9):
        for ki in range(9):
            (qy, qx), (ky, kx) = divmod(qi, 3), divmod(ki, 3)
            np.testing.assert_array_equal(bias[:, qi, ki], table[:, ky - qy + 2, kx - qx + 2])
    assert "relative_position_index" not in rp.state_dict()


def test_tf_same_padding():
    """Strided convs pad (0, 1) on even inputs, as TF 'SAME' (timm Conv2dSame)."""
    assert maxvit._same_pad(32, 3, 2) == (0, 1) and maxvit._same_pad(7, 3, 2) == (1, 1)
    assert maxvit._same_pad(32, 2, 2) == (0, 0) and maxvit._same_pad(32, 3, 1) == (1, 1)
    conv = maxvit.Conv2dSame(1, 1, 3, stride=2, bias=False).double()
    conv.weight.data = np.ones((1, 1, 3, 3))
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = conv(minivit.tensor(x)).numpy()
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0] == x[0, 0, 0:3, 0:3].sum() and y[0, 0, 1, 1] == x[0, 0, 2:4, 2:4].sum()


@pytest.mark.parametrize("name", sorted(MICROS))
def test_whole_model_directional_gradcheck(name):
    model = randomize_(maxvit.MaxViT(num_classes=3, **MICROS[name]))
    model.train()        # BatchNorm with batch statistics: deterministic, so checkable
    s = MICROS[name]["img_size"]
    x = minivit.tensor(np.random.default_rng(1).standard_normal((2, 3, s, s)),
                       dtype=np.float64, requires_grad=True)
    params = list(model.parameters())
    assert minivit.gradcheck_directional(model, x, params=params, atol=1e-6, rtol=1e-5)
    for p in params:
        p.grad = None
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(np.abs(p.grad.numpy()).max() > 0 for p in params)


@pytest.mark.parametrize("fixture", ["ref_maxvit.npz", "ref_maxvit_cifar.npz"])
def test_reference_logits_match_timm(fixture):
    ref = np.load(os.path.join(FIXTURES, fixture), allow_pickle=False)
    meta = json.loads(str(ref["meta"]))
    model = maxvit.MaxViT(num_classes=meta["num_classes"], **meta["minivit_kwargs"])
    assert n_params(model) == meta["num_params"]
    state = {k[len("state/"):]: ref[k] for k in ref.files if k.startswith("state/")}
    model.load_state_dict(state, strict=True)
    model.eval()
    with minivit.no_grad():
        out = model(minivit.tensor(ref["input"])).numpy()
    expected = ref["logits"]
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(out - expected).max() <= 1e-5 * scale, np.abs(out - expected).max()
    model.double()       # same float32 weights, float64 arithmetic on both sides
    with minivit.no_grad():
        out64 = model(minivit.tensor(ref["input"].astype(np.float64))).numpy()
    assert np.abs(out64 - ref["logits64"]).max() <= 1e-10 * scale


# --------------------------------------------------------------------------------------------
# overfitting 64 real CIFAR images


def load_cifar64():
    path = os.path.join(os.path.dirname(minivit.__file__), "data", "cifar10_subset.npz")
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "cifar10-exact-subset.npz")
    d = np.load(path, allow_pickle=False)
    x = d["x_train"][:64].astype(np.float32) / 255.0
    mean = np.array([125.3, 123.0, 113.9], np.float32) / 255
    std = np.array([63.0, 62.1, 66.7], np.float32) / 255
    x = ((x - mean) / std).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), d["y_train"][:64].astype(np.int64)


def overfit(model, max_steps, lr=1e-3, batch=32, target=0.95, log=None):
    """AdamW on random halves of the 64 images; every 10 steps measure the training accuracy
    in eval mode (BatchNorm running statistics) and stop once it exceeds ``target``.
    Returns (accuracy, steps taken)."""
    from minivit.optim import AdamW

    x_all, y_all = load_cifar64()
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    acc = 0.0
    for t in range(1, max_steps + 1):
        model.train()
        idx = rng.permutation(64)[:batch]
        opt.zero_grad()
        loss = F.cross_entropy(model(minivit.tensor(x_all[idx])), minivit.tensor(y_all[idx]))
        loss.backward()
        opt.step()
        if t % 10 == 0:
            model.eval()
            with minivit.no_grad():
                acc = float((model(minivit.tensor(x_all)).numpy().argmax(axis=1) == y_all).mean())
            if log is not None:
                log.append((t, round(float(loss.item()), 4), acc,
                            round(time.perf_counter() - t0, 1)))
            if acc > target:
                return acc, t
    return acc, max_steps


@pytest.mark.slow
def test_overfits_64_cifar_images():
    minivit.manual_seed(0)
    model = maxvit.maxvit_cifar(num_classes=10)
    log = []
    acc, steps = overfit(model, max_steps=200, log=log)
    print("maxvit_cifar overfit (step, loss, accuracy, seconds):", log)
    assert acc > 0.95, f"training accuracy {acc} after {steps} steps"
