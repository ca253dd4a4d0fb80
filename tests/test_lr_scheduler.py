"""Learning-rate schedules against their formulas, and exact resume."""
import json
import math

import numpy as np
import pytest

import minivit
from minivit.optim import SGD, AdamW
from minivit.optim.lr_scheduler import LambdaLR, MultiStepLR, StepLR, WarmupCosineLR


def _opt(lrs=(0.1,), cls=SGD):
    groups = [{"params": [minivit.tensor(np.zeros(2, np.float32), requires_grad=True)], "lr": lr}
              for lr in lrs]
    return cls(groups, lr=lrs[0])


def _lrs(sched, n):
    """The learning rates in force at steps 0..n-1 (read from the optimizer, then step)."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        assert out[-1] == sched.get_last_lr()
        sched.step()
    return out


def _warmup_cosine(t, base, w, total, lo=0.0, s=0.0):
    if t < w:
        return base * (s + (1 - s) * t / w)
    progress = min(1.0, (t - w) / (total - w))
    return lo + (base - lo) * 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_cosine_values():
    sched = WarmupCosineLR(_opt((1e-3, 5e-4)), warmup_steps=10, total_steps=50)
    got = _lrs(sched, 60)
    for t in range(60):
        for k, base in enumerate((1e-3, 5e-4)):
            assert got[t][k] == pytest.approx(_warmup_cosine(t, base, 10, 50), rel=1e-12, abs=1e-18)
    # landmarks, written out: 0 at the start, linear ramp, peak at W, half way, 0 at T and after
    assert got[0] == [0.0, 0.0]
    assert got[5][0] == pytest.approx(0.5e-3)
    assert got[10][0] == pytest.approx(1e-3)
    assert got[30][0] == pytest.approx(0.5e-3)
    assert got[50][0] == pytest.approx(0.0, abs=1e-18) and got[59][0] == pytest.approx(0.0, abs=1e-18)
    assert all(isinstance(lr, float) for row in got for lr in row)
    assert all(got[t][0] <= got[t + 1][0] for t in range(10))
    assert all(got[t][0] >= got[t + 1][0] for t in range(10, 59))


def test_warmup_cosine_min_lr_start_factor_and_no_warmup():
    sched = WarmupCosineLR(_opt((0.1,)), warmup_steps=4, total_steps=20, min_lr=0.01,
                           warmup_start_factor=0.1)
    got = [row[0] for row in _lrs(sched, 25)]
    want = [_warmup_cosine(t, 0.1, 4, 20, lo=0.01, s=0.1) for t in range(25)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == pytest.approx(0.01) and got[20] == pytest.approx(0.01)
    sched = WarmupCosineLR(_opt((0.1,)), warmup_steps=0, total_steps=8)
    got = [row[0] for row in _lrs(sched, 9)]
    np.testing.assert_allclose(got, [0.05 * (1 + math.cos(math.pi * t / 8)) for t in range(9)],
                               rtol=1e-12, atol=1e-17)


def test_default_recipe_shape():
    """AdamW at 1e-3, warmup one epoch (391 steps at batch 128), cosine to 0 per step."""
    steps_per_epoch, epochs = 391, 3
    sched = WarmupCosineLR(_opt((1e-3,), cls=AdamW), warmup_steps=steps_per_epoch,
                           total_steps=epochs * steps_per_epoch)
    got = [row[0] for row in _lrs(sched, epochs * steps_per_epoch)]
    assert max(got) == pytest.approx(1e-3) and got.index(max(got)) == steps_per_epoch
    assert got[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (781 / 782))))


def test_step_multistep_and_lambda():
    got = [row[0] for row in _lrs(StepLR(_opt((1.0,)), step_size=3, gamma=0.5), 10)]
    assert got == [1.0 * 0.5 ** (t // 3) for t in range(10)]
    got = [row[0] for row in _lrs(MultiStepLR(_opt((1.0,)), milestones=[5, 2], gamma=0.1), 7)]
    np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-12)
    sched = LambdaLR(_opt((1.0, 2.0)), [lambda t: 0.9 ** t, lambda t: 1.0 / (t + 1)])
    got = _lrs(sched, 4)
    np.testing.assert_allclose(got, [[0.9 ** t, 2.0 / (t + 1)] for t in range(4)], rtol=1e-12)


def test_optimizer_uses_the_scheduled_lr():
    opt = _opt((1.0,))
    p = opt.param_groups[0]["params"][0]
    sched = StepLR(opt, step_size=1, gamma=0.5)
    for t in range(3):
        p.grad = minivit.tensor(np.ones(2, np.float32))
        before = p.numpy().copy()
        opt.step()
        np.testing.assert_allclose(before - p.numpy(), 0.5 ** t)
        sched.step()


@pytest.mark.parametrize("make", [
    lambda o: WarmupCosineLR(o, warmup_steps=5, total_steps=30, min_lr=1e-5),
    lambda o: StepLR(o, step_size=4, gamma=0.3),
    lambda o: MultiStepLR(o, milestones=[3, 9], gamma=0.2),
])
def test_resume_continues_with_identical_lrs(make):
    full = _lrs(make(_opt((1e-3, 3e-4), cls=AdamW)), 25)
    # run 11 steps, checkpoint optimizer + schedule through JSON, rebuild, load, continue
    opt = _opt((1e-3, 3e-4), cls=AdamW)
    sched = make(opt)
    first = _lrs(sched, 11)
    opt_sd = json.loads(json.dumps(_plain(opt.state_dict())))
    sched_sd = json.loads(json.dumps(sched.state_dict()))
    opt2 = _opt((1e-3, 3e-4), cls=AdamW)
    sched2 = make(opt2)  # a fresh schedule: writes the step-0 lr, then loads over it
    opt2.load_state_dict(opt_sd)
    sched2.load_state_dict(sched_sd)
    assert first + _lrs(sched2, 14) == full
    # the other order (optimizer loaded before the schedule is built) also resumes exactly
    opt3 = _opt((1e-3, 3e-4), cls=AdamW)
    opt3.load_state_dict(opt_sd)
    sched3 = make(opt3)
    sched3.load_state_dict(sched_sd)
    assert first + _lrs(sched3, 14) == full


def _plain(sd):
    return {"state": {}, "param_groups": [{k: list(v) if isinstance(v, tuple) else v
                                           for k, v in g.items()} for g in sd["param_groups"]]}


def test_scheduler_errors():
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosineLR(_opt(), warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="step_size"):
        StepLR(_opt(), step_size=0)
    with pytest.raises(ValueError, match="one per parameter group"):
        WarmupCosineLR(_opt((0.1, 0.2)), 1, 5, min_lr=[0.0])
    with pytest.raises(TypeError, match="Optimizer"):
        StepLR(object(), step_size=1)
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(_opt(), step_size=1, last_epoch=5)
    sd = StepLR(_opt((0.1, 0.2)), step_size=1).state_dict()
    with pytest.raises(ValueError, match="2 parameter groups"):
        StepLR(_opt((0.1,)), step_size=1).load_state_dict(sd)
