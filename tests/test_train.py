"""The training loop on micro runs (a 1-2 block ViT of width 32, 96 images, batch 32):
the run folder, exact resume, the NaN stop, atomic checkpoints inside ``fit``, evaluation.

Each ``fit`` here takes about a second; the whole file stays well under 20 s.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

import minivit
from minivit import train
from minivit.checkpoint import load_checkpoint, tree_leaves
from minivit.data import CIFARLoader, load_dataset
from minivit.train import TrainConfig, TrainingError, evaluate, fit

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0,
            "drop_path_rate": 0.1}  # drop path: the run also draws from minivit's RNG
STEPS_PER_EPOCH = 3  # 96 images / batch 32


def tiny_config(out: Path | None, **changes) -> TrainConfig:
    cfg = TrainConfig(model="vit_cifar", model_args=dict(TINY_VIT), epochs=2, batch_size=32,
                      eval_batch_size=32, train_limit=96, test_limit=64, lr=2e-3,
                      out=None if out is None else str(out), progress=False)
    return dataclasses.replace(cfg, **changes)


def quiet(*args, **kwargs):
    pass


def assert_trees_identical(a: dict, b: dict, skip=()) -> None:
    """Same structure, arrays equal bit for bit (dtype, shape, bytes), other leaves equal."""
    la = dict(tree_leaves(a))
    lb = dict(tree_leaves(b))
    assert la.keys() == lb.keys()
    for key, va in la.items():
        if any(key.startswith(s) for s in skip):
            continue
        vb = lb[key]
        if isinstance(va, np.ndarray):
            assert isinstance(vb, np.ndarray), key
            assert va.dtype == vb.dtype and va.shape == vb.shape, key
            assert va.tobytes() == vb.tobytes(), f"{key} differs"
        else:
            assert va == vb, key


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch micro run (shared, read-only)."""
    run = tmp_path_factory.mktemp("train") / "full"
    fit(tiny_config(run), log=quiet)
    return run


# --- the run folder --------------------------------------------------------------------------

def test_run_folder_holds_config_metrics_and_checkpoints(finished_run):
    run = finished_run
    assert sorted(p.name for p in run.iterdir()) == ["best.npz", "config.json", "last.npz",
                                                     "metrics.jsonl"]  # no temp files left
    cfg = TrainConfig.from_json(json.loads((run / "config.json").read_text()))
    assert cfg == tiny_config(run)

    rows = metric_lines(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                    "time_s", "train_imgs_per_s"):
            assert np.isfinite(r[key]), key
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    assert rows[0]["lr"] == pytest.approx(2e-3)  # end of the 1-epoch warmup
    assert rows[1]["lr"] == pytest.approx(0.0, abs=1e-12)  # end of the cosine

    last = load_checkpoint(run / "last.npz")
    assert last["format"] == "minivit-checkpoint-1" and last["model_name"] == "vit_cifar"
    assert last["epoch"] == 2 and last["config"] == cfg.to_json()
    assert {"model", "optimizer", "schedule", "loader", "rng", "best_acc"} <= set(last)
    model = minivit.models.create_model("vit_cifar", num_classes=10, **TINY_VIT)
    assert set(last["model"]) == set(model.state_dict())
    assert len(last["optimizer"]["state"]) == len(list(model.parameters()))
    assert all(int(s["step"]) == 2 * STEPS_PER_EPOCH for s in last["optimizer"]["state"].values())
    assert last["schedule"]["last_epoch"] == 2 * STEPS_PER_EPOCH
    assert last["loader"] == {"seed": 0, "epoch": 2, "batch": 0}
    assert last["rng"]["numpy"]["bit_generator"] == "PCG64"

    best = load_checkpoint(run / "best.npz")
    accs = [r["test_acc"] for r in rows]
    assert best["epoch"] == 1 + int(np.argmax(accs))  # first epoch with the best accuracy
    assert best["best_acc"] == pytest.approx(max(accs)) == last["best_acc"]


def test_fit_returns_the_last_epoch_metrics_and_the_model(finished_run, tmp_path):
    m = fit(tiny_config(None, epochs=1), log=quiet)  # out=None: nothing is written
    assert m["epoch"] == 1 and isinstance(m["model"], minivit.nn.Module)
    assert list(tmp_path.iterdir()) == []


