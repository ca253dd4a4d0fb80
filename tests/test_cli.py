"""The ``minivit`` command: train / resume / eval / plot / models / gradcheck, and bad input.

Every user error must end in ONE line on stderr, exit code 2, no traceback, and must not touch
what is already written. Runs are micro (a 1-block ViT of width 32 on 64 images).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minivit
from minivit import cli, gradcheck_cli, train
from minivit.autograd import backend
from minivit.autograd.function import Function
from minivit.checkpoint import load_checkpoint, save_checkpoint
from minivit.train import TrainConfig, fit

TINY = ["--model", "vit_cifar", "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
        "--model-arg", "num_heads=2", "--batch-size", "32", "--train-limit", "64",
        "--test-limit", "64", "--no-progress"]
TINY_ARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def quiet(*args, **kwargs):
    pass


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, pattern: str) -> None:
    """Exit code 2 and one line on stderr that matches ``pattern``."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert re.match(r"minivit \w+: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-epoch micro run (read-only for the tests)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    fit(TrainConfig(model="vit_cifar", model_args=dict(TINY_ARGS), epochs=2, batch_size=32,
                    train_limit=64, test_limit=64, out=str(run), progress=False), log=quiet)
    return run


# --- train and resume ------------------------------------------------------------------------

def test_train_writes_a_run_and_prints_per_epoch_lines(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--out", run)
    assert rc == 0, err
    assert re.search(r"epoch +1/1 +train loss [\d.]+ +train acc [\d.]+% +test loss [\d.]+ +"
                     r"test acc [\d.]+%", out)
    assert re.search(r"final test accuracy [\d.]+%", out)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_args"] == TINY_ARGS and cfg["train_limit"] == 64
    assert sorted(p.name for p in run.iterdir()) == ["best.npz", "config.json", "last.npz",
                                                     "metrics.jsonl"]


def test_stop_after_epochs_then_resume_finishes_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, _ = run_cli(capsys, "train", *TINY, "--epochs", "2", "--stop-after-epochs", "1",
                         "--out", run)
    assert rc == 0 and "stopped after epoch 1 of 2" in out and f"--resume {run}" in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    rc, out, _ = run_cli(capsys, "train", "--resume", run, "--no-progress")
    assert rc == 0 and "resumed" in out and "epoch   2/2" in out and "epoch   1/2" not in out
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2]
    assert load_checkpoint(run / "last.npz")["epoch"] == 2


def test_model_arg_values_are_python_literals_else_strings():
    parse = cli._parse_model_arg
    assert parse("depth=2") == ("depth", 2)
    assert parse(" mlp_ratio = 2.5 ") == ("mlp_ratio", 2.5)
    assert parse("global_pool=avg") == ("global_pool", "avg")
    assert parse("qkv_bias=false") == ("qkv_bias", False)
    assert parse("depths=(1, 2)") == ("depths", (1, 2))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse("depth")


def test_python_dash_m_minivit_trains_in_a_subprocess(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "minivit", "train", *TINY, "--epochs", "1",
         "--out", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "final test accuracy" in proc.stdout
    assert (tmp_path / "run" / "last.npz").is_file()


def test_interrupt_exits_130_and_says_checkpoints_are_kept(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted)
    rc, _, err = run_cli(capsys, "train", *TINY)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err


# --- eval ------------------------------------------------------------------------------------

def parse_confusion(out: str) -> np.ndarray:
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("true\\pred"))
    return np.array([[int(v) for v in ln.split()[1:]] for ln in lines[start + 1:start + 11]])


def test_eval_prints_accuracy_and_confusion_matrix(run_dir, capsys):
    rc, out, err = run_cli(capsys, "eval", run_dir, "--dataset", "cifar10-subset",
                           "--limit", "64")
    assert rc == 0, err
    m = re.search(r"accuracy ([\d.]+)%, loss ([\d.]+)", out)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert float(m.group(1)) == pytest.approx(100 * last["test_acc"], abs=0.006)
    assert float(m.group(2)) == pytest.approx(last["test_loss"], abs=1e-4)
    assert "(epoch 2)" in out and "64 images" in out
    head = next(ln for ln in out.splitlines() if ln.startswith("true\\pred"))
    assert head.split()[1:] == ["airpl", "autom", "bird", "cat", "deer", "dog", "frog", "horse",
                                "ship", "truck"]
    cm = parse_confusion(out)
    assert cm.shape == (10, 10) and cm.sum() == 64
    assert np.trace(cm) / 64 == pytest.approx(last["test_acc"])


