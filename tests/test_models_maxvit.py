"""MaxViT (minivit/models/maxvit.py): sizes, shapes, gradients, input checks,
reference logits (timm, via tests/fixtures/ref_maxvit*.npz made by
tools/make_reference_maxvit.py) and overfitting."""
import numpy as np
import pytest

import minivit
from minivit import nn
import model_checks
from model_checks import (assert_forward_finite, assert_overfits, assert_random_in_train_only,
                          assert_reference_keys, assert_train_and_eval_shapes,
                          check_timm_fixture, check_whole_model_gradients, model_module,
                          n_params, state_shapes)

maxvit = model_module("maxvit")


def randomize_(model, dtype=np.float64):
    """``model_checks.randomize_`` with norms' scales near 1 (0.2 spread) and N(0, 0.25)
    relative-position bias tables."""
    return model_checks.randomize_(model, dtype=dtype, scale_std=0.2,
                                   std_for={"relative_position_bias_table": 0.5})


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
    shapes = state_shapes(model)
    assert len(shapes) == 560
    assert not any("index" in k for k in shapes)   # relative index buffers are non-persistent
    assert_reference_keys(shapes, "maxvit_tiny_tf_224.txt")
    blk = model.stages[0].blocks[0]
    assert blk.attn_block.attn.rel_pos.relative_position_bias_table.shape == (2, 13, 13)
    assert blk.conv.norm1.eps == 1e-3 and blk.attn_block.norm1.eps == 1e-5


def test_paper_scale_forward():
    assert_forward_finite(maxvit.maxvit_tiny_tf_224(), 224)


def test_cifar_config_count_shapes_train_and_eval():
    model = maxvit.maxvit_cifar(num_classes=10)
    assert n_params(model) == 1_297_326
    assert n_params(maxvit.maxvit_cifar(num_classes=100)) == 1_297_326 + 90 * 129
    assert model.feat_size == (8, 8)
    assert_train_and_eval_shapes(model)
    registry = model_module("registry")
    assert {"maxvit_cifar", "maxvit_tiny_tf_224"} <= set(registry.list_models("maxvit"))
    small = registry.create_model("maxvit_cifar", num_classes=10, depths=(1, 1))
    assert len(small.stages[1].blocks) == 1
    with pytest.raises(TypeError, match="unknown MaxViT config"):
        maxvit.maxvit_cifar(num_classes=10, not_an_option=1)


def test_drop_path_is_train_only():
    model = maxvit.maxvit_cifar(num_classes=10, depths=(1, 1), drop_path_rate=0.5)
    assert_random_in_train_only(randomize_(model, dtype=np.float32), minivit.randn(4, 3, 32, 32))


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
    bias = rp().numpy()
    for qi in range(9):
        for ki in range(9):
            (qy, qx), (ky, kx) = divmod(qi, 3), divmod(ki, 3)
            np.testing.assert_array_equal(bias[:, qi, ki], table[:, ky - qy + 2, kx - qx + 2])
    assert "relative_position_index" not in rp.state_dict()


def test_tf_same_padding():
    """Strided convs pad (0, 1) on even inputs, as TF 'SAME' (timm Conv2dSame)."""
    assert nn.same_padding(32, 3, 2) == (0, 1) and nn.same_padding(7, 3, 2) == (1, 1)
    assert nn.same_padding(32, 2, 2) == (0, 0) and nn.same_padding(32, 3, 1) == (1, 1)
    conv = nn.Conv2dSame(1, 1, 3, stride=2, bias=False).double()
    conv.weight.data = np.ones((1, 1, 3, 3))
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = conv(minivit.tensor(x)).numpy()
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0] == x[0, 0, 0:3, 0:3].sum() and y[0, 0, 1, 1] == x[0, 0, 2:4, 2:4].sum()


@pytest.mark.parametrize("name", sorted(MICROS))
def test_whole_model_directional_gradcheck(name):
    # checked in train mode: BatchNorm with batch statistics, deterministic, so checkable
    check_whole_model_gradients(randomize_(maxvit.MaxViT(num_classes=3, **MICROS[name])),
                                img_size=MICROS[name]["img_size"], nonzero=True)


@pytest.mark.parametrize("fixture", ["ref_maxvit.npz", "ref_maxvit_cifar.npz"])
def test_reference_logits_match_timm(fixture):
    check_timm_fixture(maxvit.MaxViT, fixture)


@pytest.mark.slow
def test_overfits_64_cifar_images():
    assert_overfits(lambda: maxvit.maxvit_cifar(num_classes=10), "maxvit_cifar", max_steps=200,
                    batch=32)
