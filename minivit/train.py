"""Training on CIFAR: the recipe, the ``fit`` loop, evaluation, checkpoints and exact resume.

    from minivit.train import TrainConfig, fit
    fit(TrainConfig(model="vit_cifar", dataset="cifar10-subset", epochs=3, out="runs/vit"))

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON object per epoch), and the
checkpoints ``last.npz`` and ``best.npz`` (model, optimizer, schedule, epoch, RNG states);
``runfolder.py`` keeps it consistent whatever kills the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import minivit
from . import nn, optim
from .autograd import backend
from .config_cli import format_value, is_recipe, option_name, setting
from .checkpoint import CheckpointError, atomic_write, load_checkpoint
from .data import CIFARLoader, load_dataset
from .amp import GradScaler, autocast
from .finite import LossWatch, NonFiniteLoss, non_finite_state
from .distributed import DataParallel
from .models import create_model, list_models
from .nn import functional as F
from .runfolder import (RunFolder, TrainingError, append_record, crash_point,
                        reconcile_metrics, show)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``fit``; the message says what the run folder holds."""


@dataclass
class TrainConfig:
    """Every knob of a run; the ``minivit train`` options are generated from these fields
    (``minivit.config_cli``), so each default is written here once. The defaults are the
    standard CIFAR recipe of docs/recipe.md: AdamW (lr 1e-3 at batch 128, wd 0.05, none on
    norms/biases/tokens), 1 warmup epoch then cosine to 0 per step, label smoothing 0.1,
    random crop (pad 4) and horizontal flip.

    A field needs a type the command line can parse (see ``config_cli``) and, for ``--help``,
    ``setting(default, "help", ...)``; ``recipe=False`` marks one a resumed run may change."""

    model: str = setting("vit_cifar", "registry name (see `minivit models`)")
    dataset: str = setting("cifar10-subset", "cifar10-subset (bundled, offline), cifar10 or "
                           "cifar100", metavar="NAME")
    data: str | None = setting(None, "a CIFAR folder or .tar.gz", aliases=("--data-dir",),
                               metavar="PATH", recipe=False,
                               default_help="the bundled subset, else the download cache")
    epochs: int = setting(10, "epochs; the schedule spans them all")
    batch_size: int = setting(128, "images per step; under mpiexec -n N the global batch, "
                              "each rank taking 1/N of it", aliases=("-b",))
    opt: str = setting("adamw", "optimizer (AdamW with decoupled weight decay, or SGD)",
                       choices=("adamw", "sgd"))
    lr: float = setting(1e-3, "peak learning rate (after warmup)")
    min_lr: float = setting(0.0, "learning rate at the end of the schedule")
    weight_decay: float = setting(0.05, "weight decay (none on norms, biases, tokens)")
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW's betas",
                                         aliases=("--opt-betas",), metavar=("B1", "B2"))
    momentum: float = setting(0.9, "SGD momentum (--opt sgd)")
    sched: str = setting("cosine", "schedule after the linear warmup: cosine or linear decay "
                         "to --min-lr, or constant", choices=("cosine", "linear", "constant"))
    warmup_epochs: float = setting(1.0, "linear warmup from 0, in epochs (fractions allowed)")
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy",
                                     aliases=("--smoothing",))
    augment: str = setting("standard", "data augmentation: none, random crop (pad 4) and flip, "
                           "or those plus RandAugment",
                           choices=("none", "standard", "randaugment"))
    mixup: float = setting(0.0, "mixup's Beta alpha; 0 = off")
    cutmix: float = setting(0.0, "CutMix's Beta alpha; 0 = off")
    clip_grad: float | None = setting(None, "clip the gradients' global norm to this",
                                      default_help="no clipping")
    drop_path: float | None = setting(None, "stochastic depth rate (the model's "
                                      "drop_path_rate)", default_help="the model's own")
    model_args: dict = setting(help="override an entry of the model's configuration, e.g. "
                               "--model-arg depth=2", default_factory=dict, flag="--model-arg",
                               aliases=("--model-kwargs",))
    init_weights: str | None = setting(None, "start from these weights: a state dict "
                                       "(.safetensors or .npz, timm's names), a checkpoint "
                                       "or a run folder",
                                       aliases=("--initial-checkpoint",), metavar="FILE",
                                       default_help="the seed's initialisation")
    seed: int = setting(0, "seed of the initialisation, the data order and augmentation")
    device: str = setting("cpu", "cpu or cuda", recipe=False)
    out: str | None = setting(None, "run folder (config, metrics, checkpoints)",
                              aliases=("--output",), metavar="DIR", recipe=False,
                              default_help="runs/MODEL-YYYYmmdd-HHMMSS on the command line; "
                                           "nothing saved from the API")
    train_limit: int | None = setting(None, "use only the first N training images",
                                      metavar="N", default_help="all")
    test_limit: int | None = setting(None, "use only the first N test images", metavar="N",
                                     recipe=False, default_help="all")
    eval_batch_size: int = setting(256, "images per evaluation step",
                                   aliases=("--validation-batch-size",), recipe=False)
    progress: bool = setting(True, "progress bars", recipe=False)
    reference: bool = setting(False, "run every op on its reference body, the plain math of its "
                              "docstring (slower; the same results to float32 rounding)",
                              recipe=False)
    sync_bn: bool = setting(False, "data parallel (mpiexec): BatchNorm statistics over all "
                            "ranks' batches, not each rank's own")
    amp: str = setting("none", "mixed precision: the matrix products (linear, attention, "
                       "conv) in bfloat16 or float16 precision, float32 master weights, and "
                       "for fp16 dynamic loss scaling (docs/gpu.md)",
                       choices=("none", "bf16", "fp16"))
    tf32: bool = setting(False, "TF32 float32 matrix products on the GPU (Ampere or newer; "
                         "about 1e-3 relative error); no effect on the CPU", recipe=False)
    log_interval: int | None = setting(None, "every N steps, one JSON line in RUN/steps.jsonl: "
                                       "loss, lr, gradient norms and update ratios per block, "
                                       "img/s (minivit/utils/diagnostics.py)", metavar="N",
                                       recipe=False)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def validate(self, source: str | None = None) -> None:
        """Raise ``TrainingError`` naming the first setting of the wrong type or out of range
        (before a run starts, so nothing is written and no epoch is spent on a setting that
        fails later). ``source``: the file the settings were read from, named in the error;
        without it the error names the command-line option."""
        def bad(name, value, expected):
            _refuse(name, value, expected, source)

        for f, hint in _field_types().items():
            expected = _type_problem(getattr(self, f), hint)
            if expected:
                bad(f, getattr(self, f), expected)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                bad(name, getattr(self, name), "an integer >= 1")
        for name in ("train_limit", "test_limit", "log_interval"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(name, v, "an integer >= 1 (or unset: " + ("no steps.jsonl)" if
                             name == "log_interval" else "all images)"))
        for name in ("lr", "min_lr", "weight_decay", "mixup", "cutmix", "momentum"):
            if not getattr(self, name) >= 0:
                bad(name, getattr(self, name), ">= 0")
        if not 0 <= self.warmup_epochs <= self.epochs:
            bad("warmup_epochs", self.warmup_epochs, f"between 0 and --epochs ({self.epochs})")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", self.label_smoothing, "in [0, 1)")
        if not all(0 <= b < 1 for b in self.betas):
            bad("betas", list(self.betas), "two numbers in [0, 1)")
        if self.clip_grad is not None and not self.clip_grad > 0:
            bad("clip_grad", self.clip_grad, "> 0 (or unset: no clipping)")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            bad("drop_path", self.drop_path, "a number in [0, 1) (or unset: the model's own)")
        if not 0 <= self.seed < 2**63:
            bad("seed", self.seed, "an integer in [0, 2**63)")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if f.name == "augment" and self.augment is None:   # the API's spelling of "none"
                continue
            if choices and getattr(self, f.name) not in choices:
                bad(f.name, getattr(self, f.name), "one of " + ", ".join(map(repr, choices)))

    @classmethod
    def from_json(cls, d: dict, source: str | None = None) -> "TrainConfig":
        """A config from its JSON form (``to_json``), checked like ``validate``: errors name
        ``source`` (the file it came from), else the command-line option."""
        if not isinstance(d, dict):
            raise TrainingError(f"{source or 'config'}: expected a JSON object of settings, "
                                f"got {_json_kind(d)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TrainingError(f"{source or 'config'}: unknown keys "
                                f"{sorted(map(str, unknown))[:5]}; expected some of "
                                f"{', '.join(sorted(names))}")
        d = dict(d)
        hints = _field_types()
        for name, value in d.items():
            expected = _type_problem(value, hints[name])
            if expected:
                _refuse(name, value, expected, source)
            if hints[name] in (float, float | None) and isinstance(value, int):
                d[name] = float(value)
        if "betas" in d:
            d["betas"] = tuple(float(b) for b in d["betas"])
        cfg = cls(**d)
        cfg.validate(source)
        return cfg


def _refuse(name: str, value, expected: str, source: str | None):
    """The one-line error for a setting: naming the file it came from, else its option."""
    where = f"{source}: {name}" if source else f"{name} ({option_name(FIELDS[name])})"
    text = repr(value)
    raise TrainingError(f"{where} must be {expected}, got "
                        f"{text if len(text) <= 60 else text[:57] + '...'}")


def _field_types() -> dict:
    return typing.get_type_hints(TrainConfig)


def _json_kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                       type(value).__name__)


