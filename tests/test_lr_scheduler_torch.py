"""PyTorch's schedulers (CosineAnnealingLR, LinearLR, SequentialLR, OneCycleLR,
ReduceLROnPlateau) against the formulas of PyTorch's documentation, their state_dict round
trips, and their one-line errors."""
import json
import math

import numpy as np
import pytest

import minivit
from minivit.optim import SGD, AdamW
from minivit.optim.lr_scheduler import (CosineAnnealingLR, LambdaLR, LinearLR, OneCycleLR,
                                        ReduceLROnPlateau, SequentialLR)


def _opt(lrs=(0.1,), cls=SGD, **kw):
    groups = [{"params": [minivit.tensor(np.zeros(2, np.float32), requires_grad=True)], "lr": lr}
              for lr in lrs]
    return cls(groups, lr=lrs[0], **kw)


def _lrs(sched, n, group=0):
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[group]["lr"])
        assert out[-1] == sched.get_last_lr()[group]
        sched.step()
    return out


def test_cosine_annealing_closed_and_recursive_forms():
    T, lo, base = 10, 0.001, 0.1
    got = _lrs(CosineAnnealingLR(_opt((base,)), T_max=T, eta_min=lo), 2 * T + 1)
    for t, lr in enumerate(got):
        assert lr == pytest.approx(lo + (base - lo) * (1 + math.cos(math.pi * t / T)) / 2,
                                   rel=1e-12)
    # PyTorch's documented recursion eta_{t+1} = eta_min + (eta_t - eta_min)
    #   * (1 + cos(pi (t+1) / T)) / (1 + cos(pi t / T)) gives the same values up to T
    eta = base
    for t in range(T - 1):
        eta = lo + (eta - lo) * (1 + math.cos(math.pi * (t + 1) / T)) / (1 + math.cos(math.pi * t / T))
        assert got[t + 1] == pytest.approx(eta, rel=1e-9)
    assert got[T] == pytest.approx(lo) and got[2 * T] == pytest.approx(base)


def test_linear_lr_matches_the_documentation_example():
    # torch docs: lr 0.05, start_factor=0.5, total_iters=4 -> 0.025, 0.03125, 0.0375, 0.04375,
    # then 0.05
    got = _lrs(LinearLR(_opt((0.05,)), start_factor=0.5, total_iters=4), 7)
    np.testing.assert_allclose(got, [0.025, 0.03125, 0.0375, 0.04375, 0.05, 0.05, 0.05],
                               rtol=1e-12)
    got = _lrs(LinearLR(_opt((1.0,)), start_factor=1.0, end_factor=0.0, total_iters=4), 6)
    np.testing.assert_allclose(got, [1.0, 0.75, 0.5, 0.25, 0.0, 0.0], atol=1e-15)


def test_sequential_lr_warmup_then_cosine():
    opt = _opt((0.1,))
    warm = LinearLR(opt, start_factor=0.01, total_iters=5)
    cos = CosineAnnealingLR(opt, T_max=20)
    got = _lrs(SequentialLR(opt, [warm, cos], milestones=[5]), 30)
    for t, lr in enumerate(got):
        want = (0.1 * (0.01 + 0.99 * t / 5) if t < 5
                else 0.1 * (1 + math.cos(math.pi * (t - 5) / 20)) / 2)   # restarted at 0
        assert lr == pytest.approx(want, rel=1e-12)
    three = SequentialLR(opt2 := _opt((1.0,)), [LambdaLR(opt2, lambda t: 0.1),
                                                LambdaLR(opt2, lambda t: 0.9 ** t),
                                                LambdaLR(opt2, lambda t: 0.5)], milestones=[2, 4])
    np.testing.assert_allclose(_lrs(three, 6), [0.1, 0.1, 1.0, 0.9, 0.5, 0.5], rtol=1e-12)


def _one_cycle_ref(t, T, max_lr, pct=0.3, div=25.0, final_div=1e4, cos=True, three=False):
    """OneCycleLR's phases as PyTorch's documentation and source define them."""
    init = max_lr / div
    low = init / final_div
    if three:
        phases = [(pct * T - 1, init, max_lr), (2 * pct * T - 2, max_lr, init), (T - 1, init, low)]
    else:
        phases = [(pct * T - 1, init, max_lr), (T - 1, max_lr, low)]
    start = 0.0
    for i, (end, a, b) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            p = (t - start) / (end - start)
            return b + (a - b) / 2 * (math.cos(math.pi * p) + 1) if cos else (b - a) * p + a
        start = end


