"""Seeing inside (issue 25): DOT export, model summary, steps.jsonl, plots, eval's top-5 and
per-class accuracy, the graph/summary commands, and the docstring examples."""
from __future__ import annotations

import doctest
import importlib
import json
import re

import numpy as np
import pytest

import minivit
from minivit import cli, nn
from minivit.autograd.flops import count_flops
from minivit.models import create_model
from minivit.train import TrainConfig, fit
from minivit.utils import summary, to_dot
from minivit.utils.diagnostics import parameter_blocks
from minivit.utils.graph import graph_nodes

CIFAR_MODELS = ["vit_cifar", "mlp_mixer_cifar", "maxvit_cifar", "botnet_cifar", "ceit_cifar"]
TINY_ARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2}

DOCTEST_MODULES = ["minivit.nn.module", "minivit.autograd.tensor", "minivit.utils.graph",
                   "minivit.utils.summary", "minivit.utils.diagnostics", "minivit.plot",
                   "minivit.utils.attention"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
    if name == "minivit.plot":
        pytest.importorskip("matplotlib")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def run_cli(capsys, *argv):
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- to_dot ----------------------------------------------------------------------------------

def _parse_dot(text):
    pydot = pytest.importorskip("pydot")
    graphs = pydot.graph_from_dot_data(text)
    assert graphs and len(graphs) == 1
    g = graphs[0]
    nodes = [n for n in g.get_nodes() if n.get_name() not in ("node", "edge", "graph")]
    return g, nodes, g.get_edges()


def test_dot_of_a_small_graph_parses_with_one_node_per_op_and_leaf():
    lin = nn.Linear(3, 2)
    x = minivit.ones(4, 3, requires_grad=True)
    h = nn.functional.gelu(lin(x))
    loss = (h * h).sum()            # h used twice: two edges into one Mul node
    text = to_dot(loss, params=dict(lin.named_parameters()))
    g, nodes, edges = _parse_dot(text)
    ops, leaves, graph_edges = graph_nodes(loss)
    assert len(ops) == 4 and len(leaves) == 3       # linear, gelu, mul, sum; x, weight, bias
    assert len(nodes) == len(ops) + len(leaves)
    assert len(edges) == len(graph_edges) == 7     # linear 3, gelu 1, mul 2, sum 1
    labels = [n.get_label().strip('"') for n in nodes]
    assert "weight\\n(2, 3) float32" in labels and "leaf\\n(4, 3) float32" in labels
    assert any(lab.startswith("MulBackward\\n(4, 2) float32") for lab in labels)


@pytest.mark.parametrize("name", ["vit_cifar"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in CIFAR_MODELS[1:]])   # pydot parses slowly:
# the default run checks a 2-block vit_cifar
def test_dot_of_a_training_step_counts_every_op_and_names_every_parameter(name):
    minivit.manual_seed(0)
    depth = {"depth": 2} if name == "vit_cifar" else {}
    model = create_model(name, num_classes=10, **depth)
    x = minivit.randn(2, 3, 32, 32)
    loss = nn.functional.cross_entropy(model(x), minivit.tensor([1, 2]))
    params = dict(model.named_parameters())
    text = to_dot(loss, params=params)
    _, nodes, edges = _parse_dot(text)
    ops, leaves, graph_edges = graph_nodes(loss)
    assert len(nodes) == len(ops) + len(leaves) and len(edges) == len(graph_edges)
    assert {id(t) for t in leaves} == {id(p) for p in params.values()}   # all, and only, params
    for pname in params:
        assert f'"{pname}\\n' in text


def test_dot_stops_at_inputs_and_after_backward_it_is_empty():
    x = minivit.ones(2, requires_grad=True)
    mid = x * 2
    out = (mid.exp() + 1).sum()
    text = to_dot(out, inputs={"mid": mid})
    assert '"mid\\n(2,) float32"' in text and "MulBackward" not in text
    out.backward()
    assert to_dot(out).count("shape=box") == 1   # the freed graph has no links left
    with pytest.raises(TypeError, match="expected a minivit Tensor"):
        to_dot(np.ones(2))


def test_graph_command_writes_dot_and_refuses_unknown_formats(tmp_path, capsys, monkeypatch):
    out = tmp_path / "step.dot"
    rc, text, err = run_cli(capsys, "graph", "vit_cifar", "--block", "blocks.0", "--out", out)
    assert rc == 0, err
    assert out.read_text().startswith("digraph") and "blocks.0.attn" in out.read_text()
    rc, _, err = run_cli(capsys, "graph", "vit_cifar", "--out", tmp_path / "g.txt")
    assert rc == 2 and "unknown graph format '.txt'" in err and len(err.splitlines()) == 1
    rc, _, err = run_cli(capsys, "graph", "vit_cifar", "--block", "nope", "--out", out)
    assert rc == 2 and "'nope' is not a sub-module" in err
    monkeypatch.setattr("shutil.which", lambda name: None)
    rc, _, err = run_cli(capsys, "graph", "vit_cifar", "--out", tmp_path / "g.svg")
    assert rc == 2 and "needs Graphviz's `dot` program" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "g.svg").exists()