def _type_problem(value, hint) -> str | None:
    """What ``value`` should be for the type ``hint`` of a ``TrainConfig`` field, or None if
    it is that already (bools are not numbers; ints are fine where a float is expected)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = _type_problem(value, next(a for a in args if a is not type(None)))
        return inner and f"{inner} (or null/unset)"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok and math.isfinite(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if hint is dict or typing.get_origin(hint) is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        return None if ok else "an object of NAME: VALUE entries"
    if typing.get_origin(hint) is tuple:
        ok = (isinstance(value, (list, tuple)) and len(value) == len(args)
              and all(_type_problem(v, a) is None for v, a in zip(value, args)))
        return None if ok else f"a list of {len(args)} numbers"
    return None


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def resume_conflicts(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """The recipe fields in which ``cfg`` differs from a run's saved config, as
    ``"--lr 5.0 (the run's: 0.001)"``; a resumed run must keep its recipe."""
    out = []
    for f in dataclasses.fields(TrainConfig):
        new, old = getattr(cfg, f.name), getattr(saved, f.name)
        if is_recipe(f) and new != old:
            out.append(f"{option_name(f)} {format_value(new)} (the run's: {format_value(old)})")
    return out


# --- pieces of a run -----------------------------------------------------------------------

def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    if cfg.model not in list_models():
        raise TrainingError(f"unknown model {cfg.model!r}; known models: "
                            f"{', '.join(list_models())}")
    model_args = dict(cfg.model_args)
    if cfg.drop_path is not None:
        model_args["drop_path_rate"] = cfg.drop_path
    try:
        return create_model(cfg.model, num_classes=num_classes, **model_args)
    except TypeError as exc:  # an unknown configuration entry
        raise TrainingError(f"model_args {model_args} do not fit {cfg.model}: {exc}") from None
    except (ValueError, ZeroDivisionError) as exc:  # an entry out of range
        raise TrainingError(f"--model-arg: {exc}") from None


def _state_dict_problems(exc: Exception) -> str:
    """``load_state_dict``'s list of problems as one line (the CLI prints errors as they are),
    at most 300 characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = "; ".join(lines[1:] or lines)
    return detail if len(detail) <= 300 else detail[:297] + "..."


