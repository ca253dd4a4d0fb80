"""MLP-Mixer (minivit/models/mlp_mixer.py): sizes, shapes, gradients, input checks, reference
logits (timm, via tests/fixtures/ref_mixer.npz made by tools/make_reference_mixer.py) and
overfitting."""
import numpy as np
import pytest

import minivit
from model_checks import (assert_forward_finite, assert_logits_match, assert_overfits,
                          assert_random_in_train_only, assert_reference_keys,
                          assert_train_and_eval_shapes, check_whole_model_gradients,
                          config_fixture_model, eval_logits, load_fixture, model_module,
                          n_params, randomize_, state_shapes)

mixer = model_module("mlp_mixer")


def micro(**kw):
    cfg = dict(img_size=8, patch_size=4, embed_dim=8, depth=2, mlp_ratio=(0.5, 2.0))
    cfg.update(kw)
    return mixer.MlpMixer(num_classes=3, **cfg)


# --------------------------------------------------------------------------------------------


def test_paper_scale_parameter_count_names_and_forward():
    model = mixer.mixer_b16_224()
    assert n_params(model) == 59_880_472
    shapes = state_shapes(model)
    assert shapes["blocks.0.mlp_tokens.fc1.weight"] == (384, 196)
    assert shapes["blocks.11.mlp_channels.fc2.weight"] == (768, 3072)
    assert_reference_keys(shapes, "mixer_b16_224.txt")
    assert_forward_finite(model, 224)


def test_cifar_config_count_shapes_train_and_eval():
    model = mixer.mlp_mixer_cifar(num_classes=10)
    assert n_params(model) == 1_301_706
    assert_train_and_eval_shapes(model)
    registry = model_module("registry")
    assert {"mixer_b16_224", "mlp_mixer_cifar"} <= set(registry.list_models())
    assert n_params(registry.create_model("mlp_mixer_cifar", num_classes=10, depth=2)) == (
        1_301_706 - 6 * 161_248)
    assert n_params(mixer.mlp_mixer_cifar(num_classes=10, num_blocks=2)) == 1_301_706 - 6 * 161_248


def test_overrides_and_options():
    with pytest.raises(TypeError, match="unknown MLP-Mixer config"):
        mixer.mlp_mixer_cifar(num_classes=10, num_heads=3)
    model = mixer.mlp_mixer_cifar(num_classes=10)
    blk = model.blocks[0]
    # token MLP hidden 0.5·C over the 64 patches, channel MLP hidden 2·C
    assert blk.mlp_tokens.fc1.weight.shape == (96, 64)
    assert blk.mlp_channels.fc1.weight.shape == (384, 192)
    # timm init: zero head, xavier-uniform MLP weights, ~0 MLP biases
    assert not model.head.weight.numpy().any() and not model.head.bias.numpy().any()
    w = blk.mlp_channels.fc1.weight.numpy()
    assert np.abs(w).max() <= np.sqrt(6 / (192 + 384)) + 1e-7
    assert np.abs(blk.mlp_channels.fc1.bias.numpy()).max() < 1e-4


def test_drop_path_and_dropout_are_train_only():
    model = randomize_(micro(drop_path_rate=0.5, proj_drop_rate=0.3), dtype=np.float32)
    assert_random_in_train_only(model, minivit.randn(4, 3, 8, 8))


def test_wrong_input_size_errors():
    model = mixer.mlp_mixer_cifar(num_classes=10)
    with pytest.raises(ValueError,
                       match=r"MLP-Mixer expects input \(B, 3, 32, 32\), got \(2, 3, 28, 28\)"):
        model(minivit.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        model(minivit.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        mixer.mlp_mixer_cifar(num_classes=10, patch_size=5)


def test_whole_model_directional_gradcheck():
    check_whole_model_gradients(randomize_(micro()), img_size=8)


def test_reference_logits_match_timm():
    ref = load_fixture("ref_mixer.npz")
    model = config_fixture_model(  # JSON stores the (tokens, channels) ratios as a list
        ref, lambda mlp_ratio, **cfg: mixer.MlpMixer(mlp_ratio=tuple(mlp_ratio), **cfg))
    assert_logits_match(eval_logits(model, ref["x"]), ref["logits"])


@pytest.mark.slow
def test_overfits_64_cifar_images():
    assert_overfits(lambda: mixer.mlp_mixer_cifar(num_classes=10), "mlp_mixer_cifar",
                    max_steps=300)


def test_drop_path_drops_whole_samples_in_the_tokens_first_layout():
    """The blocks run on (S, B, C): stochastic depth must still drop one sample's whole branch
    (axis 1), never a token's."""
    blk = mixer.MixerBlock(dim=6, seq_len=5, drop_path=0.5)
    x = minivit.randn(5, 16, 6)
    minivit.manual_seed(3)
    delta = (blk(x) - x).numpy()                                   # the two branches, per sample
    dropped = [not np.any(delta[:, b]) for b in range(16)]
    assert any(dropped) and not all(dropped)
    for b in range(16):
        assert dropped[b] or np.all(delta[:, b] != 0)
    blk.eval()
    assert np.all((blk(x) - x).numpy() != 0)


def test_block_takes_tokens_first_and_matches_the_paper_equation():
    """Eq. (1) written on (B, S, C) with explicit transposes gives the block's output."""
    blk = mixer.MixerBlock(dim=6, seq_len=5)
    x = np.random.default_rng(0).standard_normal((3, 5, 6)).astype(np.float32)   # (B, S, C)
    y = blk(minivit.tensor(x.transpose(1, 0, 2))).numpy().transpose(1, 0, 2)

    def mlp(m, a):
        h = a @ m.fc1.weight.numpy().T + m.fc1.bias.numpy()
        h = minivit.gelu(minivit.tensor(h)).numpy()
        return h @ m.fc2.weight.numpy().T + m.fc2.bias.numpy()

    def ln(n, a):
        mu, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
        return (a - mu) / np.sqrt(var + 1e-6) * n.weight.numpy() + n.bias.numpy()

    u = x + mlp(blk.mlp_tokens, ln(blk.norm1, x).transpose(0, 2, 1)).transpose(0, 2, 1)
    expect = u + mlp(blk.mlp_channels, ln(blk.norm2, u))
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5)
