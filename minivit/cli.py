"""The ``minivit`` command (also ``python -m minivit``): train, eval, export, plot, bench,
gradcheck.

Errors a user can fix (a bad name, a missing file, no GPU) print one line and exit with 2;
any other exception prints one line too and exits with 1. Neither ends in a traceback: pass
``--debug`` (anywhere on the command line) or set MINIVIT_DEBUG=1 to see one.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .runfolder import show

from .plot import add_plot_parser
from .utils.commands import COMMANDS as INSIDE_COMMANDS
from .utils.commands import add_parsers as add_inside_parsers

def _add_train(sub):
    from .config_cli import add_config_arguments
    from .train import TrainConfig

    p = sub.add_parser(
        "train", help="train a model on CIFAR",
        description="Train a model on CIFAR with the recipe of docs/recipe.md. Every option "
                    "is a field of minivit.train.TrainConfig; precedence: options typed here, "
                    "then -c FILE, then the defaults shown. timm's train.py spellings are "
                    "accepted (-b, --opt, --sched, --smoothing, --output, --model-kwargs, "
                    "--initial-checkpoint).")
    p.add_argument("-c", "--config", default=None, metavar="FILE",
                   help="read settings from a JSON or TOML file (field names as keys, e.g. a "
                        "run's config.json); options typed on the command line win")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue a run folder with its saved recipe (options that would "
                        "change the recipe are an error; --device, --data, --no-progress may "
                        "change)")
    p.add_argument("--stop-after-epochs", type=int, default=None, metavar="N",
                   help="stop once N epochs are done (the schedule still spans --epochs); "
                        "continue later with --resume")
    p.add_argument("--pretrained", action="store_true",
                   help="not supported: minivit downloads no weights (see --initial-checkpoint)")
    add_config_arguments(p.add_argument_group(
        "settings of the run (the fields of minivit.train.TrainConfig)"), TrainConfig)


def default_run_folder(model: str, root: str | Path = "runs") -> str:
    """``runs/MODEL-YYYYmmdd-HHMMSS`` (``-2``, ``-3``... appended if that folder exists)."""
    import time

    base = Path(root) / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return str(path)


def train_config_from_args(args):
    """The TrainConfig of ``minivit train``: typed options over ``-c FILE`` over the defaults
    (or, with ``--resume``, over the run's saved config)."""
    from .config_cli import given_config_values, load_config_file
    from .train import TrainConfig, TrainingError, read_config

    if args.pretrained:
        raise TrainingError("--pretrained: minivit downloads no weights; download them "
                            "yourself (e.g. timm's model.safetensors from the Hugging Face Hub, "
                            "whose names minivit uses) and pass --initial-checkpoint FILE")
    given = given_config_values(args, TrainConfig)
    if args.config:
        from_file = load_config_file(args.config, TrainConfig)
        if "model_args" in given and "model_args" in from_file:   # merge, the typed ones win
            given["model_args"] = {**from_file["model_args"], **given["model_args"]}
        given = {**from_file, **given}
    if args.resume is not None:
        run = Path(args.resume)
        base = read_config(run).to_json()   # checked, errors naming the file
        out = given.pop("out", None)
        if out is not None and Path(out).resolve() != run.resolve():
            raise TrainingError(f"--resume {show(run)} continues in {show(run)}; --out "
                                f"{show(out)} cannot be used with it (start a new run to write "
                                f"elsewhere)")
    else:
        base = {}
    return TrainConfig.from_json({**base, **given})


def _train(args) -> int:
    from .distributed import get_world
    from .train import fit

    cfg = train_config_from_args(args)
    main_rank = get_world().is_main   # under mpiexec, rank 0 reports (and names the folder)
    if args.resume is None and cfg.out is None:
        cfg.out = default_run_folder(cfg.model)
        if main_rank:
            print(f"run folder: {cfg.out} (choose another with --out)")
    m = fit(cfg, resume=args.resume, stop_after_epochs=args.stop_after_epochs)
    if "test_acc" in m and main_rank:
        print(f"final test accuracy {100 * m['test_acc']:.2f}%")
    return 0


def _parse_model_arg(text: str) -> tuple[str, object]:
    """``"depth=2"`` -> ``("depth", 2)``; a value that is no Python literal stays a string."""
    from .config_cli import parse_key_value

    return parse_key_value(text)


def _is_plain_state_dict(file: Path) -> bool:
    """Whether ``file`` is a readable ``.npz`` of arrays that is not a training checkpoint."""
    from .checkpoint import CheckpointError, is_checkpoint, read_npz

    try:
        return file.suffix == ".npz" and file.is_file() and not is_checkpoint(read_npz(file, ""))
    except CheckpointError:
        return False   # load_run_checkpoint says what is wrong with it


def _eval(args) -> int:
    from .data import NUM_CLASSES, DatasetError, load_dataset
    from .models import create_model
    from .train import TrainConfig, load_run_checkpoint

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be an integer >= 1 (or omitted: all images), got "
                         f"{args.limit}")
    path = Path(args.run)
    file = path / ("best.npz" if args.best else "last.npz") if path.is_dir() else path
    if file.suffix == ".safetensors" or _is_plain_state_dict(file):
        return _eval_weights(args, file)
    ckpt = load_run_checkpoint(file)
    cfg = TrainConfig.from_json(ckpt["config"])
    name = args.dataset or cfg.dataset
    trained, asked = NUM_CLASSES.get(cfg.dataset), NUM_CLASSES.get(name)
    if trained and asked and trained != asked:   # before any download or read
        raise DatasetError(f"{file} is a {cfg.model} trained on {cfg.dataset} ({trained} "
                           f"classes); it cannot be evaluated on {name} ({asked} classes)")
    ds = load_dataset(name, args.data if args.data else cfg.data)
    model = create_model(cfg.model, num_classes=ds.num_classes, **cfg.model_args)
    load_run_checkpoint(file, model, cfg.model)
    return _report(args, model, ds, f"{cfg.model} from {file} (epoch {ckpt['epoch']}) on {name}")