def load_init_weights(model: nn.Module, path: str | os.PathLike, model_name: str) -> None:
    """Copy starting weights into ``model``: a state dict (parameter name -> array, timm's
    names) as ``.safetensors`` or plain ``.npz``, a minivit checkpoint, or a run folder."""
    from .weights import load_state_dict_file  # noqa: PLC0415

    path = Path(path)
    file = path / "last.npz" if path.is_dir() else path
    if not file.is_file():
        raise TrainingError(f"--init-weights {file}: no such file")
    try:
        state = load_state_dict_file(file)
    except CheckpointError as exc:
        raise TrainingError(f"--init-weights {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"--init-weights {file} does not fit model {model_name}: "
                            f"{_state_dict_problems(exc)}") from None


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> optim.Optimizer:
    groups = optim.param_groups_weight_decay(model, cfg.weight_decay)
    if cfg.opt == "sgd":
        return optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_schedule(opt: optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Stepped per batch: linear warmup from 0 over ``warmup_epochs``, then ``cfg.sched``:
    cosine or linear decay to ``min_lr`` at the last step, or constant."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    total = cfg.epochs * steps_per_epoch
    if cfg.sched == "cosine":
        return optim.lr_scheduler.WarmupCosineLR(opt, warmup_steps=warmup, total_steps=total,
                                                 min_lr=cfg.min_lr)
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if cfg.sched == "constant" or total <= warmup:
            return 1.0
        return floor + (1.0 - floor) * max(0.0, 1.0 - (step - warmup) / (total - warmup))

    return optim.lr_scheduler.LambdaLR(opt, factor)


def _loaders(cfg: TrainConfig):
    ds = load_dataset(cfg.dataset, cfg.data, progress=cfg.progress)
    x_tr, y_tr, x_te, y_te = ds.x_train, ds.y_train, ds.x_test, ds.y_test
    if cfg.train_limit:
        x_tr, y_tr = x_tr[:cfg.train_limit], y_tr[:cfg.train_limit]
    if cfg.test_limit:
        x_te, y_te = x_te[:cfg.test_limit], y_te[:cfg.test_limit]
    augment = None if cfg.augment in (None, "none") else cfg.augment
    # with --device cuda the images live on the GPU and batches are made there (data/gpu.py)
    device = cfg.device.split(":")[0]
    train = CIFARLoader(x_tr, y_tr, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                        seed=cfg.seed, augment=augment, mixup=cfg.mixup, cutmix=cfg.cutmix,
                        num_classes=ds.num_classes, mean=ds.mean, std=ds.std, device=device)
    test = CIFARLoader(x_te, y_te, batch_size=cfg.eval_batch_size, shuffle=False,
                       augment=None, num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                       device=device)
    return ds, train, test


def _to_device(array: np.ndarray, device: str) -> minivit.Tensor:
    return minivit.Tensor(array if device == "cpu" else backend.to_device(array, device))


class EpochStats:
    """The training loss and accuracy of an epoch, summed where the logits are: on the GPU
    each step adds to two device scalars (a few kernel launches, no host synchronisation),
    and ``read`` fetches both in one copy, every ``--log-interval`` steps and at the end of
    the epoch. A non-finite loss makes the sum non-finite, so ``read`` also finds it."""

    def __init__(self):
        self.loss_sum = self.correct = None
        self.seen = 0

    def add(self, loss, logits, labels) -> None:
        """``loss``: the batch's mean loss (0-d array); ``labels``: class indices (B,) or
        probabilities (B, C), on the logits' device."""
        if labels.ndim == 2:
            labels = labels.argmax(axis=1)
        n = labels.shape[0]
        batch_loss = loss * n
        hits = (logits.argmax(axis=1) == labels).sum()
        self.loss_sum = batch_loss if self.loss_sum is None else self.loss_sum + batch_loss
        self.correct = hits if self.correct is None else self.correct + hits
        self.seen += n

    def read(self) -> tuple[float, float]:
        """(loss sum, correct count) so far: one device-to-host copy."""
        if self.loss_sum is None:
            return 0.0, 0.0
        xp = backend.get_array_module(self.loss_sum)
        both = backend.as_numpy(xp.stack([self.loss_sum.astype(np.float64),
                                          self.correct.astype(np.float64)]))
        return float(both[0]), float(both[1])


def evaluate(model: nn.Module, loader, device: str = "cpu", num_classes: int | None = None,
             progress: bool = False, dp: DataParallel | None = None) -> dict:
    """Loss, accuracy, top-5 accuracy (``top5``: the true class among the five highest
    logits), confusion matrix (rows: true class, columns: predicted) and per-class accuracy
    (``per_class_acc``: the confusion matrix's diagonal over its row sums) on a loader
    (``dp``: each rank evaluated its shard; the totals are summed over the ranks)."""
    was_training = model.training
    model.eval()
    n, loss_sum, correct, top5 = 0, 0.0, 0, 0
    k = num_classes or loader.num_classes
    confusion = np.zeros((k, k), dtype=np.int64)
    with minivit.no_grad(), tqdm(total=len(loader.x), desc="eval", unit="img", leave=False,
                                  dynamic_ncols=True, disable=None if progress else True) as bar:
        for xb, yb in loader:
            if len(yb) == 0:   # a rank's empty share of a batch smaller than the ranks
                continue
            logits = model(_to_device(xb, device))
            loss = F.cross_entropy(logits, _to_device(yb, device))
            yb = backend.as_numpy(yb)   # labels of a GPU-made batch are on the GPU
            scores = backend.as_numpy(logits.data)
            pred = scores.argmax(axis=1)
            best5 = np.argpartition(-scores, min(5, k) - 1, axis=1)[:, :5]
            top5 += int((best5 == yb[:, None]).any(axis=1).sum())
            loss_sum += float(loss.item()) * len(yb)
            correct += int((pred == yb).sum())
            np.add.at(confusion, (yb, pred), 1)
            n += len(yb)
            bar.update(len(yb))
    if dp is not None:
        loss_sum, correct, top5, n, confusion = dp.sum(loss_sum, correct, top5, n, confusion)
        correct, top5, n = int(correct), int(top5), int(n)
        confusion = confusion.astype(np.int64)
    model.train(was_training)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "top5": top5 / max(n, 1),
            "confusion": confusion, "per_class_acc": per_class}


