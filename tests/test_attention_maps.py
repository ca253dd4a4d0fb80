"""Attention maps (issue 25): capture_attention on the four attention models, the
probabilities against a plain recomputation from each module's q and k, the untouched fast
path outside the context, attention rollout, the `minivit attention` command; and hooks on
every parameter-owning module of the five CIFAR models."""
from __future__ import annotations

import numpy as np
import pytest

import minivit
from minivit import cli
from minivit.models import create_model
from minivit.nn.functional import attention as attn_f
from minivit.utils import attention_rollout, capture_attention

CIFAR_MODELS = ["vit_cifar", "mlp_mixer_cifar", "maxvit_cifar", "botnet_cifar", "ceit_cifar"]


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _capture(name, batch=2, **overrides):
    minivit.manual_seed(0)
    model = create_model(name, num_classes=10, **overrides).eval()
    x = minivit.tensor(np.random.default_rng(0).standard_normal((batch, 3, 32, 32),
                                                                dtype=np.float32))
    qkv_out = {}

    def grab(mod, args, out):
        qkv_out[names[id(mod)]] = out.numpy().astype(np.float64)

    names = {id(m): n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(grab) for n, m in model.named_modules()
               if n.endswith(".qkv")]
    with capture_attention(model) as maps, minivit.no_grad():
        y = model(x)
    for h in handles:
        h.remove()
    return model, x, y, maps, qkv_out


EXPECTED = {
    "vit_cifar": [f"blocks.{i}.attn" for i in range(6)],
    "ceit_cifar": [f"blocks.{i}.attn" for i in range(6)] + ["lca.attn"],
}


@pytest.mark.parametrize("name", ["vit_cifar", "ceit_cifar", "botnet_cifar", "maxvit_cifar"])
def test_probabilities_sum_to_one_over_keys_in_every_attention_module(name):
    model, _, _, maps, _ = _capture(name)
    assert maps, "no attention captured"
    if name in EXPECTED:
        assert list(maps) == EXPECTED[name]
    if name == "maxvit_cifar":
        assert any(n.endswith("attn_block.attn") for n in maps)
        assert any(n.endswith("attn_grid.attn") for n in maps)
    for mname, p in maps.items():
        assert isinstance(p, np.ndarray) and p.ndim == 4 and p.dtype == np.float32
        model.get_submodule(mname)                            # a real module's name
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)
        assert (p >= 0).all()


@pytest.mark.parametrize("name", ["vit_cifar", "ceit_cifar"])
def test_vit_family_probabilities_equal_a_recomputation_from_the_modules_q_and_k(name):
    model, _, _, maps, qkv = _capture(name)
    for mname, p in maps.items():
        attn = model.get_submodule(mname)
        B, L, _ = qkv[mname + ".qkv"].shape
        t = qkv[mname + ".qkv"].reshape(B, L, 3, attn.num_heads, -1).transpose(2, 0, 3, 1, 4)
        q, k = t[0], t[1]
        if mname == "lca.attn":
            q = q[:, :, L - 1:]                               # only the last class token asks
        ref = softmax(q @ k.swapaxes(-1, -2) * attn.scale)
        assert p.shape == ref.shape
        np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-6)


