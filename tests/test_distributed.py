"""Data parallelism (minivit.distributed): in one process (the gradient hook, sharding, the
bucket order, SyncBatchNorm's op against plain BatchNorm), and for real over 2 MPI ranks on
this machine (``mpiexec -n 2``, loopback), skipped cleanly without mpi4py or mpiexec.

Measured tolerances (2026-12-06, this 2-core VM): float64 gradients of 2 ranks (17 + 16
images) against one process (33): 4e-15 (ViT) and 1e-14 (BoTNet with SyncBatchNorm), relative
to each tensor's largest entry. float32 ``fit``, 5 AdamW steps, 2 ranks x 16 against
1 x 32: ViT weights within 1.9e-6 (lr 1e-3); BoTNet with --sync-bn within 2.0e-4 = 2 lr (one
stem weight whose float32 gradient is rounding noise, so Adam's step flips sign) and its
BatchNorm running statistics within 6e-5, against 5e-2 without --sync-bn.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minivit
from minivit.autograd.gradcheck import gradcheck
from minivit.checkpoint import load_checkpoint
from minivit.data import CIFARLoader
from minivit.distributed import (DistributedDataParallel, ShardedLoader, World, sync_batchnorm)
from minivit.nn import functional as F
from minivit.train import TrainConfig, fit

HERE = Path(__file__).parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason='needs mpi4py and mpiexec: pip install -e ".[mpi]"')
TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}
TINY_BOTNET = {"stem_chs": 8, "widths": [16, 32, 32], "depths": [1, 1, 1], "num_heads": 2}


# --- Tensor.register_post_accumulate_grad_hook --------------------------------------------

def test_post_accumulate_hook_sees_each_accumulated_gradient():
    w = minivit.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    handle = w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.tolist()))
    (w * 3 + w * w).sum().backward()   # three uses: accumulated three times, hooked each
    assert len(seen) == 3 and seen[-1] == w.grad.tolist() == [5.0, 7.0]
    assert seen[0] in ([3.0, 3.0], [1.0, 2.0])   # after the first gradient: 3, or w
    handle.remove()
    handle.remove()   # harmless twice
    (w * 1).sum().backward()
    assert len(seen) == 3


def test_post_accumulate_hook_runs_while_backward_is_still_going():
    a = minivit.tensor([1.0], requires_grad=True)   # used last in forward: its gradient first
    b = minivit.tensor([2.0], requires_grad=True)
    order = []
    a.register_post_accumulate_grad_hook(lambda p: order.append(("a", b.grad is None)))
    b.register_post_accumulate_grad_hook(lambda p: order.append(("b", a.grad is None)))
    ((b.exp() * 2).exp() * a).sum().backward()
    assert order == [("a", True), ("b", False)]


def test_post_accumulate_hook_refuses_a_non_leaf_and_a_non_callable():
    w = minivit.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="only a leaf"):
        (w * 2).register_post_accumulate_grad_hook(print)
    with pytest.raises(TypeError, match="callable"):
        w.register_post_accumulate_grad_hook(3)


# --- sharding -------------------------------------------------------------------------------

@pytest.mark.parametrize("n,batch,ranks", [(100, 32, 2), (97, 32, 3), (65, 32, 2), (64, 32, 2),
                                           (33, 32, 2), (10, 4, 4)])
def test_shards_use_every_image_once_per_epoch(n, batch, ranks):
    x = np.zeros((n, 2, 2, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    loaders = [ShardedLoader(CIFARLoader(x, np.arange(n), batch_size=batch, seed=5, mean=None,
                                         std=None, augment=None, prefetch=False), r, ranks)
               for r in range(ranks)]
    seen = []
    for epoch in (0, 1):
        ids = []
        for r, loader in enumerate(loaders):
            loader.set_epoch(epoch)
            for step, (xb, yb) in enumerate(loader):
                assert len(yb) >= 1
                assert abs(len(yb) - loader.global_size(step) / ranks) < 1   # even parts
                ids.extend(yb.tolist())
        assert sorted(ids) == list(range(n))
        seen.append(ids)
    assert seen[0] != seen[1]                           # a new order each epoch
    steps = len(loaders[0])
    assert sum(loaders[0].global_size(i) for i in range(steps)) == n
    assert steps == -(-n // batch) - (0 < n % batch < ranks and n > batch)


def test_shards_draw_their_own_augmentation_stream():
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    base = CIFARLoader(np.concatenate([x, x]), np.zeros(16, int), batch_size=16, shuffle=False,
                       augment="standard", prefetch=False)
    a, b = (ShardedLoader(base, r, 2).make_batch(0, 0)[0] for r in (0, 1))
    assert not np.array_equal(a, b)   # the same 8 images, flipped and cropped differently
    again = ShardedLoader(base, 1, 2).make_batch(0, 0)[0]
    assert np.array_equal(b, again)   # and reproducibly


def test_sharded_loader_refuses_a_bad_rank():
    base = CIFARLoader(np.zeros((4, 2, 2, 3), np.uint8), np.zeros(4, int), batch_size=2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        ShardedLoader(base, 2, 2)


# --- buckets in a world of one ----------------------------------------------------------------

class RecordingTransport:
    """Sums nothing (one rank); records when each bucket started."""
    name = "record"

    def __init__(self):
        self.started, self.in_backward = [], True

    def alloc(self, n, dtype):
        return np.zeros(n, dtype)

    def start(self, buf):
        self.started.append((id(buf), self.in_backward))
        return buf

    def poll(self, handles):
        pass

    def finish(self, handle):
        pass


def test_buckets_start_in_reverse_order_during_backward():
    minivit.manual_seed(0)
    model = minivit.models.create_model("vit_cifar", num_classes=10, **TINY_VIT)
    transport = RecordingTransport()
    ddp = DistributedDataParallel(model, World(None), transport, bucket_mb=0.02)
    params = list(model.parameters())
    assert [p for b in ddp.buckets for p in b.params] == params[::-1]
    assert all(b.size * 4 <= 0.02 * 2 ** 20 or len(b.params) == 1 for b in ddp.buckets)
    assert len(ddp.buckets) > 3
    x = minivit.tensor(np.random.default_rng(0).standard_normal((4, 3, 32, 32)), dtype="float32")
    for step in range(2):
        model.zero_grad() if hasattr(model, "zero_grad") else None
        for p in params:
            p.grad = None
        expected = None
        loss = model(x).sum()
        loss.backward()
        expected = {id(p): p.grad.numpy().copy() for p in params}
        transport.in_backward = False
        ddp.finish_gradients()
        transport.in_backward = True
        for p in params:
            assert np.array_equal(p.grad.numpy(), expected[id(p)])   # one rank: unchanged
        order = [ddp.buckets.index(next(b for b in ddp.buckets if id(b.buffer) == i))
                 for i, _ in transport.started]
        assert order == list(range(len(ddp.buckets)))
        during = [d for _, d in transport.started]
        # the first step learns how many gradients each parameter gets; from then on every
        # bucket starts inside backward, the moment its last gradient has arrived
        assert not any(during) if step == 0 else all(during)
        transport.started.clear()


# --- SyncBatchNorm: the op ------------------------------------------------------------------

class ThreadRanks:
    """``sum_across`` functions for n threads standing in for n ranks."""

    def __init__(self, n: int):
        self.barrier, self.slots = threading.Barrier(n, timeout=20), [None] * n

    def sum_across(self, rank: int):
        def fn(a):
            self.slots[rank] = a.copy()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()
            a[...] = total
            return a
        return fn


@settings(max_examples=15, deadline=None)
@given(split=st.sampled_from([(3, 3), (4, 2), (1, 5)]), shape=st.sampled_from([(3,), (3, 4),
       (2, 3, 3)]), act=st.sampled_from([None, "relu", "gelu"]), residual=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_sync_batch_norm_over_two_ranks_is_batch_norm_of_the_whole_batch(split, shape, act,
                                                                          residual, seed):
    """Two threads with their parts of a batch, statistics summed across them, against one
    BatchNorm of the whole batch: output, input gradient, running statistics (float64); the
    weight and bias gradients of the parts add up to the whole's."""
    if residual and act == "gelu":
        act = "relu"
    rng = np.random.default_rng(seed)
    n, c = sum(split), shape[0]
    x = rng.standard_normal((n,) + shape)
    r = rng.standard_normal(x.shape)
    w, b, g = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(x.shape)

    def run(lo, hi, sum_across=None):
        X = minivit.tensor(x[lo:hi], requires_grad=True)
        W, B = minivit.tensor(w, requires_grad=True), minivit.tensor(b, requires_grad=True)
        R = minivit.tensor(r[lo:hi], requires_grad=True) if residual else None
        rm, rv = minivit.tensor(np.zeros(c)), minivit.tensor(np.ones(c))
        y = F.batch_norm(X, rm, rv, W, B, training=True, act=act, residual=R,
                         sum_across=sum_across)
        y.backward(g[lo:hi])
        return [y.numpy(), X.grad.numpy(), W.grad.numpy(), B.grad.numpy(), rm.numpy(),
                rv.numpy()] + ([R.grad.numpy()] if residual else [])

    whole = run(0, n)
    ranks, parts = ThreadRanks(2), [None, None]
    bounds = [(0, split[0]), (split[0], n)]
    threads = [threading.Thread(target=lambda k=k: parts.__setitem__(
        k, run(*bounds[k], ranks.sum_across(k)))) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    joined = [np.concatenate([parts[0][i], parts[1][i]]) for i in (0, 1)]
    np.testing.assert_allclose(joined[0], whole[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(joined[1], whole[1], rtol=1e-9, atol=1e-11)
    for i in (2, 3):
        np.testing.assert_allclose(parts[0][i] + parts[1][i], whole[i], rtol=1e-9, atol=1e-11)
    for i in (4, 5):
        np.testing.assert_allclose(parts[0][i], whole[i], rtol=1e-12)
        np.testing.assert_allclose(parts[1][i], whole[i], rtol=1e-12)
    if residual:
        np.testing.assert_allclose(np.concatenate([parts[0][6], parts[1][6]]), whole[6],
                                   rtol=1e-9, atol=1e-11)


@settings(max_examples=10, deadline=None)
@given(shape=st.sampled_from([(4, 3), (3, 2, 5), (2, 3, 2, 2)]), act=st.sampled_from(
    [None, "relu", "gelu"]), seed=st.integers(0, 2 ** 16))
def test_sync_batch_norm_gradient_matches_finite_differences(shape, act, seed):
    """The op with a ``sum_across`` (one rank: the identity, so every sum goes through it)."""
    rng = np.random.default_rng(seed)
    x = minivit.tensor(rng.standard_normal(shape) + 0.3, requires_grad=True)
    w = minivit.tensor(rng.standard_normal(shape[1]), requires_grad=True)
    b = minivit.tensor(rng.standard_normal(shape[1]), requires_grad=True)
    calls = []

    def identity(a):
        calls.append(a.size)
        return a

    gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, act=act,
                                           sum_across=identity), x, w, b)
    assert calls   # the statistics did go through sum_across


def test_sync_batchnorm_sets_every_batchnorm():
    minivit.manual_seed(0)
    model = minivit.models.create_model("botnet_cifar", num_classes=10, **TINY_BOTNET)
    n = sync_batchnorm(model, lambda a: a)
    from minivit.nn.layers import _BatchNorm
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert n == len(bns) > 5 and all(m.sum_across is not None for m in bns)


# --- over two MPI ranks ---------------------------------------------------------------------

def mpirun(n, *args, env=None, timeout=120):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MINIVIT_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               **(env or {}))
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def small_config(out, **changes) -> TrainConfig:
    cfg = TrainConfig(model="vit_cifar", model_args=dict(TINY_VIT), epochs=1, batch_size=32,
                      eval_batch_size=32, train_limit=160, test_limit=40, augment="none",
                      warmup_epochs=0.0, progress=False, out=str(out))
    return dataclasses.replace(cfg, **changes)


