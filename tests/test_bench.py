"""`minivit bench`: the JSON rows it writes and what they mean."""
import json

import pytest

from minivit.bench import bench_model
from minivit.cli import main

KEYS = {"model", "batch", "device", "img_size", "fwd_imgs_per_s", "train_imgs_per_s", "peak_mem_mb",
        "gflops_per_img", "matmul_gflops", "utilisation"}


def test_bench_json_has_the_documented_keys_and_sane_values(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "vit_cifar", "mlp_mixer_cifar", "--batch", "4",
                 "--steps", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["vit_cifar", "mlp_mixer_cifar"]
    for r in rows:
        assert set(r) == KEYS
        assert r["batch"] == 4 and r["device"] == "cpu" and r["img_size"] == [32, 32]
        assert r["fwd_imgs_per_s"] > 0 and r["train_imgs_per_s"] > 0 and r["peak_mem_mb"] > 0
        expected = 3 * r["gflops_per_img"] * r["train_imgs_per_s"] / r["matmul_gflops"]
        assert r["utilisation"] == pytest.approx(expected)
    # the engine's own FLOP count of the forward pass, as docs/recipe.md gives it
    assert rows[0]["gflops_per_img"] == pytest.approx(0.251, abs=0.002)
    assert rows[1]["gflops_per_img"] == pytest.approx(0.190, abs=0.002)
    assert "util" in capsys.readouterr().out


def test_bench_feeds_a_paper_scale_model_its_own_input_size():
    # ViT-Ti/16 at 224x224 (196 patches + the class token): 1.26 G multiply-adds (the
    # "1.3 GFLOPs" of timm's tables), counted by the engine as 2 FLOPs each
    row = bench_model("vit_tiny_patch16_224", batch=1, steps=1, matmul=100.0)
    assert row["img_size"] == [224, 224]
    assert row["gflops_per_img"] == pytest.approx(2.51, abs=0.05)


def test_bench_counts_conv_flops_for_conv_models():
    row = bench_model("botnet_cifar", batch=2, steps=1, matmul=100.0)
    assert row["gflops_per_img"] == pytest.approx(0.114, abs=0.005)


def test_bench_unknown_model_is_a_one_line_error(capsys):
    assert main(["bench", "--model", "resnet9000"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "vit_cifar" in err and len(err.strip().splitlines()) == 1


def test_bench_refuses_a_batch_or_step_count_below_one():
    import argparse

    from minivit import bench
    with pytest.raises(ValueError, match="--batch and --steps must be >= 1, got --batch 0"):
        bench.main(argparse.Namespace(batch=0, steps=10, device="cpu", model=["vit_cifar"],
                                      json=None))


@pytest.mark.parametrize("rates, warned", [((100.0, 50.0), True), ((100.0, 95.0), False)])
def test_bench_names_a_model_whose_matmul_probes_disagree(monkeypatch, capsys, rates, warned):
    from minivit import bench
    probes = iter(rates)
    monkeypatch.setattr(bench, "matmul_gflops", lambda device="cpu": next(probes))
    assert main(["bench", "--model", "botnet_cifar", "--batch", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("botnet_cifar")][0]
    assert row.split()[-1] == f"{rates[1]:.1f}"     # the "after" column
    assert ("note: the matmul rate moved by more than 20%" in out and "(botnet_cifar)" in out) \
        is warned