def test_config_json_round_trip_and_unknown_keys():
    cfg = tiny_config(Path("x"), betas=(0.8, 0.99), clip_grad=1.0)
    again = TrainConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg and again.betas == (0.8, 0.99)
    with pytest.raises(TrainingError, match="unknown keys.*'colour'"):
        TrainConfig.from_json({**cfg.to_json(), "colour": "red"})


# --- exact resume ----------------------------------------------------------------------------

def test_interrupted_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(
        finished_run, tmp_path):
    run = tmp_path / "interrupted"
    logs = []
    fit(tiny_config(run), log=logs.append, stop_after_epochs=1)
    assert any("stopped after epoch 1 of 2" in line for line in logs)
    assert load_checkpoint(run / "last.npz")["epoch"] == 1
    assert [r["epoch"] for r in metric_lines(run)] == [1]

    # a fresh process would start from scratch: scramble the global RNG first
    minivit.manual_seed(12345)
    np.random.seed(12345)
    fit(tiny_config(run), resume=str(run), log=logs.append)
    assert any("resumed" in line and "after epoch 1" in line for line in logs)

    full, resumed = (load_checkpoint(r / "last.npz") for r in (finished_run, run))
    assert resumed["epoch"] == 2
    # model weights, AdamW moments and step counts, schedule, loader and RNG states
    assert_trees_identical(full, resumed, skip=("/config/out",))
    assert_trees_identical(load_checkpoint(finished_run / "best.npz"),
                           load_checkpoint(run / "best.npz"), skip=("/config/out",))
    for a, b in zip(metric_lines(finished_run), metric_lines(run), strict=True):
        assert {k: v for k, v in a.items() if "time" not in k and "per_s" not in k} == \
               {k: v for k, v in b.items() if "time" not in k and "per_s" not in k}


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(TrainingError, match="not a run folder"):
        fit(tiny_config(None), resume=str(tmp_path / "nothing"), log=quiet)


def test_resume_refuses_a_different_epoch_count(finished_run):
    # the schedule spans the saved epochs: more epochs would train at lr 0
    before = {p.name: p.read_bytes() for p in finished_run.iterdir()}
    with pytest.raises(TrainingError, match="keeps its recipe, but --epochs 4 \\(the run.s: 2\\); omit.*new run"):
        fit(tiny_config(None, epochs=4), resume=str(finished_run), log=quiet)
    assert {p.name: p.read_bytes() for p in finished_run.iterdir()} == before


def test_run_files_get_the_usual_permissions(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "last.npz", "best.npz"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_new_run_never_overwrites_an_existing_one(finished_run):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir()}
    with pytest.raises(TrainingError, match="already holds a run.*--resume"):
        fit(tiny_config(finished_run), log=quiet)
    assert {p.name: p.read_bytes() for p in finished_run.iterdir()} == before


# --- NaN / inf loss --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to inf
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch):
    build = train.build_model

    def build_exploding_after_epoch_1(cfg, num_classes):
        model = build(cfg, num_classes)
        forward, calls = model.forward, [0]

        def exploding_forward(x):
            out = forward(x)
            if model.training:
                calls[0] += 1
                if calls[0] > STEPS_PER_EPOCH:
                    return out * float("inf")
            return out
        model.forward = exploding_forward
        return model

    import minivit.checkpoint as ckpt_mod

    saved: dict[str, list[bytes]] = {}
    save = ckpt_mod.save_checkpoint

    def recording_save(path, tree):
        save(path, tree)
        saved.setdefault(Path(path).name, []).append(Path(path).read_bytes())

    monkeypatch.setattr(train, "build_model", build_exploding_after_epoch_1)
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", recording_save)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        fit(tiny_config(run), log=quiet)
    msg = str(info.value)
    assert f"at step {STEPS_PER_EPOCH} (epoch 2)" in msg and "last.npz" in msg
    assert "nan" in msg or "inf" in msg
    assert len(saved["last.npz"]) == 1  # only epoch 1 was saved ...
    assert (run / "last.npz").read_bytes() == saved["last.npz"][0]  # ... and is intact
    assert load_checkpoint(run / "last.npz")["epoch"] == 1
    assert [r["epoch"] for r in metric_lines(run)] == [1]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to inf
