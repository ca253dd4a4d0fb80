"""CeiT (minivit/models/ceit.py): sizes, shapes, gradients, input checks, reference logits and
BatchNorm statistics (the official CeiT modules, via tests/fixtures/ref_ceit*.npz made by
tools/make_reference_ceit.py) and overfitting."""
import numpy as np
import pytest

import minivit
import model_checks
from model_checks import (assert_forward_finite, assert_logits_match, assert_overfits,
                          assert_random_in_train_only, assert_reference_keys,
                          assert_train_and_eval_shapes, check_whole_model_gradients,
                          config_fixture_model, eval_logits, fixture_state, load_fixture,
                          model_module, n_params, state_shapes)

ceit = model_module("ceit")


def randomize_(model, dtype=np.float64):
    """``model_checks.randomize_`` with the BatchNorm scales (``.bn``) near 1 like the norms'."""
    return model_checks.randomize_(
        model, dtype=dtype,
        is_scale=lambda name: ("norm" in name or ".bn" in name) and name.endswith("weight"))


def micro(**kw):
    cfg = dict(img_size=8, i2t_chans=4, i2t_kernel=3, i2t_stride=1, patch_size=2, embed_dim=8,
               depth=2, num_heads=2, mlp_ratio=2.0)
    cfg.update(kw)
    return ceit.CeIT(num_classes=3, **cfg)


# --------------------------------------------------------------------------------------------


def test_paper_scale_parameter_count_names_and_forward():
    model = ceit.ceit_tiny_patch16_224()
    assert n_params(model) == 6_356_904
    shapes = state_shapes(model)
    assert shapes["i2t.backbone.conv.weight"] == (64, 3, 7, 7)
    assert shapes["blocks.0.leff.conv2.weight"] == (768, 1, 3, 3)
    assert shapes["lca.feedforward.fc1.weight"] == (768, 192)
    assert shapes["i2t.backbone.bn.num_batches_tracked"] == ()
    assert_reference_keys(shapes, "ceit_tiny_patch16_224_official.txt")
    assert_forward_finite(model, 224)


def test_cifar_config_count_shapes_train_and_eval():
    model = ceit.ceit_cifar(num_classes=10)
    assert n_params(model) == 2_155_562
    assert model.i2t.grid_size == (8, 8) and model.pos_embed.shape == (1, 65, 192)
    assert model.pos_layer_embed.shape == (1, 6, 192)
    assert_train_and_eval_shapes(model)
    registry = model_module("registry")
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
    assert_random_in_train_only(model, minivit.randn(4, 3, 8, 8))


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
    # checked in train mode: BatchNorm with batch statistics, the interesting backward
    check_whole_model_gradients(randomize_(micro(leff_variant=variant)), img_size=8)


@pytest.mark.parametrize("fixture", ["ref_ceit.npz", "ref_ceit_paper.npz"])
def test_reference_logits_and_batchnorm_match_official(fixture):
    ref = load_fixture(fixture)
    model = config_fixture_model(ref, ceit.CeIT)
    assert_logits_match(eval_logits(model, ref["x"]), ref["logits"])
    # train mode: batch statistics, and the running statistics updated like PyTorch's
    model.train()
    with minivit.no_grad():
        out_train = model(minivit.tensor(ref["x"])).numpy()
    assert_logits_match(out_train, ref["logits_train"])
    after = model.state_dict()
    for name, expected in fixture_state(ref, "after_train/").items():
        got = np.asarray(after[name].numpy() if hasattr(after[name], "numpy") else after[name])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"after_train/{name}")


@pytest.mark.slow
def test_overfits_64_cifar_images():
    assert_overfits(lambda: ceit.ceit_cifar(num_classes=10), "ceit_cifar", max_steps=300)


@pytest.mark.parametrize("overrides", [dict(leff_with_bn=False), dict(leff_variant="official")])
def test_leff_options_train_forward_and_backward(overrides):
    """Without the LeFF BatchNorms (GELU alone) and without the last GELU (BatchNorm alone)."""
    model = ceit.ceit_cifar(num_classes=10, depth=1, **overrides)
    y = model(minivit.randn(2, 3, 32, 32))
    y.sum().backward()
    assert y.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert hasattr(model.blocks[0].leff, "bn1") != ("leff_with_bn" in overrides)