# --- the run folder ------------------------------------------------------------------------

def _read_stats(stats: EpochStats, bar, step: int, epoch: int, out) -> None:
    """The epoch's loss and accuracy so far into the progress bar; stop on a NaN or inf."""
    loss_sum, correct = stats.read()
    loss = loss_sum / max(stats.seen, 1)
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss became {loss} at step {step} (epoch {epoch + 1}); stopped. "
            f"The last good checkpoint is kept"
            f"{' in ' + str(out / 'last.npz') if out else ''}; try a lower --lr")
    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / max(stats.seen, 1):.1%}",
                    refresh=False)


def read_config(run: Path) -> TrainConfig:
    """The checked ``TrainConfig`` of a run folder's ``config.json``."""
    file = run / "config.json"
    try:
        text = file.read_bytes().decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        if run.is_dir() and (run / ".lock").exists():
            raise TrainingError(f"--resume {show(run)}: no config.json there (its run was "
                                f"interrupted before writing it: start it again with --out "
                                f"{show(run)})") from None
        raise TrainingError(f"--resume {show(run)}: no config.json there (not a run folder)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{show(file)}: cannot be read ({exc})") from None
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise TrainingError(f"{show(file)}: not valid JSON ({exc})") from None
    return TrainConfig.from_json(d, source=show(file))