def test_huge_learning_rate_is_caught_as_a_non_finite_loss(tmp_path):
    """lr 1e6 diverges: caught either as a training loss or as the test loss before the save
    (the epoch used to be saved as both last.npz and best.npz with test loss NaN)."""
    with pytest.raises(TrainingError, match=r"loss became (nan|inf|-inf) at step \d+|"
                                            r"non-finite (test loss|parameter|optimizer)"):
        fit(tiny_config(tmp_path / "run", lr=1e6, epochs=3, warmup_epochs=0.0), log=quiet)
    assert not (tmp_path / "run" / "last.npz").exists()
    assert not (tmp_path / "run" / "best.npz").exists()


# --- atomic checkpoints inside fit ------------------------------------------------------------

def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import minivit.checkpoint as ckpt_mod

    savez, calls, snapshot = np.savez, [0], {}

    def failing_savez(file, **arrays):
        calls[0] += 1
        if calls[0] == 3:  # epoch 2's last.npz (epoch 1 wrote last.npz and best.npz)
            snapshot["last"] = (run / "last.npz").read_bytes()
            file.write(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device")
        return savez(file, **arrays)

    monkeypatch.setattr(ckpt_mod.np, "savez", failing_savez)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        fit(tiny_config(run), log=quiet)
    assert (run / "last.npz").read_bytes() == snapshot["last"]
    assert load_checkpoint(run / "last.npz")["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["best.npz", "config.json", "last.npz",
                                                     "metrics.jsonl"]


# --- evaluation ------------------------------------------------------------------------------

def test_evaluate_gives_loss_accuracy_and_a_consistent_confusion_matrix(finished_run):
    ds = load_dataset("cifar10-subset")
    model = train.build_model(tiny_config(None), 10)
    train.load_run_checkpoint(finished_run, model, "vit_cifar")
    loader = CIFARLoader(ds.x_test[:64], ds.y_test[:64], batch_size=24, shuffle=False)
    model.train()
    ev = evaluate(model, loader)
    assert model.training  # the mode is restored
    cm = ev["confusion"]
    assert cm.shape == (10, 10) and cm.sum() == 64
    assert np.array_equal(cm.sum(axis=1), np.bincount(ds.y_test[:64], minlength=10))
    assert ev["acc"] == pytest.approx(np.trace(cm) / 64)
    # the same figures as the run's own last evaluation (other batch size, same images)
    last = metric_lines(finished_run)[-1]
    assert ev["acc"] == pytest.approx(last["test_acc"])
    assert ev["loss"] == pytest.approx(last["test_loss"], rel=1e-5)


def test_checkpoint_of_another_model_is_refused(finished_run):
    other = train.build_model(tiny_config(None, model_args={"depth": 1, "embed_dim": 16,
                                                            "num_heads": 2}), 10)
    with pytest.raises(train.CheckpointError, match="does not fit model"):
        train.load_run_checkpoint(finished_run, other, "vit_cifar")
    with pytest.raises(train.CheckpointError, match="checkpoint of model 'vit_cifar', not "
                                                    "'mlp_mixer_cifar'"):
        train.load_run_checkpoint(finished_run, None, "mlp_mixer_cifar")


# --- starting weights ------------------------------------------------------------------------

def test_init_weights_start_the_run_from_a_state_dict_npz_or_a_checkpoint(finished_run,
                                                                          tmp_path):
    start = train.build_model(tiny_config(None), 10)
    for p in start.parameters():  # far from any seed's init, so a silent no-op shows
        p.data[...] = 0.01
    npz = tmp_path / "start.npz"
    np.savez(npz, **{k: np.asarray(v) for k, v in start.state_dict().items()})
    seen = []

    def spy(model, *args, **kwargs):  # the weights the first optimizer sees
        seen.append({k: np.array(v) for k, v in model.state_dict().items()})
        return real_build_optimizer(model, *args, **kwargs)

    real_build_optimizer = train.build_optimizer
    try:
        train.build_optimizer = spy
        fit(tiny_config(None, init_weights=str(npz), epochs=1), log=quiet)
        fit(tiny_config(None, init_weights=str(finished_run), epochs=1), log=quiet)
    finally:
        train.build_optimizer = real_build_optimizer
    assert all(np.all(v == np.float32(0.01)) for k, v in seen[0].items() if "weight" in k)
    final = load_checkpoint(finished_run / "last.npz")["model"]
    assert all(np.array_equal(seen[1][k], final[k]) for k in final)


def test_init_weights_that_do_not_fit_name_the_file_and_the_keys(tmp_path):
    npz = tmp_path / "other.npz"
    np.savez(npz, **{"head.weight": np.zeros((10, 5), np.float32)})
    with pytest.raises(TrainingError, match=r"other.npz does not fit model vit_cifar: missing "
                                            r"keys .*cls_token"):
        fit(tiny_config(None, init_weights=str(npz)), log=quiet)
    with pytest.raises(TrainingError, match="no such file"):
        fit(tiny_config(None, init_weights=str(tmp_path / "absent.npz")), log=quiet)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TrainingError, match="junk.npz: not a readable .npz"):
        fit(tiny_config(None, init_weights=str(tmp_path / "junk.npz")), log=quiet)


