"""ViT (minivit/models/vit.py): sizes, shapes, gradients, input checks, reference logits
(timm, via tests/fixtures/ref_vit*.npz made by tools/make_reference_vit.py) and overfitting."""
import numpy as np
import pytest

import minivit
from model_checks import (assert_forward_finite, assert_logits_match, assert_overfits,
                          assert_random_in_train_only, assert_reference_keys,
                          assert_train_and_eval_shapes, check_whole_model_gradients,
                          config_fixture_model, eval_logits, load_fixture, model_module,
                          n_params, randomize_, state_shapes)

vit = model_module("vit")


def micro(**kw):
    cfg = dict(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0)
    cfg.update(kw)
    return vit.VisionTransformer(num_classes=3, **cfg)


# --------------------------------------------------------------------------------------------


def test_paper_scale_parameter_count_names_and_forward():
    model = vit.vit_tiny_patch16_224()
    assert n_params(model) == 5_717_416
    shapes = state_shapes(model)
    assert len(shapes) == 152
    assert_reference_keys(shapes, "vit_tiny_patch16_224.txt")
    assert_forward_finite(model, 224)


def test_cifar_config_count_shapes_train_and_eval():
    model = vit.vit_cifar(num_classes=10)
    assert n_params(model) == 1_806_538
    assert n_params(vit.vit_cifar(num_classes=100)) == 1_806_538 + 90 * 193
    assert_train_and_eval_shapes(model)
    registry = model_module("registry")
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
    assert_random_in_train_only(model, minivit.randn(4, 3, 8, 8))


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
    check_whole_model_gradients(randomize_(micro(global_pool=global_pool)), img_size=8)


@pytest.mark.parametrize("fixture", ["ref_vit.npz", "ref_vit_gap.npz"])
def test_reference_logits_match_timm(fixture):
    ref = load_fixture(fixture)
    model = config_fixture_model(ref, vit.VisionTransformer)
    assert_logits_match(eval_logits(model, ref["x"]), ref["logits"])


@pytest.mark.slow
def test_overfits_64_cifar_images():
    assert_overfits(lambda: vit.vit_cifar(num_classes=10), "vit_cifar", max_steps=300)


@pytest.mark.parametrize("proj_drop", [0.0, 0.3])
def test_block_residual_adds_match_the_paper_equations(proj_drop):
    # Block.forward hands x to attn / mlp as their residual (added in the last Linear's bias
    # pass, or after the dropout when there is one): x + MSA(LN(x)), then + MLP(LN(.)).
    blk = vit.Block(dim=8, num_heads=2, mlp_ratio=2.0, proj_drop=proj_drop)
    x = minivit.randn(2, 5, 8)
    for training in (True, False):
        blk.train(training)
        minivit.manual_seed(1)
        a = x + blk.attn(blk.norm1(x))
        want = (a + blk.mlp(blk.norm2(a))).numpy()
        minivit.manual_seed(1)
        np.testing.assert_allclose(blk(x).numpy(), want, rtol=1e-6, atol=1e-6)
