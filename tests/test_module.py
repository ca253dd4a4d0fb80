"""nn.Module: registration, names and order, state_dict round trips and load errors,
train/eval, devices and dtypes, containers, repr."""
import copy
from collections import OrderedDict

import numpy as np
import pytest

import minivit
from minivit import nn


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("index", np.arange(dim), persistent=False)

    def forward(self, x):
        return x + self.drop(self.fc(self.norm(x)))


class Net(nn.Module):
    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.scale = nn.Parameter(minivit.ones(dim))
        self.stem = nn.Linear(2, dim)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.bn = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, classes)
        self.not_a_param = minivit.zeros(2)  # a plain Tensor attribute: not registered

    def forward(self, x):
        x = self.blocks(self.stem(x) * self.scale)
        return self.head(self.bn(x))


NAMES = ["scale", "stem.weight", "stem.bias",
         "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.fc.weight", "blocks.0.fc.bias",
         "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.fc.weight", "blocks.1.fc.bias",
         "bn.weight", "bn.bias", "head.weight", "head.bias"]


def test_registration_and_named_parameters_order():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == NAMES
    assert len(list(net.parameters())) == len(NAMES)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert [n for n, _ in net.named_children()] == ["stem", "blocks", "bn", "head"]
    assert [n for n, _ in net.named_modules()][:6] == ["", "stem", "blocks", "blocks.0",
                                                       "blocks.0.norm", "blocks.0.fc"]
    assert [n for n, _ in net.named_buffers()] == [
        "blocks.0.index", "blocks.1.index", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked"]
    assert "not_a_param" not in dict(net.named_parameters())
    assert net.num_parameters() == sum(p.numel() for p in net.parameters())


def test_reassign_and_delete_and_shared_parameters():
    net = Net()
    net.head = nn.Identity()
    assert not any(n.startswith("head.") for n, _ in net.named_parameters())
    net.head = nn.Linear(4, 3)
    shared = nn.Linear(4, 4)
    net.blocks[0].fc = shared
    net.blocks[1].fc = shared
    names = [n for n, _ in net.named_parameters()]
    assert "blocks.0.fc.weight" in names and "blocks.1.fc.weight" not in names  # counted once
    assert "blocks.1.fc.weight" in net.state_dict()  # but saved under both names, as PyTorch
    del net.scale
    assert "scale" not in dict(net.named_parameters())
    with pytest.raises(TypeError, match="parameter 'bias'"):
        net.head.bias = minivit.zeros(3)
    with pytest.raises(AttributeError, match="'Net' object has no attribute 'nope'"):
        net.nope


def test_assign_before_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Bad()


def test_state_dict_contents():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == NAMES[:11] + ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                     "bn.num_batches_tracked", "head.weight", "head.bias"]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    nbt = sd["bn.num_batches_tracked"]
    assert nbt.shape == () and nbt.dtype == np.int64
    assert "blocks.0.index" not in sd  # non-persistent buffer
    sd["head.bias"][...] = 123  # a copy: editing it leaves the model alone
    assert not np.any(net.head.bias.numpy() == 123)


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    minivit.manual_seed(0)
    a = Net()
    x = minivit.randn(8, 2)
    a.train()
    a(x)  # move the BatchNorm running statistics
    a.eval()
    minivit.manual_seed(1)
    b = Net().eval()
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    params_before = [id(p) for p in b.parameters()]
    arrays_before = [id(p.data) for p in b.parameters()]
    np.savez(tmp_path / "ckpt.npz", **a.state_dict())
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        result = b.load_state_dict({k: f[k] for k in f.files})
    assert result.missing_keys == [] and result.unexpected_keys == []
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    assert b.bn.num_batches_tracked.numpy() == 1
    # copied into the existing arrays: optimizers holding the parameters still see them
    assert [id(p) for p in b.parameters()] == params_before
    assert [id(p.data) for p in b.parameters()] == arrays_before


def test_load_state_dict_casts_dtype_and_accepts_tensors():
    net = nn.Linear(3, 2)
    sd = {"weight": np.ones((2, 3), np.float64), "bias": minivit.tensor([1.0, 2.0])}
    net.load_state_dict(sd)
    assert net.weight.dtype == np.float32 and np.all(net.weight.numpy() == 1)
    np.testing.assert_array_equal(net.bias.numpy(), [1, 2])