def _checkpoint_tree(model, opt, sched, loader, epoch, best_acc, cfg, scaler=None) -> dict:
    tree = {
        "format": "minivit-checkpoint-1",
        "model_name": cfg.model,
        "config": cfg.to_json(),
        "epoch": epoch,  # epochs completed
        "best_acc": best_acc,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(),
        "loader": loader.state_dict(),
        "rng": backend.get_rng_state(),
    }
    if scaler is not None and scaler.is_enabled():   # --amp fp16: the loss scale, good steps
        tree["scaler"] = scaler.state_dict()
    return tree


_CHECKPOINT_ENTRIES = {"model_name": (str, "a string"), "config": (dict, "an object"),
                       "epoch": (int, "an integer"), "best_acc": ((int, float), "a number"),
                       "model": (dict, "an object"), "optimizer": (dict, "an object"),
                       "schedule": (dict, "an object"), "loader": (dict, "an object"),
                       "rng": (dict, "an object")}


def _check_checkpoint(ckpt: dict, file: Path) -> None:
    """Type and range of every entry ``fit`` and ``eval`` use: a damaged or crafted
    checkpoint is a one-line ``CheckpointError`` naming the file and the entry."""
    if ckpt.get("format") != "minivit-checkpoint-1":
        raise CheckpointError(f"{show(file)}: not a minivit training checkpoint")
    for key, (kind, expected) in _CHECKPOINT_ENTRIES.items():
        if key not in ckpt:
            raise CheckpointError(f"{show(file)}: the checkpoint has no {key!r} entry "
                                  f"(a damaged or foreign file)")
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise CheckpointError(f"{show(file)}: its {key!r} entry must be {expected}, "
                                  f"got {_json_kind(ckpt[key])}")
    try:
        cfg = TrainConfig.from_json(ckpt["config"], source=f"{show(file)} (its config)")
    except TrainingError as exc:
        raise CheckpointError(str(exc)) from None
    if not 0 <= ckpt["epoch"] <= cfg.epochs:
        raise CheckpointError(f"{show(file)}: its epoch must be in [0, {cfg.epochs}], got "
                              f"{ckpt['epoch']}")
    if not -1 <= ckpt["best_acc"] <= 1:
        raise CheckpointError(f"{show(file)}: its best_acc must be in [-1, 1], got "
                              f"{ckpt['best_acc']}")
    for name, value in ckpt["model"].items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{show(file)}: its model entry {name!r} is not an array")