def run_ranks(tmp_path, cfg, *extra, n=2, env=None, timeout=120):
    path = tmp_path / f"{Path(cfg.out).name}.json"
    path.write_text(json.dumps(cfg.to_json()))
    return mpirun(n, HERE / "dist_worker.py", path, *extra, env=env, timeout=timeout)


def weights(run) -> dict:
    return load_checkpoint(Path(run) / "last.npz")["model"]


def max_difference(a: dict, b: dict, keys) -> float:
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in keys)


@needs_mpi
@pytest.mark.parametrize("transport", ["mpi", "nccl-fake"])
def test_two_ranks_average_exactly_the_gradient_of_the_whole_batch(transport):
    """float64: ViT and BoTNet with SyncBatchNorm, 17 + 16 images against 33 in one process;
    every bucket of the second step starts inside backward. ``nccl-fake``: through
    NCCLTransport and a stand-in of cupy.cuda.nccl that sums over MPI."""
    r = mpirun(2, HERE / "dist_grads.py", transport)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert set(lines) == ({"vit", "botnet"} if transport == "mpi" else {"vit"}), r.stdout
    for case, rest in lines.items():
        diff, started = rest.split()
        assert float(diff) < 1e-12, (case, diff)
        done, total = map(int, started.split("/"))
        assert done == total > 1, (case, started)