@pytest.mark.parametrize("cos, three", [(True, False), (False, False), (True, True)])
def test_one_cycle_lr_phases_and_momentum(cos, three):
    T = 50
    opt = _opt((0.1,), momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.4, total_steps=T, anneal_strategy="cos" if cos else "linear",
                       three_phase=three)
    moms = []
    got = []
    for _ in range(T):
        got.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        sched.step()
    for t, lr in enumerate(got):
        assert lr == pytest.approx(_one_cycle_ref(t, T, 0.4, cos=cos, three=three), rel=1e-12)
    assert got[0] == pytest.approx(0.4 / 25) and max(got) == pytest.approx(0.4, rel=1e-3)
    assert got[-1] == pytest.approx(0.4 / 25 / 1e4, rel=1e-9)
    assert moms[0] == pytest.approx(0.95) and min(moms) == pytest.approx(0.85, rel=1e-3)
    with pytest.raises(ValueError, match=r"OneCycleLR: tried to step 51 times, more than "
                                         r"total_steps=50"):
        sched.step()


def test_one_cycle_lr_cycles_adam_beta1_and_takes_epochs():
    opt = _opt((0.1,), cls=AdamW)
    sched = OneCycleLR(opt, max_lr=[0.01], epochs=2, steps_per_epoch=10)
    assert sched.total_steps == 20 and opt.param_groups[0]["betas"] == (0.95, 0.999)
    for _ in range(5):
        sched.step()
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.85)   # the lr peak (step 5)


def test_reduce_lr_on_plateau():
    opt = _opt((1.0,))
    sched = ReduceLROnPlateau(opt, factor=0.5, patience=2)
    lrs = []
    for m in [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4]:
        sched.step(m)
        lrs.append(sched.get_last_lr()[0])
    # the 3rd evaluation in a row without improvement (more than patience=2) halves the lr
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125]
    # mode max, absolute threshold, cooldown and a floor
    opt = _opt((1.0,))
    sched = ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=0, threshold=0.05,
                              threshold_mode="abs", cooldown=1, min_lr=0.005)
    out = []
    for acc in [0.50, 0.54, 0.56, 0.57, 0.58, 0.59, 0.60]:
        sched.step(acc)
        out.append(opt.param_groups[0]["lr"])
    # 0.54 is not 0.05 above 0.50 -> reduce (patience 0); 0.56 improves; 0.57 does not ->
    # reduce; 0.58 falls in the cooldown; 0.59 -> reduce, but not below min_lr
    np.testing.assert_allclose(out, [1.0, 0.1, 0.1, 0.01, 0.01, 0.005, 0.005])


def test_state_dicts_resume_exactly_through_json():
    def make(opt):
        w = LinearLR(opt, start_factor=0.1, total_iters=3)
        return SequentialLR(opt, [w, CosineAnnealingLR(opt, T_max=10, eta_min=1e-4)], [3])

    for build in (make, lambda o: OneCycleLR(o, max_lr=0.3, total_steps=20),
                  lambda o: CosineAnnealingLR(o, T_max=7)):
        a_opt = _opt((0.1,), momentum=0.9)
        a = build(a_opt)
        ref = _lrs(a, 15)
        b_opt = _opt((0.1,), momentum=0.9)
        b = build(b_opt)
        _lrs(b, 6)
        state = json.loads(json.dumps(b.state_dict()))
        opt_state = b_opt.state_dict()
        c_opt = _opt((0.1,), momentum=0.9)
        c_opt.load_state_dict(opt_state)
        c = build(c_opt)
        c.load_state_dict(state)
        assert _lrs(c, 9) == pytest.approx(ref[6:], rel=1e-12)

    opt = _opt((1.0,))
    p = ReduceLROnPlateau(opt, patience=0)
    p.step(1.0)
    p.step(2.0)
    state = json.loads(json.dumps(p.state_dict()))
    assert state["best"] == 1.0 and "optimizer" not in state
    q = ReduceLROnPlateau(_opt((0.1,)), patience=0)
    q.load_state_dict(state)
    assert q.best == 1.0 and q.last_epoch == 2


def test_scheduler_errors_are_one_line():
    opt = _opt()
    cases = [
        (lambda: CosineAnnealingLR(opt, T_max=0), "CosineAnnealingLR: T_max must be a positive"),
        (lambda: LinearLR(opt, start_factor=0.0), "LinearLR: need 0 < start_factor <= 1"),
        (lambda: SequentialLR(opt, [LinearLR(opt)], milestones=[3]),
         r"expected len\(milestones\) == len\(schedulers\) - 1, got 1 schedulers and 1"),
        (lambda: SequentialLR(opt, [LinearLR(opt), LinearLR(_opt())], milestones=[3]),
         r"schedulers\[1\] belongs to another optimizer"),
        (lambda: OneCycleLR(opt, max_lr=0.1), "OneCycleLR: give total_steps, or positive"),
        (lambda: OneCycleLR(opt, max_lr=0.1, total_steps=10, anneal_strategy="exp"),
         "anneal_strategy must be 'cos' or 'linear', got 'exp'"),
        (lambda: ReduceLROnPlateau(opt, factor=1.5), "factor must be below 1, got 1.5"),
        (lambda: ReduceLROnPlateau(opt, mode="up"), "mode must be 'min' or 'max'"),
    ]
    for make, pattern in cases:
        with pytest.raises((ValueError, TypeError), match=pattern) as err:
            make()
        assert "\n" not in str(err.value)