def _window_of_each_pixel(h, w, p, block):
    """(window id, token index in its window) of each row-major pixel: P x P tiles (block
    attention), or the dilated groups of pixels H/G apart (grid attention, G = p)."""
    ys, xs = np.divmod(np.arange(h * w), w)
    if block:
        return (ys // p) * (w // p) + xs // p, (ys % p) * p + xs % p
    sh, sw = h // p, w // p
    return (ys % sh) * sw + xs % sw, (ys // sh) * p + xs // sw


def test_maxvit_probabilities_equal_a_recomputation_with_the_relative_bias():
    model, x, _, maps, qkv = _capture("maxvit_cifar")
    for mname, p in maps.items():
        attn = model.get_submodule(mname)
        part = model.get_submodule(mname[:-len(".attn")])
        out = qkv[mname + ".qkv"]
        windows_b, T, _ = out.shape
        t = out.reshape(windows_b, T, 3, attn.num_heads, -1).transpose(2, 0, 3, 1, 4)
        with minivit.no_grad():
            bias = attn.rel_pos().numpy().astype(np.float64)
        ref = softmax(t[0] @ t[1].swapaxes(-1, -2) * attn.scale + bias)   # per window
        B, n = x.shape[0], p.shape[-1]
        h = w = int(round(np.sqrt(n)))
        assert p.shape == (B, attn.num_heads, n, n)                  # over the whole map
        win, tok = _window_of_each_pixel(h, w, part.partition_size, part.partition_block)
        nwin = windows_b // B
        same = win[:, None] == win[None, :]
        assert (p[:, :, ~same] == 0).all()                           # only inside its window
        for b in range(B):
            expect = ref[b * nwin + win[:, None], :, tok[:, None], tok[None, :]]   # (n, n, heads)
            np.testing.assert_allclose(p[b][:, same], expect[same].T, rtol=1e-4, atol=1e-6)


def test_botnet_probabilities_equal_a_recomputation_with_the_relative_logits():
    minivit.manual_seed(0)
    model = create_model("botnet_cifar", num_classes=10).eval()
    inputs = {}
    names = {id(m): n for n, m in model.named_modules()}
    attn_modules = [m for n, m in model.named_modules() if type(m).__name__ == "BottleneckAttn"]
    assert attn_modules
    for m in attn_modules:
        m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(names[id(mod)], args[0]))
    with capture_attention(model) as maps, minivit.no_grad():
        model(minivit.randn(2, 3, 32, 32))
    assert sorted(maps) == sorted(inputs)
    for mname, x in inputs.items():
        attn = model.get_submodule(mname)
        with capture_attention(attn) as own, minivit.no_grad():   # the module on its own input
            attn(x)
        np.testing.assert_array_equal(own[""], maps[mname])
        # and by hand: q, k from the 1x1 conv's weight, relative logits from pos_embed
        b, h, w, c = x.shape
        wq = attn.qkv.weight.numpy().reshape(-1, c).astype(np.float64)
        qkv = x.numpy().reshape(b, h * w, c).astype(np.float64) @ wq.T
        dqk, heads = attn.dim_head_qk, attn.num_heads
        q = qkv[..., :heads * dqk].reshape(b, h * w, heads, dqk).transpose(0, 2, 1, 3)
        k = qkv[..., heads * dqk:2 * heads * dqk].reshape(b, h * w, heads, dqk)
        k = k.transpose(0, 2, 1, 3)
        with minivit.no_grad():
            rel = attn.pos_embed(minivit.tensor(q.reshape(b * heads, h * w, dqk)
                                                .astype(np.float32))).numpy()
        ref = softmax(q @ k.swapaxes(-1, -2) * attn.scale
                      + rel.reshape(b, heads, h * w, h * w))
        np.testing.assert_allclose(maps[mname], ref, rtol=1e-3, atol=1e-5)


def test_outside_the_context_the_fast_path_is_untouched():
    model, x, y, maps, _ = _capture("vit_cifar")
    assert attn_f.observers == []
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with minivit.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), y.numpy())   # capture changed nothing
        model(x)
    assert len(maps) == 6 and maps["blocks.0.attn"].shape[0] == 2    # no later forward added


def test_several_forwards_are_concatenated_and_a_model_without_attention_gives_nothing():
    model = create_model("vit_cifar", num_classes=10, depth=1).eval()
    with capture_attention(model) as maps, minivit.no_grad():
        model(minivit.randn(2, 3, 32, 32))
        model(minivit.randn(3, 3, 32, 32))
    assert maps["blocks.0.attn"].shape == (5, 3, 65, 65)
    mixer = create_model("mlp_mixer_cifar", num_classes=10).eval()
    with capture_attention(mixer) as maps, minivit.no_grad():
        mixer(minivit.randn(1, 3, 32, 32))
    assert maps == {}