@needs_mpi
def test_two_ranks_train_as_one_and_rank_0_alone_writes(tmp_path):
    """vit_cifar (small), 5 AdamW steps: 2 ranks x 16 images against 1 x 32, the same images;
    and the run folder's files are written by rank 0 only."""
    one = small_config(tmp_path / "one")
    fit(one, log=lambda *a: None)
    two = small_config(tmp_path / "two")
    r = run_ranks(tmp_path, two)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("data-parallel over 2 ranks (MPI)") == 1
    assert r.stdout.count("epoch   1/1") == 1   # one log
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    floats = [k for k in a if a[k].dtype.kind == "f"]
    assert max_difference(a, b, floats) < 1e-5   # measured 1.9e-6; the update is 3e-3
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())
    writes = [json.loads((tmp_path / f"two.writes-rank{k}.json").read_text()) for k in (0, 1)]
    assert writes[1] == [] and len(writes[0]) >= 3, writes
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert m1[0]["test_acc"] == pytest.approx(m2[0]["test_acc"], abs=1 / 40 + 1e-9)
    assert m1[0]["train_loss"] == pytest.approx(m2[0]["train_loss"], rel=1e-4)


@needs_mpi
@pytest.mark.slow
def test_two_ranks_with_sync_bn_train_as_one(tmp_path):
    """BoTNet (small), 5 steps: with --sync-bn 2 ranks x 16 match 1 x 32; without, the
    BatchNorm statistics are each rank's own and differ."""
    keys = None
    base = dict(model="botnet_cifar", model_args=dict(TINY_BOTNET), lr=1e-4)
    one = small_config(tmp_path / "one", **base)
    fit(one, log=lambda *a: None)
    a = weights(tmp_path / "one")
    params = [k for k in a if a[k].dtype.kind == "f" and "running" not in k]
    stats = [k for k in a if "running" in k]
    results = {}
    for sync in (True, False):
        cfg = small_config(tmp_path / f"sync{sync}", sync_bn=sync, **base)
        r = run_ranks(tmp_path, cfg)
        assert r.returncode == 0, r.stderr[-3000:]
        b = weights(cfg.out)
        results[sync] = (max_difference(a, b, params), max_difference(a, b, stats))
    assert results[True][0] <= 4 * 1e-4 and results[True][1] < 2e-4, results
    assert results[False][1] > 20 * results[True][1], results
    del keys