def load_run_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                        model_name: str | None = None) -> dict:
    """Load ``last.npz`` of a run folder, or a checkpoint file; check it fits the model."""
    path = Path(path)
    file = path / "last.npz" if path.is_dir() else path
    ckpt = load_checkpoint(file)
    _check_checkpoint(ckpt, file)
    if model_name is not None and ckpt["model_name"] != model_name:
        raise CheckpointError(f"{show(file)} is a checkpoint of model {ckpt['model_name']!r}, "
                              f"not {model_name!r}")
    if model is not None:
        try:
            model.load_state_dict(ckpt["model"], strict=True)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{show(file)} does not fit model {model_name or ''} (another "
                                  f"model or configuration?): {_state_dict_problems(exc)}") from None
    return ckpt


def _restore(ckpt: dict, file: Path, opt, sched, loader, scaler=None) -> None:
    """Optimizer, schedule, data order, RNG and (--amp fp16) loss scaler from a checkpoint,
    each refused by name if it does not fit (a checkpoint edited by hand or crafted)."""
    parts = (("optimizer", opt.load_state_dict), ("schedule", sched.load_state_dict),
             ("loader", loader.load_state_dict), ("rng", backend.set_rng_state))
    if scaler is not None and scaler.is_enabled():
        if "scaler" not in ckpt:
            raise CheckpointError(f"{show(file)}: the checkpoint has no 'scaler' entry (the "
                                  f"loss scale of an --amp fp16 run)")
        parts += (("scaler", scaler.load_state_dict),)
    for name, load in parts:
        try:
            load(ckpt[name])
        except Exception as exc:  # noqa: BLE001 - any failure here is the file's fault
            text = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{show(file)}: its {name} state does not fit this run "
                                  f"({type(exc).__name__}: {text})") from None


# --- the loop --------------------------------------------------------------------------------

