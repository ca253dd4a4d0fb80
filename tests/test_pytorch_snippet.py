"""A PyTorch + timm user's snippet runs unchanged apart from its import lines: create a model,
size(), max(dim), softmax(dim=), a scheduler, a hooks-free training loop, save/load
safetensors. The snippet below is valid PyTorch/timm code; only IMPORTS are swapped."""
import textwrap

import pytest

pytest.importorskip("safetensors.numpy", reason="the safetensors extra is not installed")

TORCH_SNIPPET = textwrap.dedent('''
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                         embed_dim=48, depth=2, num_heads=3)
    x = torch.randn(16, 3, 32, 32)
    y = torch.tensor([i % 10 for i in range(16)])
    assert x.size() == (16, 3, 32, 32) and x.size(1) == 3 and x.dim() == 4
    assert x.numel() == 16 * 3 * 32 * 32 and y.size(0) == 16

    model.eval()
    with torch.no_grad():
        logits = model(x)
    values, indices = logits.max(dim=1)
    probs = torch.softmax(logits, dim=1)
    assert (probs.argmax(dim=1) == indices).all()
    assert float((torch.sum(probs, dim=1) - 1).abs().max()) < 1e-5
    top2 = logits.masked_fill(logits >= values.unsqueeze(1), float("-inf")).max(dim=1).indices
    assert not (top2 == indices).any()
    w = model.get_classifier().weight
    assert w.t().shape == (48, 10) and w.norm(dim=1).shape == (10,)
    assert y.repeat(2).size(0) == 32 and x.clone().size() == x.size()

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[2])
    criterion = nn.CrossEntropyLoss()
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert sched.get_last_lr()[0] < 3e-3

    save_file(model.state_dict(), "model.safetensors")
    fresh = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                         embed_dim=48, depth=2, num_heads=3)
    fresh.load_state_dict(load_file("model.safetensors"))
    fresh.eval()
    model.eval()
    with torch.set_grad_enabled(False):
        assert float((fresh(x) - model(x)).abs().max()) == 0.0
    with torch.inference_mode():
        assert not model(x).requires_grad
''')

TORCH_IMPORTS = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from timm import create_model
    from safetensors.torch import save_file, load_file
''')

MINIVIT_IMPORTS = textwrap.dedent('''
    import minivit as torch
    import minivit.nn as nn
    import minivit.nn.functional as F
    from minivit.models import create_model
    from safetensors.numpy import save_file, load_file
''')


def test_pytorch_snippet_runs_with_only_the_imports_changed(tmp_path, monkeypatch):
    assert TORCH_IMPORTS.count("\n") == MINIVIT_IMPORTS.count("\n")   # line for line
    monkeypatch.chdir(tmp_path)
    exec(compile(MINIVIT_IMPORTS + TORCH_SNIPPET, "pytorch_snippet.py", "exec"), {})
    assert (tmp_path / "model.safetensors").is_file()