@needs_mpi
@pytest.mark.slow
def test_two_rank_resume_is_exact(tmp_path):
    """Augmentation, drop path (each rank's own streams) and 2 epochs: stopped after the first
    and resumed, the weights end bit for bit where the uninterrupted 2-rank run's do."""
    changes = dict(epochs=2, augment="standard", model_args={**TINY_VIT, "drop_path_rate": 0.1},
                   train_limit=100)   # 100 = 3 x 32 + 4: an uneven last batch
    whole = small_config(tmp_path / "whole", **changes)
    r = run_ranks(tmp_path, whole)
    assert r.returncode == 0, r.stderr[-3000:]
    part = small_config(tmp_path / "part", **changes)
    r = run_ranks(tmp_path, part, "--stop-after", 1)
    assert r.returncode == 0 and "stopped after epoch 1" in r.stdout, r.stderr[-3000:]
    r = run_ranks(tmp_path, part, "--resume", tmp_path / "part")
    assert r.returncode == 0 and "resumed" in r.stdout, r.stderr[-3000:]
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "part")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert (tmp_path / "whole" / "metrics.jsonl").read_text().count("\n") == 2


@needs_mpi
@pytest.mark.parametrize("mode", ["kill", pytest.param("raise", marks=pytest.mark.slow),
                                  pytest.param("hang", marks=pytest.mark.slow)])