def _eval_weights(args, file: Path) -> int:
    """``eval`` of a plain state dict (``.safetensors`` or ``.npz``): the model comes from
    ``--model`` or the file's metadata (``minivit export`` records it)."""
    import json

    from .data import load_dataset
    from .models import create_model
    from .weights import read_metadata

    meta = read_metadata(file)
    model_name = args.model or meta.get("model")
    if not model_name:
        raise ValueError(f"{file} is a plain state dict without a model name; name its model "
                         f"with --model (e.g. --model vit_cifar)")
    name = args.dataset or meta.get("dataset") or "cifar10"
    ds = load_dataset(name, args.data)
    model_args = json.loads(meta.get("model_args", "{}")) if model_name == meta.get("model") else {}
    model_args.update(_parse_model_arg(a) for a in args.model_arg)
    model = create_model(model_name, num_classes=ds.num_classes, checkpoint_path=file,
                         **model_args)
    return _report(args, model, ds, f"{model_name} from {file} on {name}")


def _report(args, model, ds, label: str) -> int:
    """Evaluate ``model`` on ``ds`` as ``eval``'s flags say; print accuracy and confusion."""
    from .data import CIFARLoader
    from .train import evaluate

    model.to(args.device)
    x, y = (ds.x_test, ds.y_test) if not args.train else (ds.x_train, ds.y_train)
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    loader = CIFARLoader(x, y, batch_size=256, shuffle=False, num_classes=ds.num_classes,
                         mean=ds.mean, std=ds.std)
    ev = evaluate(model, loader, args.device, ds.num_classes, progress=True)
    print(f"{label} {'train' if args.train else 'test'} ({len(x)} images): accuracy "
          f"{100 * ev['acc']:.2f}%, loss {ev['loss']:.4f}, "
          f"top-5 accuracy {100 * ev['top5']:.2f}%")
    print(format_confusion(ev["confusion"], ds.class_names))
    print(format_per_class(ev["confusion"], ds.class_names))
    return 0


def _export(args) -> int:
    """Write a run's model weights as a state dict: ``.safetensors`` (timm's format) or ``.npz``."""
    import json

    from .train import load_run_checkpoint
    from .weights import save_state_dict_file

    path = Path(args.run)
    file = path / ("best.npz" if args.best else "last.npz") if path.is_dir() else path
    ckpt = load_run_checkpoint(file)
    cfg = ckpt["config"]
    out = Path(args.out) if args.out else file.with_name(file.stem + ".safetensors")
    meta = {"model": ckpt["model_name"], "dataset": cfg.get("dataset", ""),
            "model_args": json.dumps(cfg.get("model_args", {})), "epoch": str(ckpt["epoch"])}
    save_state_dict_file(out, ckpt["model"], metadata=meta)
    print(f"wrote {out} ({ckpt['model_name']}, {len(ckpt['model'])} tensors, epoch "
          f"{ckpt['epoch']})")
    return 0


def format_confusion(cm, names) -> str:
    """The confusion matrix as text: rows are true classes, columns predictions."""
    short = [str(n)[:5] for n in names]
    width = max(5, len(str(int(cm.max()))) + 1)
    head = "true\\pred " + " ".join(f"{s:>{width}}" for s in short)
    rows = [f"{short[i]:>9} " + " ".join(f"{int(v):>{width}}" for v in row)
            for i, row in enumerate(cm)]
    return "\n".join([head] + rows)


def format_per_class(cm, names) -> str:
    """Accuracy of each true class (the confusion matrix's diagonal over its row sums)."""
    lines = ["per-class accuracy:"]
    for name, row, hit in zip(names, cm, cm.diagonal()):
        n = int(row.sum())
        acc = f"{100 * hit / n:6.2f}%" if n else "     --"
        lines.append(f"  {str(name):>12} {acc}  ({int(hit)}/{n})")
    return "\n".join(lines)