def test_eval_of_a_plain_state_dict_with_model_and_model_args(run_dir, tmp_path, capsys):
    # the model of the run saved as a plain state dict (as np.savez(f, **model.state_dict())
    # or from timm), its configuration given with --model-arg: the checkpoint's accuracy
    state = load_checkpoint(run_dir / "last.npz")["model"]
    np.savez(tmp_path / "weights.npz", **state)
    args = ["--limit", "64", "--dataset", "cifar10-subset"]
    rc, ref, _ = run_cli(capsys, "eval", run_dir, *args)
    rc2, out, err = run_cli(capsys, "eval", tmp_path / "weights.npz", "--model", "vit_cifar",
                            *[a for k, v in TINY_ARGS.items() for a in ("--model-arg", f"{k}={v}")],
                            *args)
    assert rc == rc2 == 0, err
    assert "vit_cifar from " in out
    acc = re.compile(r"accuracy ([\d.]+)%, loss ([\d.]+)")
    assert acc.search(out).groups() == acc.search(ref).groups()


def test_eval_of_a_checkpoint_file_and_of_best(run_dir, capsys):
    rc, out, _ = run_cli(capsys, "eval", run_dir / "last.npz", "--limit", "32")
    assert rc == 0 and "32 images" in out and parse_confusion(out).sum() == 32
    best_epoch = load_checkpoint(run_dir / "best.npz")["epoch"]
    rc, out, _ = run_cli(capsys, "eval", run_dir, "--best", "--limit", "32", "--train")
    assert rc == 0 and f"(epoch {best_epoch})" in out and "train (32 images)" in out


# --- plot ------------------------------------------------------------------------------------