def test_graph_command_renders_svg_with_graphviz(tmp_path, capsys):
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    out = tmp_path / "step.svg"
    rc, _, err = run_cli(capsys, "graph", "vit_cifar", "--block", "blocks.0", "--out", out)
    assert rc == 0, err
    assert "<svg" in out.read_text()
    png = tmp_path / "step.png"
    rc, _, err = run_cli(capsys, "graph", "vit_cifar", "--block", "blocks.0", "--dpi", "40",
                         "--out", png)
    assert rc == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"


# --- summary ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_summary_totals_equal_num_parameters_and_the_bench_flop_count(name):
    minivit.manual_seed(0)
    model = create_model(name, num_classes=10)
    s = summary(model, input_size=(3, 32, 32), batch_size=2)
    assert s.total_params == model.num_parameters() == s.rows[0].params
    # the bench's count: eval mode, no grad, a forward of the same batch size
    model.eval()
    with count_flops() as c, minivit.no_grad():
        model(minivit.randn(2, 3, 32, 32))
    assert s.total_flops == c.total and s.flops_per_image == c.total / 2
    assert model.training is False
    assert [r.name for r in s.rows] == [n for n, _ in model.named_modules()]
    # a row's parameters are its own plus its children's
    by_name = {r.name: r for r in s.rows}
    for mname, m in model.named_modules():
        assert by_name[mname].params == sum(p.numel() for p in m.parameters())
    assert "total params: " + f"{model.num_parameters():,}" in str(s)


def test_summary_rows_show_output_shapes_and_restore_training_mode():
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 2))
    s = summary(net, input_size=(8,), batch_size=3)
    assert [r.output_shape for r in s.rows] == [[(3, 2)], [(3, 16)], [(3, 16)], [(3, 2)]]
    assert net.training and all(m._forward_hooks == {} for m in net.modules())
    with pytest.raises(ValueError, match="input_size must be positive"):
        summary(net, input_size=(0,))


def test_summary_command(capsys):
    rc, out, err = run_cli(capsys, "summary", "vit_cifar", "--depth", "1")
    assert rc == 0, err
    assert "1,806,538" in out and re.search(r"forward FLOPs per image: [\d.]+ GFLOP", out)
    assert "blocks" in out and "qkv" not in out      # depth 1 hides the blocks' insides
    rc, _, err = run_cli(capsys, "summary", "no_such_model")
    assert rc == 2 and "unknown model 'no_such_model'" in err


# --- steps.jsonl, plots, eval ------------------------------------------------------------------

@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("inside") / "run"
    fit(TrainConfig(model="vit_cifar", model_args=dict(TINY_ARGS), epochs=2, batch_size=16,
                    train_limit=64, test_limit=64, out=str(run), progress=False,
                    log_interval=3), log=lambda *a: None)
    return run