def test_a_failed_rank_ends_the_run_with_a_message(tmp_path, mode):
    """Rank 1 is killed (SIGKILL), raises, or hangs (SIGSTOP) at its 3rd step: the job ends
    non-zero with a message well within 60 s (the hang through rank 0's 5 s deadline)."""
    cfg = small_config(tmp_path / mode, epochs=3)
    t0 = time.monotonic()
    deadline = "5" if mode == "hang" else "40"   # a slow start on a busy machine is no hang
    r = run_ranks(tmp_path, cfg, "--fail", f"{mode}:3", env={"MINIVIT_DIST_TIMEOUT": deadline},
                  timeout=60)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode != 0 and took < 60, (r.returncode, took)
    expected = {"kill": "BAD TERMINATION", "raise": "rank 1 failed on purpose",
                "hang": "waited 5 s for the other ranks in the gradient allreduce"}[mode]
    assert expected in out, out[-3000:]
    assert not (tmp_path / mode / "last.npz").exists()   # no epoch finished on every rank


@needs_mpi
def test_cli_error_is_reported_once_and_ends_every_rank(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "run" / "last.npz").write_bytes(b"")   # a run with a checkpoint: not reusable
    r = mpirun(2, "-m", "minivit", "train", "--out", tmp_path / "run", "--train-limit", "64",
               "--no-progress", timeout=60)
    assert r.returncode != 0
    assert r.stderr.count("already holds a run") == 1, r.stderr
    r = mpirun(2, "-m", "minivit", "train", "--out", tmp_path / "new", "--batch-size", "1",
               "--train-limit", "64", "--no-progress", timeout=60)
    assert r.returncode != 0
    assert r.stderr.count("--batch-size 1 is the global batch and must be at least the number "
                          "of ranks (2)") == 1, r.stderr


ABORTING_RANK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("world", sys.argv[1])  # world.py alone: fast
world = importlib.util.module_from_spec(spec)
spec.loader.exec_module(world)
world.ABORT_GRACE_S = float(sys.argv[2])
w = world.get_world()
if w.rank == 0:
    print("rank 0 reports its error", file=sys.stderr)
    w.abort(2)
