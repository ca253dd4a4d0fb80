"""Every module that owns parameters runs when the model runs (issue 24: the models call their
modules; fused bodies run inside the layers, never around them).

Each parameter-owning module's ``forward`` is wrapped (on the instance, by this test alone) to
record that it ran; one training forward and backward must then have called all of them and
given every parameter a gradient. The paper-scale configurations run shrunk (one block per
stage, small images) where that keeps their module types.
"""
from __future__ import annotations

import numpy as np
import pytest

import minivit
import minivit.nn.functional as F
from minivit import nn
from minivit.models import create_model

CONFIGS = [
    ("vit_cifar", {}, 32),
    ("mlp_mixer_cifar", {}, 32),
    ("maxvit_cifar", {}, 32),
    ("botnet_cifar", {}, 32),
    ("ceit_cifar", {}, 32),
    ("ceit_cifar", dict(leff_with_bn=False, leff_variant="official"), 32),
    ("vit_tiny_patch16_224", dict(depth=2, img_size=64, global_pool="avg"), 64),
    ("mixer_b16_224", dict(depth=2, img_size=64, embed_dim=64), 64),
    ("maxvit_tiny_tf_224", dict(depths=(1, 1, 1, 1), dims=(32, 32, 64, 64), img_size=64,
                                window_size=2), 64),
    ("botnet26t_256", dict(depths=(1, 1, 2, 1), widths=(64, 64, 128, 128), img_size=64), 64),
    ("ceit_tiny_patch16_224", dict(depth=2, img_size=64), 64),
]


def record_calls(model) -> tuple[dict, set]:
    """Wrap the forward of every module with parameters of its own; returns
    ({name: module}, the set that fills with the names of those that ran)."""
    owners, called = {}, set()
    for name, m in model.named_modules():
        if next(iter(m.parameters(recurse=False)), None) is None:
            continue
        owners[name] = m
        inner = m.forward

        def forward(*args, _name=name, _inner=inner, **kwargs):
            called.add(_name)
            return _inner(*args, **kwargs)

        object.__setattr__(m, "forward", forward)
    return owners, called


@pytest.mark.parametrize("name,overrides,size", CONFIGS,
                         ids=[f"{c[0]}{'-' + '-'.join(c[1]) if c[1] else ''}" for c in CONFIGS])
def test_every_module_with_parameters_runs_and_gets_gradients(name, overrides, size):
    minivit.manual_seed(0)
    model = create_model(name, num_classes=10, **overrides)
    owners, called = record_calls(model)
    assert owners, "the wrapper found no modules"
    model.train()
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 3, size, size),
                                                                 dtype=np.float32))
    loss = F.cross_entropy(model(x), minivit.tensor(np.array([1, 7])))
    loss.backward()
    assert sorted(set(owners) - called) == [], "modules with parameters that never ran"
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_the_wrapper_sees_a_bypassed_module():
    """The check can fail: a model that reads a layer's weight without calling the layer."""
    class Bypass(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return F.linear(x, self.fc.weight, self.fc.bias)

    model = Bypass()
    owners, called = record_calls(model)
    model(minivit.randn(4, 3))
    assert set(owners) == {"fc"} and called == set()