def test_plot_draws_a_png(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    rc, out, err = run_cli(capsys, "plot", run_dir, "--output", png)
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"wrote {png}" in out


def test_plot_without_matplotlib_says_how_to_install_it(run_dir, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    rc, _, err = run_cli(capsys, "plot", run_dir, "--output", tmp_path / "c.png")
    assert_user_error(rc, err, r'needs matplotlib: pip install -e "\.\[plot\]"')
    assert not (tmp_path / "c.png").exists()


def test_plot_of_a_folder_without_metrics(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc, _, err = run_cli(capsys, "plot", tmp_path)
    assert_user_error(rc, err, r"no metrics log")


# --- models, gradcheck -----------------------------------------------------------------------

def test_models_lists_the_registry(capsys):
    rc, out, _ = run_cli(capsys, "models")
    assert rc == 0 and set(out.split()) == set(minivit.models.list_models())


def test_gradcheck_layers_prints_a_passing_table(capsys):
    rc, out, err = run_cli(capsys, "gradcheck", "layers")
    assert rc == 0, out + err
    rows = [ln for ln in out.splitlines() if re.search(r" \d+ +[\d.e+-]+ +(PASS|FAIL)$", ln)]
    assert len(rows) == 8
    names = [r.split("  ")[0] for r in rows]
    for expected in ("Linear", "Conv2d(2 -> 3, 3x3, stride 2, pad 1)", "depthwise", "LayerNorm",
                     "BatchNorm2d(3), train mode", "MultiheadSelfAttention", "GELU",
                     "cross_entropy"):
        assert any(expected in n for n in names), expected
    for row in rows:
        assert row.endswith("PASS")
        assert float(row.split()[-2]) < 1e-6  # max abs error, float64 central differences
    assert "all layers PASS" in out


class _WrongSquare(Function):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x  # wrong on purpose: d(x^2)/dx = 2x


def test_gradcheck_reports_a_wrong_backward_and_exits_1(monkeypatch, capsys):
    x = minivit.tensor(np.linspace(-1, 1, 6).reshape(2, 3), dtype="float64",
                       requires_grad=True)
    bad = gradcheck_cli.Case("wrong square", _WrongSquare.apply, [x], [])
    monkeypatch.setattr(gradcheck_cli, "layer_cases", lambda: [bad])
    rc, out, _ = run_cli(capsys, "gradcheck", "layers")
    assert rc == 1
    assert re.search(r"wrong square +6 +[\d.e+-]+ +FAIL", out) and "some layers FAIL" in out


def test_gradcheck_of_a_small_model_passes(capsys):
    lines = []
    assert gradcheck_cli.run_model("vit_cifar", out=lines.append,
                                   overrides={"depth": 1, "embed_dim": 16, "num_heads": 2})
    text = "\n".join(lines)
    assert re.search(r"numeric .* [-\d.e+]+\n +analytic .* [-\d.e+]+", text)
    assert "PASS" in text


@pytest.mark.slow
def test_gradcheck_of_vit_cifar_through_the_cli(capsys):
    rc, out, err = run_cli(capsys, "gradcheck", "vit_cifar")
    assert rc == 0, out + err
    assert "PASS" in out


# --- bad input: one line, exit code 2, nothing lost ---------------------------------------------

def test_unknown_model_and_dataset(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train", *TINY, "--model", "vit_nope", "--out", tmp_path / "a")
    assert_user_error(rc, err, r"unknown model 'vit_nope'; known models: .*vit_cifar")
    rc, _, err = run_cli(capsys, "train", *TINY, "--dataset", "mnist", "--out", tmp_path / "b")
    assert_user_error(rc, err, r"unknown dataset 'mnist'; known names: cifar10-subset")
    rc, _, err = run_cli(capsys, "train", *TINY, "--model-arg", "colour=1",
                         "--out", tmp_path / "c")
    assert_user_error(rc, err, r"do not fit vit_cifar.*unknown ViT config entries.*colour")
    rc, _, err = run_cli(capsys, "gradcheck", "vit_nope")
    assert_user_error(rc, err, r"unknown target 'vit_nope'")
    for sub in ("a", "b", "c"):
        assert not (tmp_path / sub / "config.json").exists()


def test_missing_or_corrupt_data(tmp_path, capsys):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(np.random.default_rng(0).bytes(2000))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [("cifar10", tmp_path / "nonexistent", r"no such file or folder"),
             ("cifar10", junk, r"not a readable .*archive"),
             ("cifar10", empty, r"no CIFAR10 data found"),
             ("cifar100", junk, r"not a readable"),
             ("cifar10-subset", junk, r"not a readable CIFAR subset")]
    for dataset, data, pattern in cases:
        rc, _, err = run_cli(capsys, "train", *TINY, "--dataset", dataset, "--data", data,
                             "--out", tmp_path / "run")
        assert_user_error(rc, err, pattern)


def test_unwritable_run_folder(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    rc, _, err = run_cli(capsys, "train", *TINY, "--out", a_file / "run")
    assert_user_error(rc, err, r"cannot write to run folder .*a_file/run.*choose another --out")
    assert a_file.read_text() == "not a folder"


def test_an_existing_run_is_not_overwritten_without_resume(run_dir, capsys):
    before = snapshot(run_dir)
    rc, _, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--out", run_dir)
    assert_user_error(rc, err, r"already holds a run; continue it with --resume")
    assert snapshot(run_dir) == before


def test_resume_of_something_that_is_not_a_run(tmp_path, run_dir, capsys):
    rc, _, err = run_cli(capsys, "train", "--resume", tmp_path / "nothing")
    assert_user_error(rc, err, r"no config.json there \(not a run folder\)")
    rc, _, err = run_cli(capsys, "train", "--resume", run_dir / "last.npz")
    assert_user_error(rc, err, r"not a run folder")


def test_resume_with_a_checkpoint_of_another_model(tmp_path, run_dir, capsys):
    # run B is a wider ViT; its last.npz is replaced by run A's (run_dir): the weights don't fit
    run_b = tmp_path / "b"
    fit(TrainConfig(model="vit_cifar", model_args={"depth": 1, "embed_dim": 16, "num_heads": 2},
                    epochs=2, batch_size=32, train_limit=32, test_limit=32, out=str(run_b),
                    progress=False), log=quiet, stop_after_epochs=1)
    (run_b / "last.npz").write_bytes((run_dir / "last.npz").read_bytes())
    before = snapshot(run_b)
    rc, _, err = run_cli(capsys, "train", "--resume", run_b, "--no-progress")
    assert_user_error(rc, err, r"does not fit model vit_cifar .*wrong shapes")
    assert snapshot(run_b) == before
    # and a checkpoint that names another model
    (run_b / "config.json").write_text(json.dumps(
        {**json.loads((run_b / "config.json").read_text()), "model": "mlp_mixer_cifar",
         "model_args": {"depth": 1, "embed_dim": 16}}))
    rc, _, err = run_cli(capsys, "train", "--resume", run_b, "--no-progress")
    assert_user_error(rc, err, r"checkpoint of model 'vit_cifar', not 'mlp_mixer_cifar'")


def test_eval_bad_input(tmp_path, run_dir, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 100)
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.ones(2))
    tree = load_checkpoint(run_dir / "last.npz")
    tree["config"]["model"] = tree["model_name"] = "mlp_mixer_cifar"
    tree["config"]["model_args"] = {"depth": 1, "embed_dim": 16}
    other = tmp_path / "other.npz"
    save_checkpoint(other, tree)
    cases = [([tmp_path / "none.npz"], r"no such checkpoint file"),
             ([tmp_path], r"last.npz: no such checkpoint file"),
             ([junk], r"not a readable minivit checkpoint"),
             ([plain], r"plain.npz is a plain state dict without a model name; name its "
                       r"model with --model"),
             ([plain, "--model", "vit_cifar", "--dataset", "cifar10-subset"],
              r"plain.npz does not fit model vit_cifar with 10 classes: missing keys .*"
              r"unexpected keys \(1\): x"),
             ([other], r"does not fit model mlp_mixer_cifar .*missing keys"),
             ([run_dir, "--dataset", "svhn"], r"unknown dataset 'svhn'"),
             ([run_dir, "--dataset", "cifar100", "--data", tmp_path / "nope"],   # not read
              r"trained on cifar10-subset \(10 classes\); it cannot be evaluated on cifar100 "
              r"\(100 classes\)"),
             ([run_dir, "--dataset", "cifar10", "--data", tmp_path / "nope"],
              r"no such file or folder")]
    for argv, pattern in cases:
        rc, _, err = run_cli(capsys, "eval", *argv)
        assert_user_error(rc, err, pattern)


@pytest.mark.skipif(backend.is_cupy_available(), reason="a GPU is usable here")
def test_cuda_without_cupy_or_gpu(tmp_path, run_dir, capsys):
    rc, _, err = run_cli(capsys, "train", *TINY, "--device", "cuda", "--out", tmp_path / "r")
    assert_user_error(rc, err, r"device 'cuda' is not available: .*pip install")
    assert not (tmp_path / "r").exists()
    rc, _, err = run_cli(capsys, "eval", run_dir, "--device", "cuda", "--limit", "8")
    assert_user_error(rc, err, r"device 'cuda' is not available")
    rc, _, err = run_cli(capsys, "train", *TINY, "--device", "tpu", "--out", tmp_path / "r")
    assert_user_error(rc, err, r"unknown device 'tpu'; expected 'cpu' or 'cuda'")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to inf
def test_non_finite_loss_is_a_one_line_error_naming_the_step(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train", *TINY, "--lr", "1e6", "--warmup-epochs", "0",
                         "--epochs", "4", "--out", tmp_path / "run")
    assert_user_error(rc, err, r"loss became (nan|inf|-inf) at step \d+ \(epoch \d\); stopped")


def test_a_failing_disk_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import minivit.checkpoint as ckpt_mod

    def full_disk(file, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.np, "savez", full_disk)
    rc, _, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert_user_error(rc, err, r"No space left on device")
    assert not (tmp_path / "run" / "last.npz").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
