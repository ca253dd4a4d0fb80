"""Crash-consistent run folders (issue 26, items 1-6): the commit order, metrics reconciled
with last.npz, no non-finite checkpoint, the dead-end folder, stale temporary files, one
writer per folder. Micro runs of about a second each (the same micro ViT as test_train).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

import minivit.checkpoint as ckpt_mod
from minivit import runfolder, train
from minivit.checkpoint import load_checkpoint
from minivit.data import download
from minivit.runfolder import FolderLock, RunFolder, read_metrics, reconcile_metrics
from minivit.train import RunInterrupted, TrainConfig, TrainingError, fit

TINY_VIT = {"depth": 1, "embed_dim": 16, "num_heads": 2, "mlp_ratio": 2.0}


def tiny_config(out: Path | None, **changes) -> TrainConfig:
    cfg = TrainConfig(model="vit_cifar", model_args=dict(TINY_VIT), epochs=2, batch_size=32,
                      eval_batch_size=64, train_limit=64, test_limit=64, lr=2e-3,
                      out=None if out is None else str(out), progress=False)
    return dataclasses.replace(cfg, **changes)


def lines_of(log: list) -> str:
    return "\n".join(map(str, log))


def epochs_in(run: Path) -> list[int]:
    return [r["epoch"] for r in read_metrics(run / "metrics.jsonl")]


def strict_json_lines(path: Path) -> list[dict]:
    def no_constants(name):
        raise AssertionError(f"{name} in {path}: not strict JSON")
    return [json.loads(ln, parse_constant=no_constants) for ln in path.read_text().splitlines()]


# --- 1. one commit point per epoch: best, then last ------------------------------------------

def test_best_is_written_before_last_so_last_is_the_commit_record(tmp_path, monkeypatch):
    order = []
    save = ckpt_mod.save_checkpoint

    def recording(path, tree):
        save(path, tree)
        order.append((Path(path).name, tree["epoch"]))

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", recording)
    fit(tiny_config(tmp_path / "run"), log=lambda *a: None)
    firsts = [name for name, epoch in order if epoch == 1]
    assert firsts == ["best.npz", "last.npz"]  # epoch 1 always improves on nothing
    assert order[-1][0] == "last.npz"


def test_a_kill_between_best_and_last_resumes_to_a_consistent_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save = ckpt_mod.save_checkpoint

    def dies_after_best(path, tree):
        save(path, tree)
        if Path(path).name == "best.npz" and tree["epoch"] == 2:
            raise KeyboardInterrupt  # the moment a kill -9 would leave behind

    evaluate = train.evaluate

    def improving(model, loader, *args, **kwargs):  # every epoch beats the one before
        ev = evaluate(model, loader, *args, **kwargs)
        ev["acc"] = round(0.1 * loader_epochs.setdefault("n", 0), 6)
        loader_epochs["n"] += 1
        return ev

    loader_epochs: dict = {}
    monkeypatch.setattr(train, "evaluate", improving)
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", dies_after_best)
    with pytest.raises(RunInterrupted, match="holds epoch 1"):
        fit(tiny_config(run, epochs=3), log=lambda *a: None)
    assert load_checkpoint(run / "best.npz")["epoch"] == 2  # one epoch ahead of the commit
    assert load_checkpoint(run / "last.npz")["epoch"] == 1
    loader_epochs["n"] = 1  # the resumed run repeats epoch 2
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save)
    fit(tiny_config(run, epochs=3), resume=str(run), log=lambda *a: None)
    rows = read_metrics(run / "metrics.jsonl")
    best_row = max(rows, key=lambda r: r["test_acc"])
    best = load_checkpoint(run / "best.npz")
    assert best["epoch"] == best_row["epoch"] and best["best_acc"] == best_row["test_acc"]


# --- 2. metrics.jsonl reconciled with the checkpoint ------------------------------------------

def test_a_torn_last_metrics_line_is_ignored_with_a_warning_and_resume_goes_on(tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(run), log=lambda *a: None, stop_after_epochs=1)
    with open(run / "metrics.jsonl", "ab") as f:  # a full disk cut epoch 2's line short
        f.write(b'{"epoch": 2, "train_loss": 2.1, "train_acc": 0.1, "test_l')
    log = []
    fit(tiny_config(run), resume=str(run), log=log.append)
    assert "cut short" in lines_of(log) and "metrics.jsonl line 2" in lines_of(log)
    assert [r["epoch"] for r in strict_json_lines(run / "metrics.jsonl")] == [1, 2]


def test_metric_lines_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(run, epochs=3), log=lambda *a: None, stop_after_epochs=1)
    row = json.loads((run / "metrics.jsonl").read_text())
    with open(run / "metrics.jsonl", "a") as f:  # written before a kill hit the commit
        f.write(json.dumps({**row, "epoch": 2}) + "\n")
    log = []
    fit(tiny_config(run, epochs=3), resume=str(run), log=log.append, stop_after_epochs=2)
    assert "dropped 1 line past the checkpoint's epoch 1" in lines_of(log)
    assert epochs_in(run) == [1, 2]


@pytest.mark.parametrize("bad", [b'{"x": 1}', b"[1]", b'{"epoch": "1"}', b"NaN", b"garbage"])
def test_a_bad_metrics_line_in_the_middle_names_the_file_and_line(tmp_path, bad):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 1}\n' + bad + b'\n{"epoch": 2}\n')
    with pytest.raises(TrainingError, match=r"metrics.jsonl line 2: "):
        read_metrics(path)
    if bad in (b"garbage", b"NaN"):  # not JSON at all: as the last line, a torn tail
        path.write_bytes(b'{"epoch": 1}\n' + bad)
        warned = []
        assert read_metrics(path, warn=warned.append) == [{"epoch": 1}] and warned


def test_reconcile_keeps_a_clean_file_untouched(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n')
    mtime = path.stat().st_mtime_ns
    assert reconcile_metrics(path, 2, log=lambda *a: None) == [{"epoch": 1}, {"epoch": 2}]
    assert path.stat().st_mtime_ns == mtime


# --- 3. never save non-finite state -------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_lr_never_leaves_a_non_finite_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite|loss became") as info:
        fit(tiny_config(run, lr=1e39, warmup_epochs=0.0), log=lambda *a: None)
    assert "no checkpoint was written" in str(info.value).lower()
    assert not (run / "last.npz").exists() and not (run / "best.npz").exists()


@pytest.mark.parametrize("poison", ["test_loss", "parameter", "optimizer"])
def test_an_epoch_with_non_finite_state_is_not_saved_and_the_message_names_the_epoch_kept(
        tmp_path, monkeypatch, poison):
    run = tmp_path / "run"
    evaluate, calls = train.evaluate, [0]

    def poisoned_evaluate(model, loader, device="cpu", *args, **kwargs):
        ev = evaluate(model, loader, device, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:  # the end of epoch 2
            if poison == "test_loss":
                ev["loss"] = float("nan")
            elif poison == "parameter":
                next(iter(model.parameters())).data[...] = np.inf
            else:
                poisoned_evaluate.opt.state[next(iter(poisoned_evaluate.opt.state))]["exp_avg"][...] = np.nan
        return ev

    build_optimizer = train.build_optimizer

    def keep_optimizer(model, cfg):
        poisoned_evaluate.opt = build_optimizer(model, cfg)
        return poisoned_evaluate.opt

    monkeypatch.setattr(train, "evaluate", poisoned_evaluate)
    monkeypatch.setattr(train, "build_optimizer", keep_optimizer)
    last_bytes = {}
    save = ckpt_mod.save_checkpoint

    def recording(path, tree):
        save(path, tree)
        last_bytes[Path(path).name] = Path(path).read_bytes()

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", recording)
    with pytest.raises(TrainingError) as info:
        fit(tiny_config(run, epochs=3), log=lambda *a: None)
    msg = str(info.value)
    what = {"test_loss": "test loss", "parameter": "parameter", "optimizer": "optimizer state"}
    assert f"epoch 2 ended with a non-finite {what[poison]}" in msg
    assert "last.npz holds epoch 1" in msg and "--resume" in msg
    assert (run / "last.npz").read_bytes() == last_bytes["last.npz"]
    assert load_checkpoint(run / "last.npz")["epoch"] == 1
    assert epochs_in(run) == [1]


def test_metrics_are_strict_json_with_null_for_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    runfolder.append_record(path, {"epoch": 1, "train_loss": float("nan"),
                                    "x": [float("inf"), 1.0]})
    assert path.read_text() == '{"epoch": 1, "train_loss": null, "x": [null, 1.0]}\n'


# --- 4. config but no checkpoint: resumable from the start, or reusable --------------------------

def interrupted_in_epoch_1(tmp_path, monkeypatch) -> Path:
    run = tmp_path / "run"
    evaluate = train.evaluate

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "evaluate", interrupt)
    with pytest.raises(RunInterrupted) as info:
        fit(tiny_config(run), log=lambda *a: None)
    assert "no checkpoint was written" in str(info.value)
    monkeypatch.setattr(train, "evaluate", evaluate)
    assert (run / "config.json").exists() and not (run / "last.npz").exists()
    return run


def test_a_run_interrupted_before_its_first_checkpoint_resumes_from_the_start(
        tmp_path, monkeypatch):
    run = interrupted_in_epoch_1(tmp_path, monkeypatch)
    log = []
    fit(tiny_config(run), resume=str(run), log=log.append)
    assert "has no checkpoint yet" in lines_of(log) and "from the beginning" in lines_of(log)
    assert load_checkpoint(run / "last.npz")["epoch"] == 2


def test_a_folder_with_only_a_config_can_be_reused_for_a_new_run(tmp_path, monkeypatch):
    run = interrupted_in_epoch_1(tmp_path, monkeypatch)
    log = []
    fit(tiny_config(run, seed=7), log=log.append)
    assert "reusing the folder" in lines_of(log)
    assert json.loads((run / "config.json").read_text())["seed"] == 7


# --- 5. stale temporary files are swept --------------------------------------------------------

def test_stale_temporary_files_are_swept_on_start(tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(run), log=lambda *a: None, stop_after_epochs=1)
    for name in (".last.npz.abc123.tmp", ".best.npz.x.tmp", ".metrics.jsonl.y.tmp"):
        (run / name).write_bytes(b"\0" * 1000)
    log = []
    fit(tiny_config(run), resume=str(run), log=log.append)
    assert "removed 3 temporary files" in lines_of(log)
    assert sorted(p.name for p in run.iterdir()) == ["best.npz", "config.json", "last.npz",
                                                     "metrics.jsonl"]


def test_stale_download_parts_are_swept_but_not_live_ones(tmp_path):
    dest = tmp_path / "cifar-10-python.tar.gz"
    old, live = tmp_path / ".cifar-10-python.tar.gz.a1.part", tmp_path / ".cifar-10-python.tar.gz.b2.part"
    old.write_bytes(b"x")
    live.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert download.sweep_stale_parts(dest) == 1
    assert not old.exists() and live.exists()


# --- 6. one writer per run folder ---------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_pid_of_the_first(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    held = FolderLock(run)
    held.acquire()
    try:
        with pytest.raises(TrainingError, match=rf"in use by another minivit process "
                                                rf"\(PID {os.getpid()}\)"):
            fit(tiny_config(run), log=lambda *a: None)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        held.release()
    fit(tiny_config(run, epochs=1), log=lambda *a: None)  # free again
    assert not (run / ".lock").exists()


def test_the_lock_is_released_when_the_holder_dies(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time; from pathlib import Path; from minivit.runfolder import "
            "FolderLock; FolderLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=f"PID {proc.pid}"):
            RunFolder(run, log=lambda *a: None).open(resume=False)
    finally:
        proc.kill()
        proc.wait()
    folder = RunFolder(run, log=lambda *a: None).open(resume=False)  # a kill frees it
    folder.close()


# --- minor ------------------------------------------------------------------------------------

def test_resuming_a_finished_run_says_so(tmp_path):
    run = tmp_path / "run"
    fit(tiny_config(run, epochs=1), log=lambda *a: None)
    log = []
    metrics = fit(tiny_config(run, epochs=1), resume=str(run), log=log.append)
    assert "all 1 epochs of this run are done already" in lines_of(log)
    assert metrics["epoch"] == 1 and "test_acc" in metrics


def test_a_failed_start_leaves_no_empty_folder(tmp_path):
    run = tmp_path / "new" / "run"
    with pytest.raises(TrainingError):
        fit(tiny_config(run, model_args={"colour": 1}), log=lambda *a: None)
    assert not run.exists()


@pytest.mark.parametrize("n", [0, -1])
def test_stop_after_zero_epochs_is_refused(tmp_path, n):
    with pytest.raises(TrainingError, match=rf"--stop-after-epochs must be an integer >= 1, "
                                            rf"got {n}"):
        fit(tiny_config(tmp_path / "run"), log=lambda *a: None, stop_after_epochs=n)


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(file, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.np, "savez", full)
    with pytest.raises(OSError) as info:
        ckpt_mod.save_checkpoint(tmp_path / "last.npz", {"a": np.zeros(2)})
    assert info.value.filename == str(tmp_path / "last.npz") and info.value.errno == 28
    assert not list(tmp_path.iterdir())


def test_loss_watch_finds_the_first_non_finite_step_without_reading_every_step():
    from minivit.finite import LossWatch, NonFiniteLoss

    watch = LossWatch(4)
    due = [watch.add(np.float32(v), step) for step, v in enumerate([1.0, 2.0, math.inf, 1.0])]
    assert due == [False, False, False, True]
    with pytest.raises(NonFiniteLoss, match="loss became inf at step 2"):
        watch.check()
    watch.add(np.float32(0.5), 4)
    assert watch.check().tolist() == [0.5]
