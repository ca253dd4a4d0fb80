"""Bad input at the edge is one line naming the file or flag and what was expected, never a
traceback (issue 26, items 7-9 and the minor ones): config.json, checkpoint metadata, CLI
values (fuzzed with hypothesis), model sizes, non-UTF-8 paths, the unpickler, Ctrl-C during
the imports.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivit import cli, train
from minivit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivit.data.cifar import UnsafePickleError, restricted_load
from minivit.train import TrainConfig, TrainingError, fit

MICRO = {"depth": 1, "embed_dim": 16, "num_heads": 2, "mlp_ratio": 2.0}
MICRO_FLAGS = ["--model", "vit_cifar", "--model-arg", "depth=1", "--model-arg", "embed_dim=16",
               "--model-arg", "num_heads=2", "--batch-size", "32", "--train-limit", "64",
               "--test-limit", "64", "--no-progress"]
ENV = dict(os.environ, MINIVIT_NO_REEXEC="1", PYTHONIOENCODING="utf-8")
ENV.pop("MINIVIT_DEBUG", None)


def micro_config(out) -> TrainConfig:
    return TrainConfig(model="vit_cifar", model_args=dict(MICRO), epochs=2, batch_size=32,
                       train_limit=64, test_limit=64, out=str(out), progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("edge") / "run"
    fit(micro_config(run), log=lambda *a: None)
    return run


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line(rc: int, err: str, pattern: str = "", code: int = 2) -> None:
    assert rc == code, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]


# --- 7. config.json ---------------------------------------------------------------------------

@pytest.mark.parametrize("content, pattern", [
    ("null", r"config.json: expected a JSON object of settings, got null"),
    ("5", r"got a number"),
    ('"vit"', r"got a string"),
    ("{", r"config.json: not valid JSON"),
    ({"lr": "x"}, r"config.json: lr must be a finite number, got 'x'"),
    ({"warmup_epochs": None}, r"config.json: warmup_epochs must be a finite number, got None"),
    ({"betas": 5}, r"config.json: betas must be a list of 2 numbers, got 5"),
    ({"seed": 1.5}, r"config.json: seed must be an integer, got 1.5"),
    ({"dataset": 5}, r"config.json: dataset must be a string, got 5"),
    ({"epochs": 0}, r"config.json: epochs must be an integer >= 1, got 0"),
    ({"colour": 1}, r"config.json: unknown keys \['colour'\]"),
])
def test_a_bad_config_json_is_one_line_naming_the_file(run_dir, tmp_path, capsys, content,
                                                       pattern):
    run = tmp_path / "run"
    run.mkdir()
    if isinstance(content, dict):
        content = json.dumps({**json.loads((run_dir / "config.json").read_text()), **content})
    (run / "config.json").write_text(content)
    rc, err = run_cli(capsys, "train", "--resume", run)
    assert_one_line(rc, err, pattern)


# --- 7. crafted checkpoints -----------------------------------------------------------------------

def crafted(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    return buf.getvalue()


def meta(doc) -> bytes:
    return npy(np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8))


@pytest.mark.parametrize("members, pattern", [
    ({"__meta__": b'{"format": 1}'}, r"__meta__ entry is not the JSON document"),
    ({"__meta__.npy": meta({"format": "minivit-checkpoint-1", "model": {"w": {"__array__": "x"}}})},
     r"refers to an array 'x' that the file does not hold"),
    ({"__meta__.npy": meta([1, 2])}, r"__meta__ entry is a JSON list, expected an object"),
    ({"__meta__.npy": npy(np.zeros(3, dtype=np.float32))}, r"not the JSON document"),
    ({"__meta__.npy": meta({"format": "minivit-checkpoint-1"})}, r"has no 'model_name' entry"),
    ({"__meta__.npy": meta({"format": "minivit-checkpoint-1", "model_name": "vit_cifar"})},
     r"has no 'config' entry"),
])
def test_a_crafted_checkpoint_is_one_line_naming_the_file(tmp_path, capsys, members, pattern):
    file = crafted(tmp_path / "x.npz", members)
    rc, err = run_cli(capsys, "eval", file)
    assert_one_line(rc, err, r"x\.npz.*" + pattern)


@pytest.mark.parametrize("part, value, pattern", [
    ("schedule", {"last_epoch": "x", "base_lrs": [1]}, r"its schedule state does not fit"),
    ("rng", {"numpy": 5}, r"its rng state does not fit"),
    ("loader", {"seed": None}, r"its loader state does not fit"),
    ("optimizer", {"state": 5}, r"its optimizer state does not fit"),
    ("epoch", 99, r"its epoch must be in \[0, 2\], got 99"),
    ("config", {"lr": "x"}, r"\(its config\): lr must be a finite number"),
])
def test_a_checkpoint_with_a_bad_entry_is_refused_on_resume(run_dir, tmp_path, capsys, part,
                                                            value, pattern):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    tree = load_checkpoint(run_dir / "last.npz")
    tree[part] = {**tree[part], **value} if isinstance(value, dict) else value
    save_checkpoint(run / "last.npz", tree)
    rc, err = run_cli(capsys, "train", "--resume", run)
    assert_one_line(rc, err, pattern)


# --- 7. model sizes, data, eval --limit, stop-after-epochs --------------------------------------

@pytest.mark.parametrize("arg, pattern", [
    ("embed_dim=0", r"embed_dim must be an integer >= 1.*got 0"),
    ("num_heads=0", r"num_heads must be an integer >= 1.*got 0"),
    ("patch_size=0", r"patch_size must be an integer >= 1.*got 0"),
    ("mlp_ratio=0", r"mlp_ratio must be a number > 0.*got 0"),
    ("qkv_bias=maybe", r"qkv_bias must be True or False, got 'maybe'"),
    ("drop_path_rate=1.5", r"drop_path_rate must be a number in \[0, 1\), got 1.5"),
])
def test_a_model_size_out_of_range_is_named(tmp_path, capsys, arg, pattern):
    rc, err = run_cli(capsys, "train", *MICRO_FLAGS, "--model-arg", arg, "--out", tmp_path / "r")
    assert_one_line(rc, err, pattern)
    assert not (tmp_path / "r").exists()  # a failed start leaves no folder


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_drop_path_out_of_range_is_refused(tmp_path, capsys, value):
    rc, err = run_cli(capsys, "train", *MICRO_FLAGS, "--drop-path", value, "--out", tmp_path / "r")
    assert_one_line(rc, err, r"drop_path \(--drop-path\) must be")


def test_the_subset_read_from_dev_null_is_one_line(tmp_path, capsys):
    rc, err = run_cli(capsys, "train", *MICRO_FLAGS, "--data", "/dev/null", "--out",
                      tmp_path / "r")
    assert_one_line(rc, err, r"/dev/null: not a readable CIFAR subset")


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_eval_limit_below_one_is_refused(run_dir, capsys, limit):
    rc, err = run_cli(capsys, "eval", run_dir, "--limit", limit)
    assert_one_line(rc, err, rf"--limit must be an integer >= 1 .*got {limit}")


def test_stop_after_zero_epochs_is_refused_by_the_cli(tmp_path, capsys):
    rc, err = run_cli(capsys, "train", *MICRO_FLAGS, "--stop-after-epochs", "0", "--out",
                      tmp_path / "r")
    assert_one_line(rc, err, r"--stop-after-epochs must be an integer >= 1, got 0")


# --- 7. every other exception: one line, the traceback with --debug ------------------------------

def test_an_unexpected_exception_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(args):
        return 1 / 0

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    monkeypatch.delenv("MINIVIT_DEBUG", raising=False)
    rc, err = run_cli(capsys, "models")
    assert_one_line(rc, err, r"ZeroDivisionError: division by zero .*--debug", code=1)
    with pytest.raises(ZeroDivisionError):
        cli.main(["models", "--debug"])
    monkeypatch.setenv("MINIVIT_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["models"])


def test_ctrl_c_during_a_run_says_which_epoch_the_folder_holds(monkeypatch, tmp_path, capsys):
    evaluate, calls = train.evaluate, [0]

    def interrupt_in_epoch_2(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", interrupt_in_epoch_2)
    rc, err = run_cli(capsys, "train", *MICRO_FLAGS, "--epochs", "2", "--out", tmp_path / "r")
    assert_one_line(rc, err, r"interrupted; the last good checkpoint .*last\.npz holds epoch 1 "
                             r"\(continue with --resume", code=130)


def test_ctrl_c_during_the_imports_is_one_line(tmp_path):
    code = ("import os, signal, sys, time\n"
            "sys.argv = ['minivit']\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'minivit.autograd':\n"
            "            os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
            "sys.meta_path.insert(0, Hook())\n"
            "import minivit\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 130 and r.stderr.strip() == "minivit: interrupted", r.stderr


# --- 8. non-UTF-8 paths under a strict UTF-8 stdout ---------------------------------------------

@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 file names")
def test_a_non_utf8_run_folder_trains_resumes_evaluates_and_plots(tmp_path):
    run = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")

    def minivit(*argv):
        r = subprocess.run([sys.executable, "-m", "minivit", *argv], capture_output=True,
                           text=True, env=ENV, timeout=300, errors="replace")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return r.stdout + r.stderr

    out = minivit("train", *MICRO_FLAGS, "--epochs", "2", "--stop-after-epochs", "1",
                  "--out", run)
    assert "run\\xff" in out
    assert "resumed" in minivit("train", "--resume", run, "--no-progress")
    assert "accuracy" in minivit("eval", run, "--limit", "32")
    assert "wrote" in minivit("plot", run)


# --- 9. the unpickler refuses dtype state with object/reference flags ------------------------

def test_the_unpickler_refuses_a_dtype_state_that_sets_object_flags():
    class Sneaky:
        def __reduce__(self):  # allowed globals only: numpy.dtype('V8'), then BUILD
            return (np.dtype, ("V8", False, True), (3, "|", None, None, None, 8, 1, 63))

    with pytest.raises(UnsafePickleError, match="dtype state .* refused"):
        restricted_load(pickle.dumps(Sneaky(), protocol=2))
    plain = restricted_load(pickle.dumps({b"data": np.arange(6, dtype=np.uint8)}, protocol=2))
    assert plain[b"data"].tolist() == [0, 1, 2, 3, 4, 5]


# --- fuzz: config.json, checkpoint metadata, CLI values -------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20)
                    | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
FIELDS = [f for f in TrainConfig.__dataclass_fields__]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def one_line_error(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS + ["bogus"]), JSON, max_size=3),
       top=st.one_of(st.none(), JSON))
def test_fuzz_config_json(run_dir, tmp_path, changes, top):
    run = tmp_path / "fuzz"
    run.mkdir(exist_ok=True)
    base = json.loads((run_dir / "config.json").read_text())
    doc = top if top is not None and not isinstance(top, dict) else {**base, **changes}
    (run / "config.json").write_text(json.dumps(doc))
    try:
        train.read_config(run)
    except TrainingError as exc:
        one_line_error(exc)


@FUZZ
@given(entry=st.sampled_from(["format", "model_name", "config", "epoch", "best_acc", "model",
                              "optimizer", "schedule", "loader", "rng"]),
       value=JSON, drop=st.booleans())
def test_fuzz_checkpoint_metadata(run_dir, tmp_path, entry, value, drop):
    tree = load_checkpoint(run_dir / "last.npz")
    if drop:
        del tree[entry]
    elif isinstance(tree[entry], dict) and isinstance(value, dict):
        tree[entry] = {**tree[entry], **value}
    else:
        tree[entry] = value
    file = tmp_path / "fuzz.npz"
    save_checkpoint(file, tree)
    cfg = micro_config(None)
    model = train.build_model(cfg, 10)
    opt = train.build_optimizer(model, cfg)
    sched = train.build_schedule(opt, cfg, 2)
    loader = train.CIFARLoader(np.zeros((64, 32, 32, 3), np.uint8), np.zeros(64, np.int64),
                               batch_size=32)
    try:
        ckpt = train.load_run_checkpoint(file, model, "vit_cifar")
        train._restore(ckpt, file, opt, sched, loader)
    except (CheckpointError, TrainingError) as exc:
        one_line_error(exc)


NUMBER_FLAGS = ["--lr", "--min-lr", "--weight-decay", "--warmup-epochs", "--label-smoothing",
                "--mixup", "--cutmix", "--clip-grad", "--drop-path", "--epochs", "--batch-size",
                "--seed", "--train-limit", "--test-limit", "--log-interval", "--momentum"]


@FUZZ
@given(flag=st.sampled_from(NUMBER_FLAGS),
       value=st.one_of(st.integers(-10**6, 10**6).map(str), st.floats().map(repr),
                       st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-0.0"])),
       model_arg=st.one_of(st.none(), st.tuples(st.sampled_from(
           ["embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "patch_size",
            "drop_path_rate"]), st.text(max_size=6))))
def test_fuzz_cli_values(monkeypatch, tmp_path, capsys, flag, value, model_arg):
    def settle(cfg, resume=None, log=print, stop_after_epochs=None):  # validate, build, no run
        cfg.validate()
        train.build_model(cfg, 10)
        return {}

    monkeypatch.setattr(train, "fit", settle)
    extra = ["--model-arg", f"{model_arg[0]}={model_arg[1]}"] if model_arg else []
    capsys.readouterr()
    try:
        rc = cli.main(["train", *MICRO_FLAGS, *extra, flag, value, "--out", str(tmp_path / "f")])
    except SystemExit as exc:  # argparse: a value of the wrong type ("usage: ..." then one line)
        rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert rc in (0, 2), err
    if rc == 2:
        assert re.match(r"minivit train: error: ", err.strip().splitlines()[-1]), err
