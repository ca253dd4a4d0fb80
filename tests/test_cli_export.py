"""``minivit export`` writes .safetensors, which ``eval`` and ``--init-weights`` take back."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from minivit import cli
from minivit.checkpoint import load_checkpoint
from minivit.models import create_model
from minivit.train import TrainConfig, TrainingError, fit, load_init_weights

st_numpy = pytest.importorskip("safetensors.numpy", reason="the safetensors extra is not installed")

TINY_ARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny(out, **kw) -> TrainConfig:
    return TrainConfig(model="vit_cifar", model_args=dict(TINY_ARGS), batch_size=32,
                       train_limit=64, test_limit=64, out=out, progress=False,
                       **{"epochs": 1, **kw})


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    fit(tiny(str(run)), log=lambda *a, **k: None)
    return run


def accuracy(out: str) -> str:
    return re.search(r"accuracy ([\d.]+)%, loss ([\d.]+)", out).group(0)


def test_export_then_eval_and_init_weights(run_dir, tmp_path, capsys):
    out_file = tmp_path / "model.safetensors"
    rc, out, err = run_cli(capsys, "export", run_dir, "--out", out_file)
    assert rc == 0, err
    assert f"wrote {out_file} (vit_cifar" in out
    saved = st_numpy.load_file(str(out_file))          # the package reads what minivit wrote
    model_state = load_checkpoint(run_dir / "last.npz")["model"]
    assert set(saved) == set(model_state)
    assert all(np.array_equal(saved[k], model_state[k]) for k in saved)

    # eval of the .safetensors (model and its arguments from the file's metadata) gives the
    # same figures as eval of the run
    rc, out_run, err = run_cli(capsys, "eval", run_dir, "--dataset", "cifar10-subset",
                               "--limit", "64")
    assert rc == 0, err
    rc, out_st, err = run_cli(capsys, "eval", out_file, "--dataset", "cifar10-subset",
                              "--limit", "64")
    assert rc == 0, err
    assert accuracy(out_st) == accuracy(out_run) and f"vit_cifar from {out_file}" in out_st

    # --init-weights takes it: the run starts from exactly those weights
    model = create_model("vit_cifar", **TINY_ARGS)
    load_init_weights(model, out_file, "vit_cifar")
    assert all(np.array_equal(model.state_dict()[k], saved[k]) for k in saved)
    fit(tiny(None, init_weights=str(out_file)), log=lambda *a, **k: None)   # trains from it


def test_export_default_name_and_npz(run_dir, tmp_path, capsys):
    (tmp_path / "ck.npz").write_bytes((run_dir / "last.npz").read_bytes())
    rc, out, err = run_cli(capsys, "export", tmp_path / "ck.npz")
    assert rc == 0 and (tmp_path / "ck.safetensors").is_file(), err
    rc, out, err = run_cli(capsys, "export", run_dir / "last.npz", "--out", tmp_path / "m.npz")
    assert rc == 0, err
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert "__meta__" not in z.files and "head.weight" in z.files
    rc, out, err = run_cli(capsys, "eval", tmp_path / "m.npz", "--dataset", "cifar10-subset",
                           "--limit", "8")
    assert rc == 2 and "plain state dict without a model name; name its model with --model" in err
    rc, out, err = run_cli(capsys, "eval", tmp_path / "m.npz", "--model", "vit_cifar",
                           "--dataset", "cifar10-subset", "--limit", "8")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "does not fit model vit_cifar with 10 classes: missing keys" in err   # depth 6 vs 1


def test_init_weights_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 4)
    with pytest.raises(TrainingError, match=r"--init-weights .*bad.safetensors: not a readable "
                                            r"\.safetensors file"):
        fit(tiny(None, init_weights=str(bad)), log=lambda *a, **k: None)
