"""``minivit train``'s options, generated from TrainConfig's fields (minivit.config_cli):
defaults written once and shown in --help, timm's spellings, -c JSON/TOML, the default run
folder, --resume refusing a changed recipe, --opt/--sched, --version, --pretrained."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass

import pytest

import minivit
from minivit import cli, optim
from minivit.config_cli import (add_config_arguments, format_value, given_config_values,
                                option_name, setting)
from minivit.train import TrainConfig, TrainingError, build_optimizer, build_schedule, fit

from test_cli import TINY, TINY_ARGS, assert_user_error, quiet, run_cli


def train_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)) \
        .choices["train"]


def config_of(*argv) -> TrainConfig:
    argv = ["train", *map(str, argv)]
    return cli.train_config_from_args(cli.build_parser().parse_args(argv))


# --- one place for each default ---------------------------------------------------------------

def test_no_options_give_the_dataclass_defaults():
    assert config_of() == TrainConfig()


def test_every_field_is_an_option_and_help_shows_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())   # undo argparse's line wrapping
    for f in dataclasses.fields(TrainConfig):
        assert option_name(f) in text, f.name
        shown = f.metadata.get("default_help") or format_value(getattr(TrainConfig(), f.name))
        assert f"(default: {' '.join(shown.split())})" in text, f.name
    assert "(default: 0.001)" in text and "(default: runs/MODEL-YYYYmmdd-HHMMSS" in text


def test_a_new_field_gets_an_option_without_touching_the_cli():
    @dataclass
    class Cfg:
        log_interval: int = setting(50, "print every N steps", recipe=False)
        tf32: bool = False
        ratio: float | None = None
        sizes: tuple[int, int] = (1, 2)
        extra: dict = dataclasses.field(default_factory=dict)
        name: str = setting("a", "a name", aliases=("-n",), choices=("a", "b"))

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Cfg)
    args = parser.parse_args(["--log-interval", "7", "--tf32", "--ratio", "0.5", "--sizes", "3",
                              "4", "--extra", "k=1", "j=x", "-n", "b"])
    assert given_config_values(args, Cfg) == {"log_interval": 7, "tf32": True, "ratio": 0.5,
                                              "sizes": (3, 4), "extra": {"k": 1, "j": "x"},
                                              "name": "b"}
    assert given_config_values(parser.parse_args([]), Cfg) == {}
    assert "print every N steps (default: 50)" in parser.format_help()


def test_timm_spellings_are_aliases():
    cfg = config_of("-b", "64", "--smoothing", "0.2", "--output", "o", "--opt", "sgd",
                    "--sched", "linear", "--model-kwargs", "depth=1", "embed_dim=32",
                    "--initial-checkpoint", "w.npz", "--opt-betas", "0.8", "0.9",
                    "--drop-path", "0.1", "--momentum", "0.8")
    assert (cfg.batch_size, cfg.label_smoothing, cfg.out, cfg.opt, cfg.sched) == \
        (64, 0.2, "o", "sgd", "linear")
    assert cfg.model_args == {"depth": 1, "embed_dim": 32} and cfg.init_weights == "w.npz"
    assert cfg.betas == (0.8, 0.9) and cfg.drop_path == 0.1 and cfg.momentum == 0.8
    # --model-arg (repeatable) and --model-kwargs (several at once) merge
    assert config_of("--model-arg", "depth=2", "--model-kwargs", "num_heads=2").model_args == \
        {"depth": 2, "num_heads": 2}
    assert config_of("--no-progress").progress is False


def test_pretrained_says_what_to_do_instead(capsys):
    rc, _, err = run_cli(capsys, "train", "--pretrained")
    assert_user_error(rc, err, r"--pretrained: minivit downloads no weights.*--initial-checkpoint")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"minivit {minivit.__version__}"


def test_a_wrong_choice_is_one_line_naming_the_choices(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "train", *TINY, "--opt", "lamb", "--out", tmp_path / "r")
    assert_user_error(rc, err, r"opt \(--opt\) must be one of 'adamw', 'sgd', got 'lamb'")
    assert not (tmp_path / "r").exists()


# --- -c FILE ------------------------------------------------------------------------------------

def test_config_file_json_and_toml_typed_options_win(tmp_path):
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"lr": 0.002, "batch-size": 64, "betas": [0.8, 0.99],
                              "model_args": {"depth": 1, "embed_dim": 32}}))
    cfg = config_of("-c", js, "--batch-size", "32", "--model-arg", "depth=2")
    assert (cfg.lr, cfg.batch_size, cfg.betas) == (0.002, 32, (0.8, 0.99))
    assert cfg.model_args == {"depth": 2, "embed_dim": 32}
    toml = tmp_path / "c.toml"
    toml.write_text('model = "mlp_mixer_cifar"\nlr = 3e-4\nsched = "constant"\n\n'
                    '[model_args]\ndepth = 2\n')
    cfg = config_of("--config", toml)
    assert (cfg.model, cfg.lr, cfg.sched, cfg.model_args) == \
        ("mlp_mixer_cifar", 3e-4, "constant", {"depth": 2})


def test_a_runs_config_json_reproduces_the_run(tmp_path):
    cfg = TrainConfig(lr=0.003, model_args=dict(TINY_ARGS), betas=(0.85, 0.95), out="x")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_json()))
    assert config_of("-c", tmp_path / "config.json") == cfg


def test_bad_config_files_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": 0.1, "learning_rate": 2}')
    rc, _, err = run_cli(capsys, "train", "-c", bad)
    assert_user_error(rc, err, r"-c .*bad.json: unknown setting 'learning_rate'; known settings: "
                               r"model, dataset")
    broken = tmp_path / "broken.toml"
    broken.write_text("lr = = 1")
    rc, _, err = run_cli(capsys, "train", "-c", broken)
    assert_user_error(rc, err, r"broken.toml: not valid TOML")
    rc, _, err = run_cli(capsys, "train", "-c", tmp_path / "none.toml")
    assert_user_error(rc, err, r"-c .*none.toml: no such file")


# --- --out default, --resume -------------------------------------------------------------------

def test_out_defaults_to_a_timestamped_run_folder_and_is_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--train-limit", "32",
                           "--test-limit", "32")
    assert rc == 0, err
    m = re.search(r"run folder: (runs/vit_cifar-\d{8}-\d{6})\b", out)
    assert m, out
    assert (tmp_path / m.group(1) / "config.json").is_file()
    assert (tmp_path / m.group(1) / "last.npz").is_file()


def test_default_run_folder_never_reuses_one(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    first = cli.default_run_folder("vit_cifar", tmp_path)
    assert first.endswith("vit_cifar-20260101-000000")
    (tmp_path / "vit_cifar-20260101-000000").mkdir()
    assert cli.default_run_folder("vit_cifar", tmp_path).endswith("vit_cifar-20260101-000000-2")


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("half") / "run"
    fit(TrainConfig(model_args=dict(TINY_ARGS), epochs=2, batch_size=32, train_limit=32,
                    test_limit=32, out=str(run), progress=False), log=quiet,
        stop_after_epochs=1)
    return run


def test_resume_with_a_changed_recipe_names_every_changed_option(half_run, capsys):
    before = {p.name: p.read_bytes() for p in half_run.iterdir()}
    rc, _, err = run_cli(capsys, "train", "--resume", half_run, "--lr", "5", "--smoothing", "0.1",
                         "-b", "16", "--no-progress")
    assert_user_error(rc, err, r"--resume .*run: a resumed run keeps its recipe, but "
                               r"--batch-size 16 \(the run's: 32\); --lr 5.0 \(the run's: 0.001\); "
                               r"omit these options, or start a new run")
    assert "smoothing" not in err   # 0.1 is what the run has
    rc, _, err = run_cli(capsys, "train", "--resume", half_run, "--out", half_run.parent / "b")
    assert_user_error(rc, err, r"--resume .* continues in .*; --out .*b cannot be used")
    assert {p.name: p.read_bytes() for p in half_run.iterdir()} == before


def test_resume_may_change_what_is_not_recipe(half_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(half_run, run)
    # the same recipe restated, plus settings of this process only
    rc, out, err = run_cli(capsys, "train", "--resume", run, "--lr", "0.001", "--device", "cpu",
                           "--no-progress", "--eval-batch-size", "16", "--test-limit", "16")
    assert rc == 0, err
    assert "resumed" in out and "16 test images" in out and "epoch   2/2" in out
    assert json.loads((run / "config.json").read_text())["test_limit"] == 32  # saved recipe kept


# --- --opt and --sched ---------------------------------------------------------------------------

def test_opt_sgd_and_the_schedules():
    model = minivit.nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, TrainConfig(opt="sgd", momentum=0.8)), optim.SGD)
    assert type(build_optimizer(model, TrainConfig())) is optim.AdamW

    def lrs(sched):
        cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=1.0, min_lr=0.2, sched=sched)
        s = build_schedule(build_optimizer(model, cfg), cfg, steps_per_epoch=10)
        out = [s.get_last_lr()[0]]
        for _ in range(40):
            s.step()
            out.append(s.get_last_lr()[0])
        return out

    for sched in ("cosine", "linear", "constant"):
        v = lrs(sched)
        assert v[0] == 0 and v[5] == pytest.approx(0.5) and v[10] == pytest.approx(1.0), sched
    assert lrs("linear")[25] == pytest.approx(0.6) and lrs("linear")[40] == pytest.approx(0.2)
    assert lrs("cosine")[40] == pytest.approx(0.2) and lrs("constant")[40] == 1.0


# --- progress bars: tqdm on a terminal, the epoch line always ----------------------------------

class FakeTTY:
    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def isatty(self):
        return True

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass


def test_progress_bars_are_tqdm_on_a_terminal_and_absent_from_logs(monkeypatch):
    import sys

    def run(progress):
        tty, lines = FakeTTY(), []
        monkeypatch.setattr(sys, "stderr", tty)
        fit(TrainConfig(model_args=dict(TINY_ARGS), epochs=1, batch_size=32, train_limit=64,
                        test_limit=32, progress=progress), log=lines.append)
        monkeypatch.undo()
        return tty.buffer.getvalue(), lines

    bars, lines = run(True)
    assert re.search(r"epoch 1/1: +\d+%\|.*\| \d+/64 \[.*img/s", bars)
    assert re.match(r"epoch +1/1 +train loss", lines[-1])          # the summary line stays
    bars, lines = run(False)
    assert bars == "" and re.match(r"epoch +1/1 +train loss", lines[-1])
