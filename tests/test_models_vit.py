"""ViT (minivit/models/vit.py): sizes, shapes, gradients, input checks, reference logits
(timm, via tests/fixtures/ref_vit*.npz made by tools/make_reference_vit.py) and overfitting."""
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
                              "vit_tiny_patch16_224.txt")


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


vit = _module("vit")


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def randomize_(model, seed=0, dtype=np.float64):
    """Non-trivial values (and ``dtype``) for every parameter: the zero-initialised head would
    otherwise make every body gradient zero and a gradient check vacuous."""
    if dtype == np.float64:
        model.double()      # parameters and floating buffers (BatchNorm running statistics)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            v = rng.standard_normal(p.shape) / np.sqrt(np.prod(p.shape[1:]))
        elif "norm" in name and name.endswith("weight"):
            v = 1.0 + 0.1 * rng.standard_normal(p.shape)
        else:
            v = 0.1 * rng.standard_normal(p.shape)
        p.data = v.astype(dtype)
    return model


def micro(**kw):
    cfg = dict(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0)
    cfg.update(kw)
    return vit.VisionTransformer(num_classes=3, **cfg)


# --------------------------------------------------------------------------------------------


def test_paper_scale_parameter_count_names_and_forward():
    model = vit.vit_tiny_patch16_224()
    assert n_params(model) == 5_717_416
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 152
    if os.path.exists(REFERENCE_KEYS):  # timm's key list, kept beside the repository
        ref = {}
        for line in open(REFERENCE_KEYS):
            if not line.startswith("#") and line.strip():
                key, shape, _ = line.rstrip("\n").split("\t")
                ref[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        assert shapes == ref
    x = minivit.randn(1, 3, 224, 224)
    model.eval()
    with minivit.no_grad():
        y = model(x)
    assert y.shape == (1, 1000)
    assert np.isfinite(y.numpy()).all()


def test_cifar_config_count_shapes_train_and_eval():
    model = vit.vit_cifar(num_classes=10)
    assert n_params(model) == 1_806_538
    assert n_params(vit.vit_cifar(num_classes=100)) == 1_806_538 + 90 * 193
    x = minivit.randn(2, 3, 32, 32)
    model.train()
    y = model(x)
    assert y.shape == (2, 10)
    model.eval()
    with minivit.no_grad():
        assert model(x).shape == (2, 10)
    registry = _module("registry")
    assert {"vit_cifar", "vit_tiny_patch16_224"} <= set(registry.list_models("vit"))
    assert n_params(registry.create_model("vit_cifar", num_classes=10, depth=2)) == (
        1_806_538 - 4 * 297_024)


def test_overrides_and_options():
    with pytest.raises(TypeError, match="unknown ViT config"):
        vit.vit_cifar(num_classes=10, not_an_option=1)
    gap = vit.vit_cifar(num_classes=10, global_pool="avg", depth=1)
    keys = set(gap.state_dict())
    assert "fc_norm.weight" in keys and "norm.weight" not in keys
    # initialisation as timm's default: head like every Linear (trunc-normal .02, bias 0),
    # tiny class token, pos_embed ~ trunc-normal(.02); zero_head=True gives the JAX zero head
    model = vit.vit_cifar(num_classes=10)
    assert 0.015 < model.head.weight.numpy().std() < 0.025 and not model.head.bias.numpy().any()
    zero = vit.vit_cifar(num_classes=10, depth=1, zero_head=True)
    assert not zero.head.weight.numpy().any() and not zero.head.bias.numpy().any()
    assert np.abs(model.cls_token.numpy()).max() < 1e-4
    assert 0.015 < model.pos_embed.numpy().std() < 0.025
    assert 0.015 < model.blocks[0].attn.qkv.weight.numpy().std() < 0.025


def test_drop_path_and_dropout_are_train_only():
    model = randomize_(micro(drop_path_rate=0.5, proj_drop_rate=0.3, drop_rate=0.2),
                       dtype=np.float32)
    x = minivit.randn(4, 3, 8, 8)
    model.train()
    a, b = model(x).numpy(), model(x).numpy()
    assert not np.allclose(a, b)
    model.eval()
    with minivit.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())


