"""examples/finetune.py on a locally made small "timm" weights file (the real one, timm's
ViT-Ti/16 model.safetensors, is the user's to download)."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minivit.models import create_model
from minivit.weights import load_state_dict_file, save_state_dict_file

pytest.importorskip("safetensors.numpy", reason="the safetensors extra is not installed")
ROOT = Path(__file__).resolve().parents[1]
SMALL = {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}


def test_finetune_example_runs_on_a_small_weights_file(tmp_path):
    pretrained = create_model("vit_tiny_patch16_224", **SMALL)       # 1000 ImageNet classes
    weights = save_state_dict_file(tmp_path / "model.safetensors", pretrained.state_dict())
    out = tmp_path / "finetuned.safetensors"
    cmd = [sys.executable, str(ROOT / "examples" / "finetune.py"), "--weights", str(weights),
           "--train-limit", "32", "--test-limit", "16", "--batch-size", "8", "--steps", "3",
           "--warmup-steps", "1", "--out", str(out)]
    cmd += [a for k, v in SMALL.items() for a in ("--model-arg", f"{k}={v}")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"3 steps in \d+s; test accuracy [\d.]+% on 16 images", done.stdout)
    tuned = load_state_dict_file(out)
    assert tuned["head.weight"].shape == (10, 32)                     # the new CIFAR head
    before = pretrained.state_dict()
    assert not np.array_equal(tuned["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    # the fine-tuned file loads as a 10-class model (its metadata names model and arguments)
    create_model("vit_tiny_patch16_224", num_classes=10, checkpoint_path=out, **SMALL)