def fit(cfg: TrainConfig, resume: str | None = None, log=print,
        stop_after_epochs: int | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset``; return the final metrics.

    ``resume`` is a run folder: the run continues exactly where its ``last.npz`` left off
    (on the CPU the weights end bit-for-bit where an uninterrupted run would). ``cfg`` must
    then hold the run's recipe (``TrainConfig.from_json`` of its ``config.json``); a recipe
    field that differs is an error naming it; the fields with ``recipe=False`` (device, data
    folder, progress bars, ...) are taken from ``cfg``.
    ``stop_after_epochs``: stop once this many epochs are done (counted from the start of the
    run), as if interrupted; the schedule still spans ``cfg.epochs``, so a later ``resume``
    finishes the very run an uninterrupted ``fit`` would have made.

    The run folder (``cfg.out``) is held with a lock for the whole call; see ``runfolder``
    for what a kill at any moment leaves behind.
    """
    if stop_after_epochs is not None and (type(stop_after_epochs) is not int
                                          or stop_after_epochs < 1):
        raise TrainingError(f"--stop-after-epochs must be an integer >= 1, got "
                            f"{stop_after_epochs!r}")
    if resume is not None:
        run = Path(resume)
        saved = read_config(run)
        conflicts = resume_conflicts(saved, cfg)
        if conflicts:
            # the learning-rate schedule spans the saved number of epochs: a resumed run
            # finishes that very run; another recipe (or training longer) is a new run
            raise TrainingError(f"--resume {show(run)}: a resumed run keeps its recipe, but "
                                f"{'; '.join(conflicts)}; omit these options, or start a new "
                                f"run")
        for f in dataclasses.fields(TrainConfig):   # device, data folder, progress bars...
            if not is_recipe(f) and f.name != "out":
                setattr(saved, f.name, getattr(cfg, f.name))
        cfg, cfg.out = saved, str(run)
    # reference=True: every op on its reference body (minivit.reference_mode)
    with minivit.reference_mode() if cfg.reference else contextlib.nullcontext():
        return _fit(cfg, resume, log, stop_after_epochs)


def _fit(cfg: TrainConfig, resume: str | None, log, stop_after_epochs: int | None) -> dict:
    """The run of ``fit`` once ``cfg`` is settled: the run folder held from start to end."""
    cfg.validate()
    device = backend.check_device(cfg.device)
    if device == "cuda":
        backend.set_tf32(cfg.tf32)
    # --- data parallel (mpiexec -n N): rank 0 alone logs and writes; see minivit.distributed
    dp = DataParallel.setup(log)
    log, cfg.progress = dp.log, cfg.progress and dp.is_main
    dp.select_device(device)
    # rank 0 holds the run folder (locked) from start to end; every rank learns what it holds
    folder = RunFolder(cfg.out, log) if cfg.out is not None and dp.is_main else None
    state = dp.from_main(lambda: folder.open(resume is not None).state if folder is not None
                         else "resume" if resume is not None else "new")
    try:
        metrics = _train(cfg, device, dp, folder, state, log, stop_after_epochs)
    except KeyboardInterrupt:
        if folder is not None:
            folder.close(failed=True)
        raise RunInterrupted("" if folder is None else folder.holds()) from None
    except BaseException:
        if folder is not None:
            folder.close(failed=True)
        raise
    if folder is not None:
        folder.close()
    return metrics


def _train(cfg: TrainConfig, device: str, dp: DataParallel, folder: RunFolder | None,
           state: str, log, stop_after_epochs: int | None) -> dict:
    """The epochs of a run; ``state``: what its folder holds (``RunFolder.state``)."""
    out = None if folder is None else folder.path   # rank 0 only
    resume = Path(cfg.out) / "last.npz" if state == "resume" else None
    minivit.manual_seed(cfg.seed)
    ds, train_loader, test_loader = dp.main_first(_loaders, cfg)   # rank 0 downloads first
    train_loader, test_loader = dp.shard(train_loader, test_loader)
    # ---
    model = build_model(cfg, ds.num_classes)
    if cfg.init_weights and resume is None:  # a resumed run takes its weights from last.npz
        load_init_weights(model, cfg.init_weights, cfg.model)
    model = model.to(device)
    opt = build_optimizer(model, cfg)
    sched = build_schedule(opt, cfg, len(train_loader))
    # --amp: the products in bf16/fp16 precision inside autocast; fp16 scales the loss
    precision = (lambda: autocast(cfg.amp)) if cfg.amp != "none" else contextlib.nullcontext
    scaler = GradScaler(enabled=cfg.amp == "fp16")
    start_epoch, best_acc = 0, -1.0
    if resume is not None:
        ckpt = load_run_checkpoint(resume, model, cfg.model)
        _restore(ckpt, resume, opt, sched, train_loader, scaler)
        start_epoch, best_acc = int(ckpt["epoch"]), float(ckpt["best_acc"])
        if folder is not None:
            folder.committed_epoch = start_epoch
        done = [] if folder is None else reconcile_metrics(folder.metrics, start_epoch, log)
        if start_epoch >= cfg.epochs:
            log(f"{show(cfg.out)}: all {cfg.epochs} epochs of this run are done already; "
                f"nothing to train (evaluate it with: minivit eval {show(cfg.out)})")
            return {**(done[-1] if done else {"epoch": start_epoch}), "model": model}
        log(f"resumed {show(cfg.out)} after epoch {start_epoch}")
    dp.wrap(model, device, cfg.sync_bn)   # rank 0's weights to all; gradient averaging hooks
    if folder is not None and state == "new":
        text = json.dumps(cfg.to_json(), indent=2).encode()
        atomic_write(folder.config, lambda f: f.write(text))

    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.model}: {n_params:,} parameters; {cfg.dataset}: {len(train_loader.x)} train / "
        f"{len(test_loader.x)} test images; {cfg.epochs} epochs on {device}")
    metrics: dict = {}
    step = start_epoch * len(train_loader)
    steps_log = None
    if cfg.log_interval and out is not None:
        from .utils.diagnostics import StepLog

        steps_log = StepLog(model, out / "steps.jsonl", cfg.log_interval, len(train_loader), step)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        dp.start_epoch(cfg.seed, epoch)
        t0 = time.perf_counter()
        stats = EpochStats()
        # the loss and accuracy (and the loss's finiteness) are read every step on the CPU,
        # where that costs nothing, and on the GPU every --log-interval steps (50 if unset)
        # and at the epoch's end: a read waits for the GPU, so a step itself never does
        read_every = 1 if device == "cpu" else (cfg.log_interval or 50)
        watch = LossWatch(read_every)   # each step's loss, read (and checked) with the stats
        # tqdm draws on a terminal only (disable=None); the epoch's summary line follows
        with tqdm(total=len(train_loader.x), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="img",
                  leave=False, dynamic_ncols=True, disable=None if cfg.progress else True) as bar:
            for i, (xb, yb) in enumerate(train_loader):
                with precision():
                    logits = model(_to_device(xb, device))
                    target = _to_device(yb, device)
                    loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
                stats.add(loss.data, logits.data, target.data)
                watch.add(loss.data, step)   # kept on the device, like the stats
                if (i + 1) % read_every == 0 or i + 1 == len(train_loader):
                    _check_loss(watch, folder, epoch)   # names the first non-finite step
                    _read_stats(stats, bar, step, epoch, out)
                opt.zero_grad()
                # loss.backward() (of loss * scale with fp16); over N ranks: averaged
                dp.backward(scaler.scale(loss), train_loader)
                scaler.unscale_(opt)   # fp16: the true gradients, for the log and clipping
                if steps_log is not None:
                    logged = (step + 1) % steps_log.interval == 0   # the loss is read only then
                    steps_log.after_backward(step, float(loss.item()) if logged else math.nan,
                                             opt.param_groups[0]["lr"])
                if cfg.clip_grad:
                    optim.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(opt)   # opt.step(); fp16: undone on the GPU if a gradient is inf/NaN
                scaler.update()
                sched.step()
                step += 1
                crash_point("step")
                if steps_log is not None:
                    steps_log.after_step(step, len(xb))
                bar.update(dp.images_in_step(train_loader, len(yb)))
        train_time = time.perf_counter() - t0
        (loss_sum, correct), seen = stats.read(), stats.seen
        loss_sum, correct, seen = dp.sum(loss_sum, correct, seen)   # over all ranks
        dp.before_eval(model)   # rank 0's BatchNorm running statistics on every rank
        # evaluation sums over the ranks: past it, every rank has finished the epoch, so the
        # checkpoint below (rank 0) is only written once all of them have
        # in float32 with --amp too: the master weights' accuracy, the same as `minivit eval`
        ev = evaluate(model, test_loader, device, dp=dp if dp.active else None)
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "test_loss": ev["loss"], "test_acc": ev["acc"], "test_top5": ev["top5"],
                   "lr": float(sched.get_last_lr()[0]), "epoch_time_s": train_time,
                   "train_imgs_per_s": seen / train_time, "time_s": time.perf_counter() - t0}
        log(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {metrics['train_loss']:.4f}  "
            f"train acc {100 * metrics['train_acc']:.2f}%  test loss {ev['loss']:.4f}  "
            f"test acc {100 * ev['acc']:.2f}%  lr {metrics['lr']:.2e}  "
            f"time {train_time:.1f}s ({metrics['train_imgs_per_s']:.0f} img/s)")
        bad = non_finite_state(model, opt, ev["loss"])
        if bad is not None:
            where = "" if folder is None else f"; {folder.holds()}"
            raise TrainingError(f"epoch {epoch + 1} ended with a non-finite {bad}; stopped "
                                f"without saving it{where}; try a lower --lr")
        if out is not None:
            crash_point("epoch-end")
            # metrics, then best.npz, then last.npz, the commit point: a resume drops metric
            # lines past last.npz's epoch, so a kill anywhere in between loses nothing
            append_record(folder.metrics, metrics)
            best = ev["acc"] > best_acc
            best_acc = max(best_acc, ev["acc"])
            tree = _checkpoint_tree(model, opt, sched, train_loader, epoch + 1, best_acc, cfg,
                                    scaler)
            folder.commit(tree, improved=best)
        if stop_after_epochs is not None and stop_after_epochs <= epoch + 1 < cfg.epochs:
            log(f"stopped after epoch {epoch + 1} of {cfg.epochs} as asked"
                f"{'; continue with --resume ' + show(out) if out else ''}")
            break
    metrics["model"] = model
    return metrics


def _check_loss(watch: LossWatch, folder: RunFolder | None, epoch: int) -> None:
    """Read the losses waiting on the device; stop the run if one is NaN or inf. (Under
    mpiexec the error ends every rank: see ``cli.main``.)"""
    try:
        watch.check()
    except NonFiniteLoss as exc:
        where = "Nothing was saved" if folder is None else folder.holds()
        where = where[0].upper() + where[1:]
        raise TrainingError(f"{exc} (epoch {epoch + 1}); stopped. {where}; try a lower "
                            f"--lr") from None