def test_wrong_input_size_errors():
    model = vit.vit_cifar(num_classes=10)
    with pytest.raises(ValueError, match=r"ViT expects input \(B, 3, 32, 32\), got \(2, 3, 28, 28\)"):
        model(minivit.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        model(minivit.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        vit.vit_cifar(num_classes=10, img_size=30)
    with pytest.raises(ValueError, match="num_heads"):
        vit.vit_cifar(num_classes=10, num_heads=5)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_whole_model_directional_gradcheck(global_pool):
    model = randomize_(micro(global_pool=global_pool))
    model.train()
    x = minivit.tensor(np.random.default_rng(1).standard_normal((2, 3, 8, 8)),
                       dtype=np.float64, requires_grad=True)
    params = list(model.parameters())
    assert minivit.gradcheck_directional(model, x, params=params, atol=1e-6, rtol=1e-5)
    for p in params:
        p.grad = None
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("fixture", ["ref_vit.npz", "ref_vit_gap.npz"])
def test_reference_logits_match_timm(fixture):
    ref = np.load(os.path.join(FIXTURES, fixture))
    cfg = json.loads(str(ref["config"]))
    model = vit.VisionTransformer(**cfg)
    state = {k[3:]: ref[k] for k in ref.files if k.startswith("sd/")}
    model.load_state_dict(state, strict=True)
    model.eval()
    with minivit.no_grad():
        out = model(minivit.tensor(ref["x"])).numpy()
    expected = ref["logits"]
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(out - expected).max() <= 1e-5 * scale, np.abs(out - expected).max()


# --------------------------------------------------------------------------------------------
# overfitting 64 real CIFAR images


def load_cifar64():
    path = os.path.join(os.path.dirname(minivit.__file__), "data", "cifar10_subset.npz")
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "cifar10-exact-subset.npz")
    d = np.load(path)
    x = d["x_train"][:64].astype(np.float32) / 255.0
    mean = np.array([125.3, 123.0, 113.9], np.float32) / 255
    std = np.array([63.0, 62.1, 66.7], np.float32) / 255
    x = ((x - mean) / std).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), d["y_train"][:64].astype(np.int64)


def adamw_step(params, state, lr, t, betas=(0.9, 0.999), eps=1e-8, wd=0.0):
    """Minimal AdamW (decoupled weight decay) used when minivit.optim is not there."""
    b1, b2 = betas
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        g = p.grad.data
        m, v = state.setdefault(i, (np.zeros_like(g), np.zeros_like(g)))
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p.data = p.data * (1 - lr * wd) - lr * mhat / (np.sqrt(vhat) + eps)


def overfit(model, max_steps, lr=1e-3, target=0.95, log=None):
    """Full-batch AdamW on the 64 images; every 10 steps measure the training accuracy in eval
    mode and stop once it exceeds ``target``. Returns (accuracy, steps taken)."""
    x_all, y_all = load_cifar64()
    x, y = minivit.tensor(x_all), minivit.tensor(y_all)
    params = list(model.parameters())
    state = {}
    t0 = time.perf_counter()
    acc = 0.0
    for t in range(1, max_steps + 1):
        model.train()
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        adamw_step(params, state, lr, t)
        if t % 10 == 0:
            model.eval()
            with minivit.no_grad():
                acc = float((model(x).numpy().argmax(axis=1) == y_all).mean())
            if log is not None:
                log.append((t, round(float(loss.item()), 4), acc,
                            round(time.perf_counter() - t0, 1)))
            if acc > target:
                return acc, t
    return acc, max_steps


@pytest.mark.slow
def test_overfits_64_cifar_images():
    minivit.manual_seed(0)
    model = vit.vit_cifar(num_classes=10)
    log = []
    acc, steps = overfit(model, max_steps=300, log=log)
    print("vit_cifar overfit (step, loss, accuracy, seconds):", log)
    assert acc > 0.95, log
