"""The GPU work of one training step, counted on the CuPy stand-in: kernel launches, copies
between host and device, synchronisations (issue 29).

A step is what ``minivit train`` runs per batch: forward, cross entropy with label smoothing,
zero_grad, backward, AdamW over the two weight-decay groups. At 8-15 µs of host time per CuPy
call, a step's launch count sets a floor under its time on any GPU, so each model has a budget.
The counts do not depend on the batch size for the attention models (measured: vit_cifar gives
the same count at batch 2, 8 and 128), so the step here runs at batch 2; the conv models'
NCHW layout copies add a few launches per 16 images at larger batches (botnet_cifar +28 at
batch 128 before issue 29's work). Counted after one warm-up step (state allocated).
"""
import numpy as np
import pytest

import minivit
import minivit.nn.functional as F
from minivit.autograd import backend
from minivit.models import create_model
from minivit.train import TrainConfig, build_optimizer

cupy_standin = pytest.importorskip("cupy_standin")

# issue 29's budgets, met by these models
BUDGET = {"vit_cifar": 350, "mlp_mixer_cifar": 350, "botnet_cifar": 900}
# not yet at issue 29's budgets (900 and 1200): the counts reached, kept from growing
REACHED = {"maxvit_cifar": 1074, "ceit_cifar": 1455}


_COUNTED: dict = {}


def step_counts(name: str, batch: int = 2) -> dict:
    if (name, batch) in _COUNTED:
        return _COUNTED[name, batch]
    minivit.manual_seed(0)
    model = create_model(name).to("cuda")
    opt = build_optimizer(model, TrainConfig(model=name))
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), "cuda")
    y = backend.to_device(np.arange(batch) % 10, "cuda")

    def step():
        loss = F.cross_entropy(model(minivit.Tensor(x)), minivit.Tensor(y), label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    with cupy_standin.counting() as c, cupy_standin.no_sync():   # a sync would raise here
        step()
    _COUNTED[name, batch] = c
    return c


@pytest.fixture
def standin(cuda_backend):
    if not getattr(cuda_backend, "STANDIN", False):
        pytest.skip("counting needs the stand-in")
    return cuda_backend


@pytest.mark.parametrize("name", sorted(BUDGET) + [pytest.param(n, marks=pytest.mark.slow)
                                                    for n in sorted(REACHED)])
def test_training_step_launch_budget(standin, name):
    c = step_counts(name)
    limit = BUDGET.get(name) or REACHED[name]
    assert c["syncs"] == 0 and c["d2h"] == 0
    assert c["launches"] <= limit, (name, c["launches"], c["by_op"].most_common(8))
    assert c["h2d"] <= 1, name


def test_counts_do_not_depend_on_the_batch(standin):
    assert step_counts("vit_cifar", 2)["launches"] == step_counts("vit_cifar", 3)["launches"]
