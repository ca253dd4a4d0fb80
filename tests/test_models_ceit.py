"""CeiT (minivit/models/ceit.py): sizes, shapes, gradients, input checks, reference logits and
BatchNorm statistics (the official CeiT modules, via tests/fixtures/ref_ceit*.npz made by
tools/make_reference_ceit.py) and overfitting."""
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
                              "ceit_tiny_patch16_224_official.txt")


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


ceit = _module("ceit")


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
        elif ("norm" in name or ".bn" in name) and name.endswith("weight"):
            v = 1.0 + 0.1 * rng.standard_normal(p.shape)
        else:
            v = 0.1 * rng.standard_normal(p.shape)
        p.data = v.astype(dtype)
    return model


def micro(**kw):
    cfg = dict(img_size=8, i2t_chans=4, i2t_kernel=3, i2t_stride=1, patch_size=2, embed_dim=8,
               depth=2, num_heads=2, mlp_ratio=2.0)
    cfg.update(kw)
    return ceit.CeIT(num_classes=3, **cfg)


# --------------------------------------------------------------------------------------------


def test_paper_scale_parameter_count_names_and_forward():
    model = ceit.ceit_tiny_patch16_224()
    assert n_params(model) == 6_356_904
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["i2t.backbone.conv.weight"] == (64, 3, 7, 7)
    assert shapes["blocks.0.leff.conv2.weight"] == (768, 1, 3, 3)
    assert shapes["lca.feedforward.fc1.weight"] == (768, 192)
    assert shapes["i2t.backbone.bn.num_batches_tracked"] == ()
    if os.path.exists(REFERENCE_KEYS):  # the official code's key list, beside the repository
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
    model = ceit.ceit_cifar(num_classes=10)
    assert n_params(model) == 2_155_562
    assert model.i2t.grid_size == (8, 8) and model.pos_embed.shape == (1, 65, 192)
    assert model.pos_layer_embed.shape == (1, 6, 192)
    x = minivit.randn(2, 3, 32, 32)
    model.train()
    assert model(x).shape == (2, 10)
    model.eval()
    with minivit.no_grad():
        assert model(x).shape == (2, 10)
    registry = _module("registry")
    assert {"ceit_cifar", "ceit_tiny_patch16_224"} <= set(registry.list_models("ceit"))
    small = registry.create_model("ceit_cifar", num_classes=10, depth=2)
    assert small.pos_layer_embed.shape == (1, 2, 192)


def test_overrides_and_options():
    with pytest.raises(TypeError, match="unknown CeiT config"):
        ceit.ceit_cifar(num_classes=10, global_pool="avg")
    with pytest.raises(ValueError, match="leff_variant"):
        ceit.ceit_cifar(num_classes=10, leff_variant="other")
    no_bn = ceit.ceit_cifar(num_classes=10, depth=1, leff_with_bn=False)
    assert not [k for k in no_bn.state_dict() if ".leff.bn" in k]
    model = ceit.ceit_cifar(num_classes=10)
    assert not model.pos_layer_embed.numpy().any()           # zeros, never re-initialised
    assert 0.015 < model.pos_embed.numpy().std() < 0.025
    assert 0.015 < model.head.weight.numpy().std() < 0.025   # head trunc-normal, not zero


def test_leff_passes_the_class_token_through():
    model = randomize_(micro(), dtype=np.float32)
    leff = model.blocks[0].leff
    leff.train()
    z = minivit.randn(2, 5, 8)
    out = leff(z)
    assert out.shape == (2, 5, 8)
    np.testing.assert_array_equal(out.numpy()[:, 0], z.numpy()[:, 0])


def test_lca_uses_only_the_last_class_token_as_query():
    model = randomize_(micro(), dtype=np.float64)
    lca = model.lca
    s = np.random.default_rng(3).standard_normal((2, 4, 8))
    base = lca(minivit.tensor(s)).numpy()
    assert base.shape == (2, 1, 8)
    # changing an earlier token changes the output only through the keys and values: the
    # output equals full self-attention's last row, computed here by hand
    blk = lca
    x = minivit.tensor(s)
    n = blk.norm1(x).numpy()
    w, b = blk.attn.qkv.weight.numpy(), blk.attn.qkv.bias.numpy()
    qkv = (n @ w.T + b).reshape(2, 4, 3, 2, 4).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0][:, :, -1:], qkv[1], qkv[2]
    a = q @ k.transpose(0, 1, 3, 2) / 2.0
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(2, 1, 8)
    o = o @ blk.attn.proj.weight.numpy().T + blk.attn.proj.bias.numpy()
    u = s[:, -1:] + o
    ffn = blk.feedforward(blk.norm2(minivit.tensor(u))).numpy()
    np.testing.assert_allclose(base, u + ffn, rtol=1e-10, atol=1e-10)


def test_drop_path_and_dropout_are_train_only():
    model = randomize_(micro(drop_path_rate=0.5, drop_rate=0.3), dtype=np.float32)
    x = minivit.randn(4, 3, 8, 8)
    model.eval()
    with minivit.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    model.train()
    a, b = model(x).numpy(), model(x).numpy()
    assert not np.allclose(a, b)


def test_wrong_input_size_errors():
    model = ceit.ceit_cifar(num_classes=10)
    with pytest.raises(ValueError,
                       match=r"CeiT expects input \(B, 3, 32, 32\), got \(2, 3, 28, 28\)"):
        model(minivit.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        model(minivit.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        ceit.ceit_cifar(num_classes=10, img_size=30)        # 15x15 I2T map, patch 2
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        ceit.ceit_cifar(num_classes=10, img_size=28, patch_size=4)   # 14x14 map, patch 4


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_whole_model_directional_gradcheck(variant):
    model = randomize_(micro(leff_variant=variant))
    model.train()   # BatchNorm with batch statistics: the interesting backward
    x = minivit.tensor(np.random.default_rng(1).standard_normal((2, 3, 8, 8)),
                       dtype=np.float64, requires_grad=True)
    params = list(model.parameters())
    assert minivit.gradcheck_directional(model, x, params=params, atol=1e-6, rtol=1e-5)
    for p in params:
        p.grad = None
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("fixture", ["ref_ceit.npz", "ref_ceit_paper.npz"])
def test_reference_logits_and_batchnorm_match_official(fixture):
    ref = np.load(os.path.join(FIXTURES, fixture))
    cfg = json.loads(str(ref["config"]))
    model = ceit.CeIT(**cfg)
    state = {k[3:]: ref[k] for k in ref.files if k.startswith("sd/")}
    model.load_state_dict(state, strict=True)
    x = minivit.tensor(ref["x"])
    model.eval()
    with minivit.no_grad():
        out = model(x).numpy()
    expected = ref["logits"]
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(out - expected).max() <= 1e-5 * scale, np.abs(out - expected).max()
    # train mode: batch statistics, and the running statistics updated like PyTorch's
    model.train()
    with minivit.no_grad():
        out_train = model(x).numpy()
    expected = ref["logits_train"]
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(out_train - expected).max() <= 1e-5 * scale
    after = model.state_dict()
    for k in ref.files:
        if k.startswith("after_train/"):
            got = np.asarray(after[k[len("after_train/"):]].numpy()
                             if hasattr(after[k[len("after_train/"):]], "numpy")
                             else after[k[len("after_train/"):]])
            np.testing.assert_allclose(got, ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


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
    model = ceit.ceit_cifar(num_classes=10)
    log = []
    acc, steps = overfit(model, max_steps=300, log=log)
    print("ceit_cifar overfit (step, loss, accuracy, seconds):", log)
    assert acc > 0.95, log
