"""The ``minivit`` command (also ``python -m minivit``): train, eval, plot, bench, gradcheck.

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

DEFAULTS_NOTE = ("defaults: AdamW lr 1e-3, weight decay 0.05 (none on norms, biases, tokens), "
                 "1 warmup epoch then cosine, label smoothing 0.1, crop+flip, batch 128")


def _add_train(sub):
    p = sub.add_parser("train", help="train a model on CIFAR", description=DEFAULTS_NOTE)
    p.add_argument("--model", default="vit_cifar", help="registry name (see `minivit models`)")
    p.add_argument("--dataset", default="cifar10-subset",
                   help="cifar10-subset (bundled, offline), cifar10 or cifar100")
    p.add_argument("--data", default=None, help="a CIFAR folder or .tar.gz (else the cache)")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (resume: as saved)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--augment", default="standard", choices=["none", "standard", "randaugment"])
    p.add_argument("--mixup", type=float, default=0.0, help="Beta alpha; 0 = off")
    p.add_argument("--cutmix", type=float, default=0.0, help="Beta alpha; 0 = off")
    p.add_argument("--clip-grad", type=float, default=None)
    p.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an entry of the model's configuration, e.g. --model-arg "
                        "depth=2 (repeatable; values are Python literals, else strings)")
    p.add_argument("--init-weights", default=None, metavar="FILE",
                   help="start from these weights instead of the seed's initialisation: a "
                        ".npz of a state dict (timm's names), a checkpoint or a run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="run folder (config, metrics, checkpoints)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue a run folder with its saved config (other options are ignored)")
    p.add_argument("--stop-after-epochs", type=int, default=None, metavar="N",
                   help="stop once N epochs are done (the schedule still spans --epochs); "
                        "continue later with --resume")
    p.add_argument("--train-limit", type=int, default=None, help="use the first N train images")
    p.add_argument("--test-limit", type=int, default=None, help="use the first N test images")
    p.add_argument("--no-progress", action="store_true")


def _train(args) -> int:
    from .train import TrainConfig, fit

    model_args = dict(_parse_model_arg(a) for a in args.model_arg)
    if args.drop_path is not None:
        model_args["drop_path_rate"] = args.drop_path
    cfg = TrainConfig(
        model=args.model, dataset=args.dataset, data=args.data,
        epochs=args.epochs if args.epochs is not None else 10, batch_size=args.batch_size,
        lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        augment=args.augment, mixup=args.mixup, cutmix=args.cutmix, clip_grad=args.clip_grad,
        model_args=model_args, init_weights=args.init_weights, seed=args.seed,
        device=args.device, out=args.out,
        train_limit=args.train_limit, test_limit=args.test_limit,
        progress=not args.no_progress)
    if args.resume is not None and args.epochs is None:
        cfg.epochs = 0  # keep the saved number of epochs
    m = fit(cfg, resume=args.resume, stop_after_epochs=args.stop_after_epochs)
    if "test_acc" in m:
        print(f"final test accuracy {100 * m['test_acc']:.2f}%")
    return 0


def _parse_model_arg(text: str) -> tuple[str, object]:
    """``"depth=2"`` -> ``("depth", 2)``; a value that is no Python literal stays a string."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--model-arg {text!r}: expected KEY=VALUE, e.g. --model-arg depth=2")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return key.strip(), parsed


def _eval(args) -> int:
    from .data import NUM_CLASSES, CIFARLoader, DatasetError, load_dataset
    from .models import create_model
    from .train import TrainConfig, evaluate, load_run_checkpoint

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be an integer >= 1 (or omitted: all images), got "
                         f"{args.limit}")
    path = Path(args.run)
    file = path / ("best.npz" if args.best else "last.npz") if path.is_dir() else path
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
    model.to(args.device)
    x, y = (ds.x_test, ds.y_test) if not args.train else (ds.x_train, ds.y_train)
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    loader = CIFARLoader(x, y, batch_size=256, shuffle=False, num_classes=ds.num_classes)
    ev = evaluate(model, loader, args.device, ds.num_classes, progress=True)
    print(f"{cfg.model} from {show(file)} (epoch {ckpt['epoch']}) on {args.dataset or cfg.dataset} "
          f"{'train' if args.train else 'test'} ({len(x)} images): accuracy "
          f"{100 * ev['acc']:.2f}%, loss {ev['loss']:.4f}")
    print(format_confusion(ev["confusion"], ds.class_names))
    return 0


def format_confusion(cm, names) -> str:
    """The confusion matrix as text: rows are true classes, columns predictions."""
    short = [str(n)[:5] for n in names]
    width = max(5, len(str(int(cm.max()))) + 1)
    head = "true\\pred " + " ".join(f"{s:>{width}}" for s in short)
    rows = [f"{short[i]:>9} " + " ".join(f"{int(v):>{width}}" for v in row)
            for i, row in enumerate(cm)]
    return "\n".join([head] + rows)


def _plot(args) -> int:
    from .plot import plot_run

    out = plot_run(args.run, args.output)
    print(f"wrote {show(out)}")
    return 0


def _models(args) -> int:
    from .models import create_model, list_models

    for name in list_models():
        if args.count:
            n = sum(p.size for p in create_model(name, num_classes=10 if "cifar" in name else 1000).parameters())
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
    parser = argparse.ArgumentParser(prog="minivit", description="a from-scratch ViT engine")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also MINIVIT_DEBUG=1; "
                             "accepted anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("eval", help="accuracy and confusion matrix of a run or checkpoint")
    p.add_argument("run", help="a run folder (uses last.npz) or a .npz checkpoint")
    p.add_argument("--best", action="store_true", help="use best.npz of the run folder")
    p.add_argument("--dataset", default=None, help="default: the run's dataset")
    p.add_argument("--data", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", action="store_true", help="evaluate on the training split")
    p.add_argument("--limit", type=int, default=None)
    p = sub.add_parser("plot", help="draw a run's curves to a PNG (needs matplotlib)")
    p.add_argument("run")
    p.add_argument("--output", default=None, help="default RUN/curves.png")
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--count", action="store_true", help="with parameter counts")
    p = sub.add_parser("bench", help="throughput, memory and utilisation of the CIFAR models")
    p.add_argument("--model", nargs="*", default=None, metavar="NAME",
                   help="CIFAR models to measure, each in its own process (default: all five)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    p.add_argument("--steps", type=int, default=10,
                   help="timed steps after warm-up; the figures are their median (default 10)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the rows to OUT as JSON")
    p = sub.add_parser("gradcheck", help="check a layer's or model's gradients numerically")
    p.add_argument("target", nargs="?", default="layers", help="'layers' or a model name")
    return parser


COMMANDS = {"train": _train, "eval": _eval, "plot": _plot, "models": _models, "bench": _bench,
            "gradcheck": _gradcheck}


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
    from . import _sigint_default

    _sigint_default()  # loaded: from here Ctrl-C is a KeyboardInterrupt, handled below
    _printable_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MINIVIT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .train import TrainingError

    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        detail = _one_line(exc) if str(exc) else ""
        print(f"minivit {args.command}: interrupted" + (f"; {detail}" if detail else ""),
              file=sys.stderr)
        return 130
    except (TrainingError, DatasetError, CheckpointError, OSError, RuntimeError,
            ValueError) as exc:
        if debug:
            raise
        print(f"minivit {args.command}: error: {_one_line(exc)}", file=sys.stderr)  # one line
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on demand
        if debug:
            raise
        print(f"minivit {args.command}: error: {type(exc).__name__}: {_one_line(exc)} "
              f"(unexpected; run again with --debug for the traceback, and please report it)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
