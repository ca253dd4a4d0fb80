"""BoTNet (minivit/models/botnet.py): sizes, shapes, gradients, input checks,
reference logits (timm, via tests/fixtures/ref_botnet*.npz made by
tools/make_reference_botnet.py) and overfitting."""
import numpy as np
import pytest

import minivit
import model_checks
from model_checks import (assert_forward_finite, assert_overfits, assert_random_in_train_only,
                          assert_reference_keys, assert_train_and_eval_shapes,
                          check_timm_fixture, check_whole_model_gradients, model_module,
                          n_params, state_shapes)

botnet = model_module("botnet")


def randomize_(model, dtype=np.float64):
    """``model_checks.randomize_`` with every 1-d weight a BatchNorm scale, near 1 (0.2 spread):
    the zero-initialised last BN of each block would otherwise zero most gradients."""
    return model_checks.randomize_(model, dtype=dtype, scale_std=0.2,
                                   is_scale=lambda name: name.endswith("weight"))


MICROS = {
    # tiered stem + max pool, a bottleneck stage, then a stride-2 MHSA block and a stride-1 one
    "tiered": dict(img_size=32, stem_type="tiered", stem_chs=8, stem_pool=True, widths=(16, 32),
                   depths=(1, 2), strides=(1, 2), block_types=("bottle", "self_attn"),
                   num_heads=2),
    # 7x7 stem without pool, a strided bottleneck, then MHSA at 4x4 (botnet_cifar's layout)
    "7x7": dict(img_size=16, stem_type="7x7", stem_chs=8, stem_pool=False, widths=(16, 32),
                depths=(1, 1), strides=(2, 1), block_types=("bottle", "self_attn"), num_heads=2),
}


# --------------------------------------------------------------------------------------------


def test_paper_scale_parameter_count_and_names():
    model = botnet.botnet26t_256()
    assert n_params(model) == 12_488_672
    shapes = state_shapes(model)
    assert not any("index" in k for k in shapes)   # relative index buffers are non-persistent
    assert_reference_keys(shapes, "botnet26t_256.txt")
    att = model.stages[3][0].self_attn
    assert att.pos_embed.height_rel.shape == (31, 128)          # attends at 16x16, then pools
    assert model.stages[3][1].self_attn.pos_embed.width_rel.shape == (15, 128)


def test_paper_scale_forward():
    assert_forward_finite(botnet.botnet26t_256(), 256)


def test_cifar_config_count_shapes_train_and_eval():
    model = botnet.botnet_cifar(num_classes=10)
    # docs/recipe.md: timm's ByobNet built with the stated layout (7x7/2 stem, widths
    # 128/256/512, depths 2, strides 1/2/1, bottleneck 1/4, 4-head MHSA at 8x8) has 687,306
    # parameters, and so has this model (checked against timm in tools/make_reference_botnet.py).
    assert n_params(model) == 687_306
    assert n_params(botnet.botnet_cifar(num_classes=100)) == 687_306 + 90 * 513
    assert model.feat_size == (8, 8)
    assert model.stages[2][0].self_attn.pos_embed.height_rel.shape == (15, 32)
    assert_train_and_eval_shapes(model)
    registry = model_module("registry")
    assert {"botnet_cifar", "botnet26t_256"} <= set(registry.list_models("botnet"))
    small = registry.create_model("botnet_cifar", num_classes=10, depths=(1, 1, 1))
    assert len(small.stages[2]) == 1
    with pytest.raises(TypeError, match="unknown BoTNet config"):
        botnet.botnet_cifar(num_classes=10, not_an_option=1)


def test_initialisation_follows_timm():
    model = botnet.botnet_cifar(num_classes=10)
    for blocks in model.stages:
        for blk in blocks:
            assert not blk.conv3_1x1.bn.weight.numpy().any()   # zero-init last BN
    qkv = model.stages[2][0].self_attn.qkv.weight.numpy()
    assert abs(qkv.std() - 128 ** -0.5) < 0.01                 # trunc-normal, std fan_in^-0.5
    assert abs(model.head.fc.weight.numpy().std() - 0.01) < 0.002


def test_drop_path_is_train_only():
    model = botnet.botnet_cifar(num_classes=10, depths=(1, 1, 1), drop_path_rate=0.5)
    assert_random_in_train_only(randomize_(model, dtype=np.float32), minivit.randn(4, 3, 32, 32))


def test_wrong_input_size_errors():
    model = botnet.botnet_cifar(num_classes=10)
    with pytest.raises(ValueError,
                       match=r"expects input of shape \(B, 3, 32, 32\), got \(2, 3, 28, 28\)"):
        model(minivit.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        model(minivit.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="15x15 map at stage 3.*cannot halve"):
        botnet.botnet26t_256(img_size=240)
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        botnet.botnet_cifar(num_classes=10, num_heads=3)


def test_relative_logits_match_the_definition():
    """logit[(qy,qx),(ky,kx)] = q . height_rel[ky-qy+H-1] + q . width_rel[kx-qx+W-1]."""
    rng = np.random.default_rng(0)
    h, w, d = 3, 4, 5
    pe = botnet.PosEmbedRel((h, w), d, scale=1.0).double()
    pe.height_rel.data = rng.standard_normal(pe.height_rel.shape)
    pe.width_rel.data = rng.standard_normal(pe.width_rel.shape)
    q = rng.standard_normal((2, h * w, d))
    out = pe(minivit.tensor(q)).numpy()
    hr, wr = pe.height_rel.numpy(), pe.width_rel.numpy()
    expect = np.zeros((2, h * w, h * w))
    for qy in range(h):
        for qx in range(w):
            for ky in range(h):
                for kx in range(w):
                    r = hr[ky - qy + h - 1] + wr[kx - qx + w - 1]
                    expect[:, qy * w + qx, ky * w + kx] = q[:, qy * w + qx] @ r
    np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MICROS))
def test_whole_model_directional_gradcheck(name):
    # checked in train mode: BatchNorm with batch statistics, deterministic, so checkable
    check_whole_model_gradients(randomize_(botnet.BoTNet(num_classes=3, **MICROS[name])),
                                img_size=MICROS[name]["img_size"], nonzero=True)


@pytest.mark.parametrize("fixture", ["ref_botnet.npz", "ref_botnet_cifar.npz"])
def test_reference_logits_match_timm(fixture):
    check_timm_fixture(botnet.BoTNet, fixture)


@pytest.mark.slow
def test_overfits_64_cifar_images():
    assert_overfits(lambda: botnet.botnet_cifar(num_classes=10), "botnet_cifar", max_steps=200,
                    batch=32)