import time; time.sleep(30)
"""


def test_abort_flushes_and_gives_the_launcher_time_before_mpi_abort(monkeypatch):
    """MPI_Abort right after a print can end the launcher before it has read the rank's pipe,
    and the print is lost (the CLI's one-line error, in CI): World.abort flushes, then waits
    ABORT_GRACE_S, then aborts."""
    from minivit.distributed import world

    events = []

    class Comm:
        def Abort(self, code):
            events.append(("abort", code, time.monotonic()))

    class Stream:
        def __init__(self, name):
            self.name = name

        def flush(self):
            events.append(("flush", self.name, time.monotonic()))

    monkeypatch.setattr(sys, "stdout", Stream("stdout"))
    monkeypatch.setattr(sys, "stderr", Stream("stderr"))
    w = World(None)
    w.comm = Comm()   # a world of two as far as abort is concerned
    w.abort(3)
    assert [e[:2] for e in events] == [("flush", "stdout"), ("flush", "stderr"), ("abort", 3)]
    assert events[2][2] - events[1][2] >= world.ABORT_GRACE_S >= 0.01
    assert world.ABORT_GRACE_S < 1.0   # under report_error's wait: one report, not two


@needs_mpi
@pytest.mark.slow
def test_the_last_words_before_an_abort_reach_the_launcher(tmp_path):
    """The same through mpiexec, 100 times: rank 0 prints and aborts, its line must arrive every
    time (an abort without the wait lost it in 3 of 200 such runs, 39 of 400 under load)."""
    from minivit.distributed import world

    script = tmp_path / "abort.py"
    script.write_text(ABORTING_RANK)
    lost = 0
    for _ in range(100):
        r = mpirun(2, script, world.__file__, world.ABORT_GRACE_S, timeout=60)
        assert r.returncode == 2, (r.returncode, r.stderr)
        lost += "rank 0 reports its error" not in r.stderr
    assert lost == 0, f"{lost} of 100 aborts lost the rank's last line"


def test_without_a_launcher_there_is_one_rank(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    from minivit.distributed import world
    assert world.launched_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert world.launched_size() == 4
    monkeypatch.setenv("MINIVIT_DIST_TIMEOUT", "soon")
    with pytest.raises(world.DistributedError, match="MINIVIT_DIST_TIMEOUT must be"):
        world.timeout_s()


def test_ranks_on_one_machine_share_its_cores(monkeypatch):
    from minivit import runtime
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "MINIVIT_NUM_THREADS", "MPI_LOCALNRANKS",
                        "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")}
    monkeypatch.setattr(os, "environ", dict(env, MPI_LOCALNRANKS="2"))
    runtime.set_blas_env(numpy_loaded=False)
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert os.environ["OPENBLAS_NUM_THREADS"] == os.environ["MINIVIT_NUM_THREADS"] == share
    monkeypatch.setattr(os, "environ", dict(env, OPENBLAS_NUM_THREADS="7"))
    runtime.set_blas_env(numpy_loaded=False)   # one rank per machine: nothing changes
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7" and "MINIVIT_NUM_THREADS" not in os.environ


@needs_mpi
def test_two_ranks_on_the_cuda_standin_train_as_on_the_cpu(tmp_path):
    """--device cuda without a GPU: each rank on the strict CuPy stand-in (tests/cupy_standin),
    BoTNet with --sync-bn (its sums on 'device' arrays), the gradient buckets over MPI through
    host memory since the stand-in has no NCCL: the weights end where the CPU run's do."""
    base = dict(model="botnet_cifar", model_args=dict(TINY_BOTNET), lr=1e-4, sync_bn=True)
    cpu = small_config(tmp_path / "cpu", **base)
    gpu = small_config(tmp_path / "gpu", device="cuda", **base)
    r = run_ranks(tmp_path, cpu)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_ranks(tmp_path, gpu, "--standin")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 epochs on cuda" in r.stdout and "gradients go over MPI" in r.stdout, r.stdout
    a, b = weights(cpu.out), weights(gpu.out)
    assert max_difference(a, b, [k for k in a if a[k].dtype.kind == "f"]) < 1e-5   # 2.4e-7


def test_a_launch_without_mpi4py_is_refused_not_run_n_times(monkeypatch):
    from minivit.distributed import world
    monkeypatch.setattr(world, "_world", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py fails
    with pytest.raises(world.DistributedError, match=r"one of 2 ranks, but mpi4py is not "
                                                     r"installed; install it with: pip install"):
        world.get_world()