def _plot(args) -> int:
    from .plot import plot_command

    return plot_command(args)


def _models(args) -> int:
    from .models import create_model, list_models

    for name in list_models():
        if args.count:
            n = create_model(name).num_parameters()   # its own class count: 10 for CIFAR
            print(f"{name:28s} {n:>12,d}")
        else:
            print(name)
    return 0


def _bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def _gradcheck(args) -> int:
    from .gradcheck_cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="minivit", description="a from-scratch ViT engine")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also MINIVIT_DEBUG=1; "
                             "accepted anywhere on the command line)")
    parser.add_argument("--version", action="version", version=f"minivit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("eval", help="accuracy, top-5 accuracy, confusion matrix and per-class "
                                       "accuracy of a run or checkpoint")
    p.add_argument("run", help="a run folder (uses last.npz), a .npz checkpoint, or a state "
                               "dict (.safetensors or .npz)")
    p.add_argument("--best", action="store_true", help="use best.npz of the run folder")
    p.add_argument("--dataset", default=None,
                   help="default: the run's dataset (a state dict: the one in its metadata, "
                        "else cifar10)")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", action="store_true", help="evaluate on the training split")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--model", default=None,
                   help="the model of a plain state dict (.safetensors or .npz); default: the "
                        "name in the file's metadata")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="with a state dict: an entry of the model's configuration, e.g. "
                        "depth=2 (repeatable; over the file's metadata)")
    p = sub.add_parser("export", help="write a run's weights as .safetensors (or .npz)")
    p.add_argument("run", help="a run folder (uses last.npz) or a .npz checkpoint")
    p.add_argument("--best", action="store_true", help="use best.npz of the run folder")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="model.safetensors or model.npz (default: beside the checkpoint, "
                        "last.safetensors)")
    add_plot_parser(sub)
    add_inside_parsers(sub)   # graph, summary, attention (minivit/utils/commands.py)
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--count", action="store_true", help="with parameter counts")
    p = sub.add_parser("bench", help="throughput, memory and utilisation of the models")
    p.add_argument("--model", nargs="*", default=None, metavar="NAME",
                   help="models to measure, each in its own process and at its own input size "
                        "(e.g. 224x224 for vit_tiny_patch16_224; default: the five CIFAR models)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    p.add_argument("--steps", type=int, default=10,
                   help="timed steps after warm-up; the figures are their median (default 10)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the rows to OUT as JSON")
    p = sub.add_parser("gradcheck", help="check a layer's or model's gradients numerically")
    p.add_argument("target", nargs="?", default="layers", help="'layers' or a model name")
    return parser


COMMANDS = {"train": _train, "eval": _eval, "export": _export, "plot": _plot, "models": _models,
            "bench": _bench, "gradcheck": _gradcheck, **INSIDE_COMMANDS}


def _one_line(exc: BaseException) -> str:
    """An exception as one printable line; an OSError names its file first."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{show(exc.filename)}: {exc.strerror}"
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _printable_streams() -> None:
    """Print what cannot be encoded (a non-UTF-8 file name) as escapes instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


def main(argv: list[str] | None = None) -> int:
    from . import _sigint_default, runtime

    if argv is None:                 # the command itself (not a call from Python code)
        runtime.reexec_with_blas_env()   # OpenBLAS reads its variable when NumPy loads
    _sigint_default()  # loaded: from here Ctrl-C is a KeyboardInterrupt, handled below
    _printable_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MINIVIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    runtime.tune()                   # allocator and BLAS settings: minivit/runtime.py
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .train import TrainingError

    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        from .distributed import world  # noqa: PLC0415  (mpiexec interrupts every rank)

        detail = _one_line(exc) if str(exc) else ""
        if not world.rank_prefix():
            print(f"minivit {args.command}: interrupted" + (f"; {detail}" if detail else ""),
                  file=sys.stderr)
        return 130
    except (TrainingError, DatasetError, CheckpointError, OSError, RuntimeError,
            ValueError) as exc:
        return _report_error(args.command, exc, debug, 2, _one_line(exc))
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on demand
        return _report_error(args.command, exc, debug, 1,
                             f"{type(exc).__name__}: {_one_line(exc)} (unexpected; run again "
                             f"with --debug for the traceback, and please report it)")


def _report_error(command: str, exc: Exception, debug: bool, code: int, message: str) -> int:
    """One line on stderr (the traceback with ``debug``); under mpiexec one report, and every
    rank ends."""
    if debug:
        raise exc
    from .distributed import world  # noqa: PLC0415

    if world.report_error(exc):
        print(f"minivit {command}: error: {world.rank_prefix()}{message}", file=sys.stderr)
    world.abort_after_error(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