def test_capture_works_while_training_with_gradients():
    model = create_model("vit_cifar", num_classes=10, depth=1)
    with capture_attention(model) as maps:
        model(minivit.randn(2, 3, 32, 32)).sum().backward()
    np.testing.assert_allclose(maps["blocks.0.attn"].sum(-1), 1, atol=1e-5)
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_rollout_of_identity_attention_is_the_identity_and_rows_stay_distributions():
    eye = np.eye(4)[None, None]
    np.testing.assert_allclose(attention_rollout([eye, eye, eye])[0], np.eye(4))
    rng = np.random.default_rng(0)
    maps = [softmax(rng.standard_normal((2, 3, 5, 5))) for _ in range(4)]
    r = attention_rollout(maps)
    np.testing.assert_allclose(r.sum(-1), 1)
    a = [0.5 * m.mean(1) + 0.5 * np.eye(5) for m in maps]
    np.testing.assert_allclose(r, a[3] @ a[2] @ a[1] @ a[0])
    with pytest.raises(ValueError, match="no attention maps"):
        attention_rollout([])


def run_cli(capsys, *argv):
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_attention_command_draws_a_model_before_training(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "maps.png"
    rc, text, err = run_cli(capsys, "attention", "vit_cifar", "--image", "3", "--out", out)
    assert rc == 0, err
    assert out.read_bytes()[:4] == b"\x89PNG" and f"wrote {out}" in text


def test_attention_command_errors(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc, _, err = run_cli(capsys, "attention", "mlp_mixer_cifar", "--out", tmp_path / "m.png")
    assert rc == 2 and "ViT family" in err and len(err.splitlines()) == 1
    rc, _, err = run_cli(capsys, "attention", "vit_cifar", "--image", "5000",
                         "--out", tmp_path / "m.png")
    assert rc == 2 and "--image 5000 is out of range" in err
    rc, _, err = run_cli(capsys, "attention", "nothing_here", "--out", tmp_path / "m.png")
    assert rc == 2 and "neither a run folder" in err
    rc, _, err = run_cli(capsys, "attention", "vit_cifar", "--out", tmp_path / "m.bmp")
    assert rc == 2 and "unknown image format '.bmp'" in err


# --- hooks on every module that owns parameters ------------------------------------------------

@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_hooks_fire_on_every_module_that_owns_parameters(name):
    minivit.manual_seed(0)
    model = create_model(name, num_classes=10)
    owners = {n: m for n, m in model.named_modules()
              if next(iter(m.parameters(recurse=False)), None) is not None}
    fwd, bwd = set(), set()
    for n, m in owners.items():
        m.register_forward_hook(lambda mod, a, o, _n=n: fwd.add(_n))
        m.register_full_backward_hook(lambda mod, gi, go, _n=n: bwd.add(_n))
    x = minivit.randn(2, 3, 32, 32)
    loss = minivit.nn.functional.cross_entropy(model(x), minivit.tensor([1, 7]))
    loss.backward()
    assert sorted(set(owners) - fwd) == [], "forward hooks that did not fire"
    assert sorted(set(owners) - bwd) == [], "backward hooks that did not fire"


def test_hooks_and_capture_give_the_same_in_reference_mode():
    """The reference bodies (``minivit.reference_mode()``) fire the same hooks and give the same
    probabilities as the fast bodies."""
    minivit.manual_seed(0)
    model = create_model("vit_cifar", num_classes=10, depth=2)
    x = minivit.randn(2, 3, 32, 32)
    seen = {}
    for n, m in model.named_modules():
        m.register_forward_hook(lambda mod, a, o, _n=n: seen.setdefault(_n, []).append(o))
    with capture_attention(model) as fast:
        model(x)
    with minivit.reference_mode(), capture_attention(model) as ref:
        model(x)
    assert all(len(outs) == 2 for outs in seen.values())   # each fired once in each mode
    owners = [n for n, m in model.named_modules() if m._parameters]
    assert set(owners) <= set(seen)
    for n, (a, b) in seen.items():
        if isinstance(a, minivit.Tensor):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    assert list(fast) == list(ref)
    for n in fast:
        np.testing.assert_allclose(fast[n], ref[n], rtol=1e-4, atol=1e-6)