@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, r"epochs \(--epochs\) must be an integer >= 1, got 0"),
    ({"train_limit": 0}, r"train_limit \(--train-limit\) must be an integer >= 1"),
    ({"test_limit": -5}, r"test_limit \(--test-limit\) must be an integer >= 1"),
    ({"warmup_epochs": 3.0}, r"warmup_epochs \(--warmup-epochs\) must be between 0 and "
                             r"--epochs \(2\), got 3.0"),
    ({"label_smoothing": 1.0}, r"label_smoothing \(--label-smoothing\) must be in \[0, 1\)"),
    ({"lr": float("nan")}, r"lr \(--lr\) must be a finite number, got nan"),
    ({"min_lr": float("inf")}, r"min_lr \(--min-lr\) must be a finite number, got inf"),
    ({"lr": "x"}, r"lr \(--lr\) must be a finite number, got 'x'"),
    ({"seed": 1.5}, r"seed \(--seed\) must be an integer, got 1.5"),
    ({"betas": 5}, r"betas \(--betas\) must be a list of 2 numbers, got 5"),
    ({"betas": (0.9, 1.0)}, r"betas \(--betas\) must be two numbers in \[0, 1\)"),
    ({"drop_path": 1.5}, r"drop_path \(--drop-path\) must be a number in \[0, 1\)"),
    ({"drop_path": -0.1}, r"drop_path \(--drop-path\) must be a number in \[0, 1\)"),
    ({"drop_path": float("nan")}, r"drop_path \(--drop-path\) must be a finite number"),
    ({"model_args": {"drop_path_rate": 1.5}}, r"--model-arg: VisionTransformer: "
                                              r"drop_path_rate must be a number in \[0, 1\)"),
    ({"model_args": {"qkv_bias": "maybe"}}, r"qkv_bias must be True or False, got 'maybe'"),
    ({"model_args": {"embed_dim": 0}}, r"embed_dim must be an integer >= 1"),
    ({"model_args": {"mlp_ratio": 0}}, r"mlp_ratio must be a number > 0"),
    ({"log_interval": 0}, r"log_interval \(--log-interval\) must be an integer >= 1"),
    ({"weight_decay": -0.1}, r"weight_decay \(--weight-decay\) must be >= 0"),
    ({"cutmix": -1.0}, r"cutmix \(--cutmix\) must be >= 0"),
    ({"clip_grad": 0.0}, r"clip_grad \(--clip-grad\) must be > 0"),
    ({"eval_batch_size": 0}, r"eval_batch_size \(--eval-batch-size\) must be an integer >= 1"),
    ({"augment": "autoaugment"}, r"augment \(--augment\) must be one of"),
])
def test_a_setting_out_of_range_is_refused_before_anything_is_written(tmp_path, change,
                                                                      message):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=message):
        fit(tiny_config(run, **change), log=quiet)
    assert not run.exists()