def test_steps_jsonl_has_one_line_every_n_steps(logged_run):
    rows = [json.loads(ln) for ln in (logged_run / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]          # 4 steps per epoch, 8 in all
    assert [r["epoch"] for r in rows] == [0.75, 1.5]
    model = create_model("vit_cifar", num_classes=10, **TINY_ARGS)
    blocks = list(parameter_blocks(model))
    assert blocks == ["cls_token", "pos_embed", "patch_embed", "blocks.0", "norm", "head"]
    for r in rows:
        assert set(r) == {"step", "epoch", "loss", "lr", "grad_norm", "grad_norm_blocks",
                          "update_ratio_blocks", "imgs_per_s"}
        assert list(r["grad_norm_blocks"]) == blocks == list(r["update_ratio_blocks"])
        total = np.sqrt(sum(g * g for g in r["grad_norm_blocks"].values()))
        assert r["grad_norm"] == pytest.approx(total) and r["grad_norm"] > 0
        # (cls_token starts at std 1e-6: its first updates are larger than itself)
        assert all(0 < u < np.inf for u in r["update_ratio_blocks"].values())
        assert 1e-4 < r["update_ratio_blocks"]["blocks.0"] < 0.1
        assert r["loss"] > 0 and r["lr"] > 0 and r["imgs_per_s"] > 0


def test_step_log_values_match_a_hand_computed_step(tmp_path):
    from minivit import optim
    from minivit.utils.diagnostics import StepLog

    minivit.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
    opt = optim.SGD(model.parameters(), lr=0.1)
    log = StepLog(model, tmp_path / "steps.jsonl", 1, steps_per_epoch=10)
    loss = model(minivit.randn(5, 4)).sum()
    loss.backward()
    before = [p.numpy().copy() for p in model.parameters()]
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    log.after_backward(0, float(loss.item()), 0.1)
    opt.step()
    log.after_step(1, 5)
    row = json.loads((tmp_path / "steps.jsonl").read_text())
    assert list(row["grad_norm_blocks"]) == ["0", "2"]
    assert row["grad_norm_blocks"]["0"] == pytest.approx(np.sqrt(
        (grads[0].astype(float) ** 2).sum() + (grads[1].astype(float) ** 2).sum()), rel=1e-6)
    ratio0 = 0.1 * np.sqrt(sum((g.astype(float) ** 2).sum() for g in grads[:2])) / np.sqrt(
        sum((w.astype(float) ** 2).sum() for w in before[:2]))
    assert row["update_ratio_blocks"]["0"] == pytest.approx(ratio0, rel=1e-4)
    assert row["epoch"] == 0.1 and row["step"] == 1
    with pytest.raises(ValueError, match="log_interval must be an integer >= 1, got 0"):
        StepLog(model, tmp_path / "x.jsonl", 0, 10)


def test_resumed_run_keeps_the_step_lines_up_to_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = dict(model="vit_cifar", model_args=dict(TINY_ARGS), epochs=2, batch_size=16,
               train_limit=32, test_limit=16, out=str(run), progress=False, log_interval=1)
    fit(TrainConfig(**cfg), log=lambda *a: None, stop_after_epochs=1)
    with open(run / "steps.jsonl", "a") as f:       # a line written after the checkpoint
        f.write(json.dumps({"step": 5}) + "\n")
    fit(TrainConfig(**cfg), resume=str(run), log=lambda *a: None)
    steps = [json.loads(ln)["step"] for ln in (run / "steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_log_interval_is_checked():
    with pytest.raises(Exception, match=r"log_interval .*must be an integer >= 1.*got 0"):
        TrainConfig(log_interval=0).validate()


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"),
                                        ("pdf", b"%PDF")])
def test_plot_writes_the_format_its_extension_names_and_keeps_the_backend(
        logged_run, tmp_path, capsys, fmt, magic):
    matplotlib = pytest.importorskip("matplotlib")
    backend = matplotlib.get_backend()
    out = tmp_path / f"curves.{fmt}"
    rc, text, err = run_cli(capsys, "plot", logged_run, logged_run, "--output", out, "--steps",
                            "--lr", "--grad-norms")
    assert rc == 0, err
    assert out.read_bytes().startswith(magic)
    assert matplotlib.get_backend() == backend


def test_plot_overlays_runs_with_whole_number_epoch_ticks(logged_run):
    pytest.importorskip("matplotlib")
    from minivit.plot import make_figure

    fig = make_figure([logged_run, logged_run], steps=True, lr=True, grad_norms=True,
                      labels=["a", "b"])
    loss, acc, lr, grad = fig.axes
    assert len(acc.get_lines()) == 4                  # train and test of each run
    assert len(lr.get_lines()) == 2 and len(grad.get_lines()) == 12   # 6 blocks x 2 runs
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert np.all(ticks == np.round(ticks)), ticks


def test_plot_refuses_unknown_formats(logged_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc, _, err = run_cli(capsys, "plot", logged_run, "--output", tmp_path / "c.jpg")
    assert rc == 2 and "unknown image format '.jpg'" in err
    rc, _, err = run_cli(capsys, "plot", tmp_path / "none", "--steps")
    assert rc == 2 and "no metrics log" in err


def test_eval_reports_top5_and_per_class_accuracy(logged_run, capsys):
    rc, out, err = run_cli(capsys, "eval", logged_run, "--limit", "64")
    assert rc == 0, err
    top1 = float(re.search(r"accuracy ([\d.]+)%, loss", out).group(1))
    top5 = float(re.search(r"top-5 accuracy ([\d.]+)%", out).group(1))
    assert top1 <= top5 <= 100
    per_class = re.findall(r"^\s+(\w+)\s+([\d.]+)%  \((\d+)/(\d+)\)$", out, re.M)
    assert len(per_class) == 10 and sum(int(n) for *_, n in per_class) == 64
    assert sum(int(h) for _, _, h, _ in per_class) == round(top1 * 64 / 100)
    last = json.loads((logged_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_top5"] == pytest.approx(top5 / 100, abs=1e-4)