def test_load_state_dict_lists_every_problem_in_one_error():
    net = Net()
    sd = net.state_dict()
    del sd["stem.bias"], sd["bn.running_var"]
    sd["head.weight"] = np.zeros((5, 4), np.float32)
    sd["extra.weight"] = np.zeros(3, np.float32)
    before = net.head.bias.numpy().copy()
    sd["head.bias"] = np.full(3, 7.0, np.float32)
    with pytest.raises(RuntimeError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    for part in ("missing keys (2): stem.bias, bn.running_var", "unexpected keys (1): extra.weight",
                 "head.weight: checkpoint (5, 4), model (3, 4)", "into Net"):
        assert part in msg, msg
    np.testing.assert_array_equal(net.head.bias.numpy(), before)  # nothing copied
    # strict=False tolerates missing/unexpected keys but never a wrong shape
    with pytest.raises(nn.StateDictError, match="wrong shapes"):
        net.load_state_dict(sd, strict=False)
    sd["head.weight"] = np.zeros((3, 4), np.float32)
    result = net.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["stem.bias", "bn.running_var"]
    assert result.unexpected_keys == ["extra.weight"]
    assert np.all(net.head.bias.numpy() == 7)


def test_train_eval_switch_dropout_and_batchnorm():
    net = Net()
    assert net.training and all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    x = minivit.randn(6, 2)
    np.testing.assert_array_equal(net(x).numpy(), net(x).numpy())  # deterministic
    rm = net.bn.running_mean.numpy().copy()
    net(x)
    np.testing.assert_array_equal(net.bn.running_mean.numpy(), rm)  # eval: stats untouched
    assert net.train() is net and net.blocks[1].drop.training
    assert not np.array_equal(net(x).numpy(), net(x).numpy())  # dropout active
    assert not np.array_equal(net.bn.running_mean.numpy(), rm)


def test_to_cpu_and_dtype_keep_parameter_identity():
    net = Net()
    params = list(net.parameters())
    net(minivit.randn(3, 2)).sum().backward()
    assert net.to("cpu") is net and list(net.parameters()) == params
    assert all(p.device == "cpu" for p in params)
    net.double()
    assert list(net.parameters()) == params
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in params)
    assert net.bn.running_mean.dtype == np.float64
    assert net.bn.num_batches_tracked.dtype == np.int64  # integer buffers keep their dtype
    assert net.blocks[0].index.dtype == np.int64
    net.float()
    assert all(p.dtype == np.float32 for p in params)
    with pytest.raises(ValueError, match="unknown device or dtype .tpu."):
        net.to("tpu")


def test_to_cuda(device):
    net = Net().to(device)
    x = minivit.randn(4, 2).to(device)
    out = net(x)
    assert out.device == device
    out.sum().backward()
    assert all(p.grad.device == device for p in net.parameters())
    sd = net.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    net2 = Net().to(device)
    net2.load_state_dict(sd)
    assert net2.stem.weight.device == device


def test_zero_grad_and_requires_grad():
    net = Net()
    net(minivit.randn(3, 2)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.stem.requires_grad_(False)
    assert net.num_parameters(trainable_only=True) == net.num_parameters() - 4 * 2 - 4


def test_apply_visits_children_first():
    net = Net()
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen[0] == "Linear" and seen[-1] == "Net"
    net.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert np.all(net.head.weight.numpy() == 0)


def test_containers():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and seq[-1] is seq[2]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert isinstance(seq[:2], nn.Sequential) and len(seq[:2]) == 2
    assert seq(minivit.randn(5, 2)).shape == (5, 1)
    with pytest.raises(IndexError, match="Sequential index 3 is out of range"):
        seq[3]
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.GELU())]))
    assert [n for n, _ in named.named_parameters()] == ["fc.weight", "fc.bias"]

    ml = nn.ModuleList([nn.Linear(2, 2)])
    ml.append(nn.Linear(2, 3))
    ml.extend([nn.Identity()])
    assert len(ml) == 3 and ml[1].out_features == 3 and list(ml)[2] is ml[2]
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    ml[2] = nn.Linear(3, 1)
    assert "2.weight" in ml.state_dict()
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    assert "a" in md and list(md.keys()) == ["a"] and "a.weight" in md.state_dict()


def test_parameter():
    p = nn.Parameter(minivit.zeros(2, 3))
    assert p.requires_grad and p.dtype == np.float32 and isinstance(p, minivit.Tensor)
    assert nn.Parameter([1, 2]).dtype == np.float32  # lists become float32
    assert nn.Parameter(np.zeros(2, np.float64)).dtype == np.float64  # arrays keep theirs
    assert repr(p).startswith("Parameter containing:\ntensor(")
    assert not nn.Parameter(minivit.zeros(1), requires_grad=False).requires_grad


def test_deepcopy_makes_an_independent_module():
    net = Net()
    twin = copy.deepcopy(net)
    twin.head.weight.data[...] = 0
    assert not np.all(net.head.weight.numpy() == 0)
    x = minivit.randn(2, 2)
    net.eval(), twin.eval()
    assert twin(x).shape == net(x).shape


def test_repr_is_nested_like_pytorch():
    text = repr(Net())
    expected = """Net(
  (stem): Linear(in_features=2, out_features=4, bias=True)
  (blocks): Sequential(
    (0): Block(
      (norm): LayerNorm((4,), eps=1e-05, elementwise_affine=True)
      (fc): Linear(in_features=4, out_features=4, bias=True)
      (drop): Dropout(p=0.5)
    )"""
    assert text.startswith(expected), text
    bn = "BatchNorm1d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert text.endswith(f"""  (bn): {bn}
  (head): Linear(in_features=4, out_features=3, bias=True)
)""")


def test_buffers_register_and_update():
    m = nn.Module()
    m.register_buffer("idx", np.arange(4))
    m.register_buffer("tmp", minivit.zeros(2), persistent=False)
    assert isinstance(m.idx, minivit.Tensor) and not m.idx.requires_grad
    m.idx = np.arange(5)  # assigning to a buffer name replaces the buffer
    assert m.idx.shape == (5,) and list(m.state_dict()) == ["idx"]
    with pytest.raises(KeyError, match="invalid buffer name"):
        m.register_buffer("a.b", np.zeros(1))
    with pytest.raises(NotImplementedError, match="Module has no forward"):
        m(1)
