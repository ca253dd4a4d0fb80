"""cross_entropy (fused log-softmax + NLL): against a log-sum-exp written out, for class
indices and soft targets, label smoothing as PyTorch defines it, reductions and errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit import nn
from harness import arrays, check_grad


def lse(z):
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def ce_ref(z, target, eps=0.0, reduction="mean"):
    """PyTorch's definition: q = (1 - eps) q + eps / C, loss_i = -sum_c q_ic log p_ic."""
    B, C = z.shape
    logp = z - lse(z)[:, None]
    if target.dtype.kind == "i":
        q = np.eye(C)[target]
    else:
        q = target
    q = (1 - eps) * q + eps / C
    loss = -(q * logp).sum(axis=1)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


@settings(max_examples=20)
@given(st.data(), st.integers(1, 4), st.integers(1, 5), st.sampled_from([0.0, 0.1, 0.3]),
       st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_class_indices(data, B, C, eps, reduction):
    z = data.draw(arrays((B, C), -5, 5))
    t = np.array(data.draw(st.lists(st.integers(0, C - 1), min_size=B, max_size=B)), np.int64)
    got = F.cross_entropy(minivit.tensor(z), minivit.tensor(t), label_smoothing=eps,
                          reduction=reduction)
    np.testing.assert_allclose(got.numpy(), ce_ref(z, t, eps, reduction), rtol=1e-10, atol=1e-12)
    check_grad(lambda z: F.cross_entropy(z, t, label_smoothing=eps, reduction=reduction), z)


@settings(max_examples=20)
@given(st.data(), st.integers(1, 4), st.integers(2, 5), st.sampled_from([0.0, 0.2]))
def test_cross_entropy_soft_targets(data, B, C, eps):
    z = data.draw(arrays((B, C), -5, 5))
    w = data.draw(arrays((B, C), 0.01, 1.0))
    q = w / w.sum(axis=1, keepdims=True)  # mixup/cutmix targets: rows sum to 1
    got = F.cross_entropy(minivit.tensor(z), q, label_smoothing=eps)
    np.testing.assert_allclose(got.numpy(), ce_ref(z, q, eps), rtol=1e-10, atol=1e-12)
    check_grad(lambda z: F.cross_entropy(z, q, label_smoothing=eps), z)
    check_grad(lambda z: F.cross_entropy(z, q * 0.7, reduction="none"), z)  # rows not summing to 1


def test_cross_entropy_gradient_is_softmax_minus_target():
    z = minivit.randn(3, 4, requires_grad=True)
    F.cross_entropy(z, [0, 3, 1]).backward()
    p = np.exp(z.numpy()) / np.exp(z.numpy()).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(z.grad.numpy(), (p - np.eye(4)[[0, 3, 1]]) / 3, rtol=1e-5, atol=1e-7)
    assert z.grad.dtype == np.float32


def test_cross_entropy_stable_for_huge_logits():
    z = minivit.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss = F.cross_entropy(z, [2, 1])
    assert np.isfinite(loss.item()) and abs(loss.item() - 1e4) < 1
    loss.backward()
    assert np.all(np.isfinite(z.grad.numpy()))


def test_cross_entropy_ignore_index():
    z = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, -100, 2, 1])
    got = F.cross_entropy(minivit.tensor(z), t).item()
    keep = t != -100
    np.testing.assert_allclose(got, ce_ref(z[keep], t[keep]), rtol=1e-12)
    check_grad(lambda z: F.cross_entropy(z, t), z)


def test_cross_entropy_errors():
    z = minivit.randn(3, 5)
    with pytest.raises(ValueError, match=r"target class 7 is out of range for 5 classes"):
        F.cross_entropy(z, [0, 7, 1])
    with pytest.raises(ValueError, match=r"target class -2 is out of range for 5 classes"):
        F.cross_entropy(z, [0, -2, 1])
    with pytest.raises(ValueError, match=r"class-index targets must have shape \(3,\).*got \(4,\)"):
        F.cross_entropy(z, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"probability targets must have the logits' shape "
                                         r"\(3, 5\), got \(3, 4\)"):
        F.cross_entropy(z, np.full((3, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match=r"logits of shape \(B, C\)"):
        F.cross_entropy(minivit.randn(5), [1])
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(z, [0, 1, 2], reduction="avg")


def test_cross_entropy_loss_layer_and_dtype():
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    z = minivit.randn(4, 6)
    t = np.array([0, 1, 2, 5])
    loss = crit(z, t)
    assert loss.dtype == np.float32 and loss.shape == ()
    np.testing.assert_allclose(loss.item(), ce_ref(z.numpy().astype(np.float64), t, 0.1), rtol=1e-5)


def test_nll_and_mse():
    z = minivit.randn(3, 4, requires_grad=True)
    t = np.array([1, 0, 3])
    np.testing.assert_allclose(F.nll_loss(F.log_softmax(z), t).item(), F.cross_entropy(z, t).item(),
                               rtol=1e-6)
    a, b = minivit.tensor([1.0, 2.0]), minivit.tensor([0.0, 4.0])
    assert F.mse_loss(a, b).item() == pytest.approx(2.5)
